"""Bad requests against the real server: right status, OpenAI's error body, and the server keeps serving."""

import asyncio
import random

import httpx
import openai
import pytest

from qla_agent.server.settings import ServerSettings
from tests.server.live import MODEL_ID, live_server, make_engine

OK_BODY = {"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "temperature": 0}


def check_error(response, status, *, param=None, code=None, fragment=None):
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert error["type"] == {401: "authentication_error", 429: "rate_limit_error",
                             503: "service_unavailable_error"}.get(status, "invalid_request_error")
    if param is not None:
        assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    if fragment is not None:
        assert fragment in error["message"]
    return error


def post(server, body=None, *, content=None, headers=None, path="/v1/chat/completions"):
    return httpx.post(server.url + path, json=body, content=content, headers=headers, timeout=60)


def still_serving(server):
    response = post(server, OK_BODY)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["role"] == "assistant"


@pytest.mark.parametrize("content, fragment", [
    (b'{"messages": [', "could not parse the JSON body"),
    (b"[1, 2]", "must be an object"),
    (b"", "body is empty"),
    (b"\xff\xfe{}", "not UTF-8"),
    (b"[" * 50_000, "nests too deeply"),
], ids=["truncated", "array", "empty", "latin1", "deep"])
def test_malformed_json_is_400(server, content, fragment):
    check_error(post(server, content=content, headers={"content-type": "application/json"}), 400,
                code="invalid_json", fragment=fragment)


@pytest.mark.parametrize("body, param", [
    ({"messages": "hi"}, "messages"),
    ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": "x"}], "temperature": "warm"}, "temperature"),
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": -5}, "max_tokens"),
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "max_tokens"),
    ({"messages": [{"role": "user", "content": "x"}], "frobnicate": True}, "frobnicate"),
    ({"messages": [{"role": "user", "content": "x", "mood": "happy"}]}, "messages[0].mood"),
    ({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}, "tools[0].function"),
], ids=["messages-str", "content-int", "temperature-str", "max-tokens-neg", "max-tokens-0", "unknown-field",
        "unknown-message-field", "tool-no-function"])
def test_schema_errors_are_422(server, body, param):
    check_error(post(server, body), 422, param=param, code="invalid_schema")


def test_openai_client_sees_typed_errors(server):
    client = openai.OpenAI(base_url=server.v1, api_key="unused", max_retries=0)
    messages = [{"role": "user", "content": "x"}]
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL_ID, messages=messages, max_tokens=10**9)
    assert info.value.body["param"] == "max_tokens" and "limit of 1000" in info.value.body["message"]
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-9", messages=messages)
    assert info.value.body["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model=MODEL_ID, messages=messages, extra_body={"session_id": "sess_nope"})
    assert info.value.body["code"] == "session_not_found" and "sess_nope" in info.value.body["message"]
    with pytest.raises(openai.UnprocessableEntityError):
        client.chat.completions.create(model=MODEL_ID, messages=messages, extra_body={"top_k": "many"})
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL_ID, messages=messages, n=3)
    assert info.value.body["param"] == "n"
    still_serving(server)


def test_context_overflow_says_by_how_much(server):
    body = {**OK_BODY, "messages": [{"role": "user", "content": "z " * 3000}]}
    error = check_error(post(server, body), 400, code="context_length_exceeded")
    assert "too many" in error["message"]
    still_serving(server)


