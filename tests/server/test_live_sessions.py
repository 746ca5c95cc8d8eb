"""The sessions API on the real server: create, list, fork, export/import, delete, limits, restarts."""

import httpx
import openai
import pytest

from qla_agent.server.settings import ServerSettings
from tests.server.live import APPEND_ONLY, MODEL_ID, digit_bias, live_server, make_engine, no_stop

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}}}


def api(server, method, path, **kwargs):
    response = httpx.request(method, server.v1 + path, timeout=60, **kwargs)
    assert response.status_code == 200, response.text
    return response


def turn(server, tiny, session_id, text, *, max_tokens=3):
    """One greedy turn on a session (digits only, so histories re-render to the tokens consumed)."""
    client = openai.OpenAI(base_url=server.v1, api_key="unused", max_retries=0)
    out = client.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": text}],
                                         max_tokens=max_tokens, temperature=0, logit_bias=digit_bias(tiny),
                                         extra_body={"session_id": session_id})
    assert out.model_extra["session_id"] == session_id
    return out


def test_create_continue_list_fork_delete(server, tiny):
    created = api(server, "POST", "/sessions", json={
        "messages": [{"role": "system", "content": "You count."}], "tools": [WEATHER],
        "chat_template_kwargs": APPEND_ONLY["chat_template_kwargs"]}).json()
    sid = created["id"]
    assert created["object"] == "session" and created["n_messages"] == 1 and created["model"] == MODEL_ID
    first = turn(server, tiny, sid, "one")
    shown = api(server, "GET", f"/sessions/{sid}").json()
    assert [m["role"] for m in shown["messages"]] == ["system", "user", "assistant"]
    assert shown["tools"] == [WEATHER] and shown["n_tokens"] > 0 and shown["state_bytes"] > 0
    assert shown["messages"][2]["content"] == first.choices[0].message.content
    assert sid in [s["id"] for s in api(server, "GET", "/sessions").json()["data"]]

    fork = api(server, "POST", f"/sessions/{sid}/fork", json={"id": "my-fork"}).json()
    assert fork["id"] == "my-fork" and fork["n_messages"] == 3
    in_fork = turn(server, tiny, "my-fork", "two")
    in_parent = turn(server, tiny, sid, "two")
    assert in_fork.choices[0].message.content == in_parent.choices[0].message.content
    assert in_fork.usage.prompt_tokens_details.cached_tokens == in_parent.usage.prompt_tokens_details.cached_tokens
    early = api(server, "POST", f"/sessions/{sid}/fork", json={"at_message": 1}).json()
    assert early["n_messages"] == 1

    assert api(server, "DELETE", "/sessions/my-fork").json() == {"id": "my-fork", "object": "session.deleted",
                                                                 "deleted": True}
    assert httpx.get(server.v1 + "/sessions/my-fork", timeout=10).status_code == 404
    assert api(server, "GET", f"/sessions/{sid}").json()["n_messages"] == 5


def test_export_import_gives_the_same_continuation(server, tiny):
    sid = api(server, "POST", "/sessions", json=APPEND_ONLY).json()["id"]
    turn(server, tiny, sid, "seven")
    exported = api(server, "GET", f"/sessions/{sid}/export")
    assert exported.headers["content-type"] == "application/octet-stream"
    assert f'filename="{sid}.safetensors"' in exported.headers["content-disposition"]
    copy = api(server, "POST", "/sessions/import", params={"session_id": "imported-1"}, content=exported.content,
               headers={"content-type": "application/octet-stream"}).json()
    assert copy["id"] == "imported-1" and copy["n_tokens"] == api(server, "GET", f"/sessions/{sid}").json()["n_tokens"]
    ref = turn(server, tiny, sid, "eight")
    out = turn(server, tiny, "imported-1", "eight")
    assert out.choices[0].message.content == ref.choices[0].message.content
    assert out.usage.prompt_tokens_details.cached_tokens == ref.usage.prompt_tokens_details.cached_tokens > 0
    bad = httpx.post(server.v1 + "/sessions/import", content=b"not a session file", timeout=10)
    assert bad.status_code in (400, 409) and "error" in bad.json()


