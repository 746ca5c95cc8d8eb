"""Disconnects cancel generation; /metrics reports requests, tokens, latency and the engine's state."""

import json
import re
import time

import httpx
import openai

from tests.server.live import MODEL_ID, no_stop


def metric(server, name, labels=""):
    text = httpx.get(server.url + "/metrics", timeout=10).text
    match = re.search(rf"^{re.escape(name + labels)} ([0-9.e+-]+)$", text, re.MULTILINE)
    assert match, f"{name}{labels} not in /metrics"
    return float(match.group(1))


def wait_for(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def test_disconnect_mid_stream_cancels_generation(server, tiny):
    cancelled = server.engine.stats().requests_cancelled
    body = {"messages": [{"role": "user", "content": "Tell a long story"}], "max_tokens": 1000, "stream": True,
            "temperature": 0, "enable_thinking": False, "logit_bias": no_stop(tiny)}
    with httpx.stream("POST", server.v1 + "/chat/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        first = next(line for line in lines if line.startswith("data:"))
        assert '"role":"assistant"' in first
    wait_for(lambda: server.engine.stats().requests_cancelled > cancelled)
    wait_for(lambda: metric(server, "qla_requests_in_flight") == 0)


def test_a_stream_that_starts_a_session_names_it_before_any_text(server, tiny):
    """Header and every chunk carry the new session's id; the session is busy with this very request."""
    body = {"messages": [{"role": "user", "content": "New conversation"}], "max_tokens": 1000, "stream": True,
            "temperature": 0, "enable_thinking": False, "logit_bias": no_stop(tiny)}
    with httpx.stream("POST", server.v1 + "/chat/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        sid = response.headers["x-session-id"]
        info = httpx.get(f"{server.v1}/sessions/{sid}", timeout=10).json()
        assert info["busy"] and info["n_messages"] == 0
        lines = response.iter_lines()
        chunks = [json.loads(line[5:]) for line, _ in zip((x for x in lines if x.startswith("data:")), range(5))]
    assert [c["session_id"] for c in chunks] == [sid] * 5
    assert any(c["choices"][0]["delta"].get("content") for c in chunks[1:])


def test_disconnect_while_waiting_for_a_plain_answer_cancels_it(server, tiny):
    cancelled = server.engine.stats().requests_cancelled
    body = {"messages": [{"role": "user", "content": "Another long story"}], "max_tokens": 1000, "temperature": 0,
            "enable_thinking": False, "logit_bias": no_stop(tiny)}
    try:
        httpx.post(server.v1 + "/chat/completions", json=body, timeout=httpx.Timeout(60, read=0.5))
        raise AssertionError("1000 tokens in 0.5 s: make the request longer to test a disconnect")
    except httpx.ReadTimeout:
        pass
    wait_for(lambda: server.engine.stats().requests_cancelled > cancelled)
    wait_for(lambda: metric(server, "qla_requests_in_flight") == 0)
    assert metric(server, "qla_requests_total", '{route="/v1/chat/completions",status="499"}') == 1
    out = openai.OpenAI(base_url=server.v1, api_key="x", max_retries=0).chat.completions.create(
        model=MODEL_ID, messages=[{"role": "user", "content": "still there?"}], max_tokens=2)
    assert out.choices[0].message.role == "assistant"


def test_metrics_count_requests_tokens_and_state(server):
    client = openai.OpenAI(base_url=server.v1, api_key="x", max_retries=0)
    before = metric(server, "qla_completion_tokens_total")
    ok_before = metric(server, "qla_requests_total", '{route="/v1/chat/completions",status="200"}')
    out = client.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": "metrics"}],
                                         max_tokens=5, temperature=0, extra_body={"enable_thinking": False})
    assert metric(server, "qla_completion_tokens_total") == before + out.usage.completion_tokens
    assert metric(server, "qla_requests_total", '{route="/v1/chat/completions",status="200"}') == ok_before + 1
    httpx.get(server.v1 + "/sessions/nope-1", timeout=10)
    assert metric(server, "qla_requests_total", '{route="/v1/sessions/{session_id}",status="404"}') >= 1
    assert metric(server, "qla_prompt_tokens_total") > 0
    assert metric(server, "qla_time_to_first_token_seconds_count") >= 1
    assert metric(server, "qla_decode_tokens_per_second_count") >= 1
    assert metric(server, "qla_live_sessions") >= 1
    assert metric(server, "qla_state_bytes") > 0
    assert metric(server, "qla_engine_decode_tokens_total") > 0
    assert metric(server, "qla_prefill_tokens_reused_total") >= 0