def test_huge_bodies_are_413(server):
    limit = server.settings.max_body_bytes
    big = {**OK_BODY, "messages": [{"role": "user", "content": "a" * (limit + 10)}]}
    check_error(post(server, big), 413, code="body_too_large")

    def chunks():
        yield b'{"messages": [{"role": "user", "content": "'
        for _ in range(limit // 1024 + 2):
            yield b"b" * 1024
        yield b'"}]}'

    # Chunked transfer: no Content-Length to check up front; the streamed size is capped.
    check_error(post(server, content=chunks(), headers={"content-type": "application/json"}), 413,
                code="body_too_large")
    still_serving(server)


def test_unknown_sessions_and_routes(server):
    check_error(httpx.get(server.v1 + "/sessions/sess_missing", timeout=10), 404, code="session_not_found")
    check_error(httpx.delete(server.v1 + "/sessions/sess_missing", timeout=10), 404, code="session_not_found")
    check_error(httpx.post(server.v1 + "/sessions/sess_missing/fork", timeout=10), 404, code="session_not_found")
    check_error(httpx.get(server.v1 + "/sessions/sess_missing/export", timeout=10), 404, code="session_not_found")
    check_error(httpx.get(server.v1 + "/sessions/a..b", timeout=10), 400, code="invalid_session_id")
    check_error(httpx.get(server.v1 + "/sessions/-x", timeout=10), 400, code="invalid_session_id")
    check_error(post(server, OK_BODY, headers={"X-Session-Id": "../../x"}), 400, param="session_id")
    check_error(httpx.get(server.url + "/v2/nothing", timeout=10), 404, fragment="GET /v2/nothing")
    check_error(httpx.get(server.url + "/v1/chat/completions", timeout=10), 405, code="method_not_allowed")
    check_error(httpx.get(server.v1 + "/models/gpt-9", timeout=10), 404, code="model_not_found")
    still_serving(server)


def test_a_stopped_engine_is_503_for_chat_and_sessions_still_answer(tiny, tmp_path):
    settings = ServerSettings(sessions_dir=tmp_path, max_tokens=8)
    with live_server(settings, make_engine(tiny, tmp_path)) as live:
        asyncio.run(live.engine.stop())
        for stream in (False, True):
            check_error(post(live, {**OK_BODY, "stream": stream}), 503, code="engine_not_running",
                        fragment="not running")
        # The session API runs inline while the scheduler is down.
        assert httpx.get(live.v1 + "/sessions", timeout=10).status_code == 200


@pytest.fixture(scope="module")
def keyed_server(tiny, tmp_path_factory):
    sessions = tmp_path_factory.mktemp("keyed-sessions")
    settings = ServerSettings(sessions_dir=sessions, api_key="s3cret", max_tokens=8, cors_origins=("http://app.example",))
    with live_server(settings, make_engine(tiny, sessions)) as live:
        yield live


def test_api_key_guards_every_route_but_health(keyed_server):
    server = keyed_server
    for path in ("/v1/models", "/v1/sessions", "/metrics", "/v2/unknown"):
        check_error(httpx.get(server.url + path, timeout=10), 401, code="invalid_api_key", fragment="no API key")
        wrong = httpx.get(server.url + path, headers={"Authorization": "Bearer nope"}, timeout=10)
        check_error(wrong, 401, code="invalid_api_key", fragment="wrong")
        assert wrong.headers["www-authenticate"] == "Bearer"
    assert httpx.get(server.url + "/health", timeout=10).status_code == 200
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.v1, api_key="nope", max_retries=0).models.list()
    client = openai.OpenAI(base_url=server.v1, api_key="s3cret", max_retries=0)
    assert client.models.list().data[0].id == MODEL_ID
    out = client.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert out.usage.completion_tokens <= 2



def preflight(server, origin):
    return httpx.options(server.v1 + "/models", headers={
        "Origin": origin, "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization"}, timeout=10)


def test_cors_only_for_listed_origins(server, keyed_server):
    assert "access-control-allow-origin" not in preflight(server, "http://app.example").headers
    assert preflight(keyed_server, "http://app.example").headers["access-control-allow-origin"] == "http://app.example"
    assert "access-control-allow-origin" not in preflight(keyed_server, "http://evil.example").headers
    refused = httpx.get(keyed_server.v1 + "/models", headers={"Origin": "http://app.example"}, timeout=10)
    assert refused.status_code == 401
    assert refused.headers["access-control-allow-origin"] == "http://app.example"


def test_stream_request_errors_are_http_errors_not_events(server):
    body = {**OK_BODY, "stream": True, "messages": [{"role": "user", "content": "z " * 3000}]}
    check_error(post(server, body), 400, code="context_length_exceeded")
    check_error(post(server, {**OK_BODY, "stream": True, "session_id": "sess_gone"}), 404, code="session_not_found")


def _mutations(rng):
    """Bodies near a valid request: a field dropped, retyped or replaced by junk."""
    junk = [None, -1, 0, 1e308, "", "x" * 300, [], {}, [None], {"a": [1, {"b": None}]}, True, "\u0000\ud7ff"]
    fields = ["model", "messages", "max_tokens", "temperature", "top_p", "stop", "tools", "tool_choice",
              "stream", "stream_options", "seed", "logit_bias", "session_id", "chat_template_kwargs", "n"]
    for _ in range(40):
        body = {**OK_BODY, "max_tokens": 1}
        for _ in range(rng.randint(1, 3)):
            field = rng.choice(fields)
            if rng.random() < 0.2:
                body.pop(field, None)
            else:
                body[field] = rng.choice(junk)
        body["max_tokens"] = body.get("max_tokens") if body.get("max_tokens") in (None, -1, 0) else 1
        yield body


def test_junk_near_a_valid_body_never_crashes_the_server(server):
    for body in _mutations(random.Random(1234)):
        response = post(server, body)
        assert response.status_code in (200, 400, 404, 409, 422), (body, response.text)
        if response.status_code != 200:
            check_error(response, response.status_code)
    still_serving(server)