def test_session_survives_a_restart(tiny, tmp_path):
    settings = ServerSettings(sessions_dir=tmp_path, max_tokens=8)
    with live_server(settings, make_engine(tiny, tmp_path)) as first:
        sid = api(first, "POST", "/sessions", json=APPEND_ONLY).json()["id"]
        before = turn(first, tiny, sid, "hello")
        api(first, "POST", f"/sessions/{sid}/fork", json={"id": "twin"})
        ref = turn(first, tiny, "twin", "again")
    with live_server(settings, make_engine(tiny, tmp_path)) as second:
        shown = api(second, "GET", f"/sessions/{sid}").json()
        assert shown["messages"][-1]["content"] == before.choices[0].message.content
        out = turn(second, tiny, sid, "again")
    assert out.choices[0].message.content == ref.choices[0].message.content
    # Resumed from the saved state: the old turn is not prefilled again.
    assert out.usage.prompt_tokens_details.cached_tokens == ref.usage.prompt_tokens_details.cached_tokens
    assert out.usage.prompt_tokens_details.cached_tokens >= before.usage.prompt_tokens


@pytest.fixture(scope="module")
def tight_server(tiny, tmp_path_factory):
    sessions = tmp_path_factory.mktemp("tight-sessions")
    settings = ServerSettings(sessions_dir=sessions, max_sessions=2, max_concurrent_requests=1, max_tokens=1000)
    with live_server(settings, make_engine(tiny, sessions)) as live:
        yield live


def test_limits_answer_429(tight_server, tiny):
    server = tight_server
    api(server, "POST", "/sessions", json={})
    api(server, "POST", "/sessions", json={})
    full = httpx.post(server.v1 + "/sessions", json={}, timeout=10)
    assert full.status_code == 429 and full.json()["error"]["code"] == "too_many_sessions"
    body = {"messages": [{"role": "user", "content": "go"}], "max_tokens": 1000, "stream": True,
            "logit_bias": no_stop(tiny)}
    with httpx.stream("POST", server.v1 + "/chat/completions", json=body, timeout=60) as running:
        assert running.status_code == 200
        busy = httpx.post(server.v1 + "/chat/completions", json={**body, "stream": False}, timeout=10)
        assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
        assert busy.json()["error"]["type"] == "rate_limit_error"


def test_a_second_request_on_a_busy_session_is_409_and_the_session_stays_whole(server, tiny):
    sid = api(server, "POST", "/sessions", json=APPEND_ONLY).json()["id"]
    body = {"messages": [{"role": "user", "content": "long"}], "max_tokens": 1000, "stream": True,
            "session_id": sid, "logit_bias": no_stop(tiny)}
    with httpx.stream("POST", server.v1 + "/chat/completions", json=body, timeout=60) as running:
        assert running.status_code == 200
        # Keep the line iterator referenced: dropping it closes the response (a disconnect).
        lines = running.iter_lines()
        next(lines)
        clash = httpx.post(server.v1 + "/chat/completions", json={**body, "stream": False}, timeout=30)
        assert clash.status_code == 409 and clash.json()["error"]["code"] == "session_busy", clash.text[:500]
        assert "busy" in clash.json()["error"]["message"] and clash.headers["retry-after"] == "1"
        for method, path in (("DELETE", f"/sessions/{sid}"), ("POST", f"/sessions/{sid}/fork")):
            refused = httpx.request(method, server.v1 + path, timeout=30)
            assert refused.status_code == 409 and refused.json()["error"]["code"] == "session_busy", path
        taken = httpx.post(server.v1 + "/sessions", json={"id": sid}, timeout=30)
        assert taken.status_code == 409 and taken.json()["error"]["code"] == "session_conflict"
    # The cancelled turn left no trace; the session takes the next turn normally.
    out = turn(server, tiny, sid, "after")
    assert out.choices[0].finish_reason in ("stop", "length")
    roles = [m["role"] for m in api(server, "GET", f"/sessions/{sid}").json()["messages"]]
    assert roles == ["user", "assistant"]
