"""The real server driven by the official `openai` client: completions, streaming, reasoning, tools, sessions.

The tiny model is random, so it never emits a tool call by itself: these tests check that whatever it
generated (read back raw from the session) is exactly what the real parser makes of it, and that a
tool call plus its result sent by the client goes into the session.
"""

import httpx
import openai
import pytest

from qla_agent.tools.parsers import parser_for
from tests.server.live import APPEND_ONLY, MODEL_ID, digit_bias

NO_THINK = {"enable_thinking": False}
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather of a city", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TIME = {"type": "function", "function": {"name": "get_time", "description": "Time in a city", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}}}}


@pytest.fixture(scope="module")
def client(server):
    with openai.OpenAI(base_url=server.v1, api_key="unused", max_retries=0, timeout=120) as c:
        yield c


def session(server, session_id):
    response = httpx.get(f"{server.v1}/sessions/{session_id}", timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def raw_answer(server, session_id):
    """The raw completion text the engine stored as the session's last (assistant) message."""
    last = session(server, session_id)["messages"][-1]
    assert last["role"] == "assistant"
    return last["content"]


def streamed(client, **kwargs):
    """Run a streamed request; return the reassembled message parts, finish reason, usage, session id."""
    parts = {"content": "", "reasoning_content": "", "tool_calls": {}}
    finish, usage, session_id, roles = None, None, None, []
    for chunk in client.chat.completions.create(stream=True, **kwargs):
        session_id = chunk.model_extra.get("session_id", session_id)
        usage = chunk.usage or usage
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            roles += [choice.delta.role] if choice.delta.role else []
            parts["content"] += choice.delta.content or ""
            parts["reasoning_content"] += (choice.delta.model_extra or {}).get("reasoning_content") or ""
            for call in choice.delta.tool_calls or []:
                slot = parts["tool_calls"].setdefault(call.index, {"name": "", "arguments": ""})
                slot["name"] += call.function.name or ""
                slot["arguments"] += call.function.arguments or ""
    assert roles == ["assistant"]
    return parts, finish, usage, session_id


def test_plain_completion(server, client):
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL_ID, messages=[{"role": "user", "content": "Hello there"}], max_tokens=6, temperature=0,
        extra_body=NO_THINK)
    out = raw.parse()
    session_id = out.model_extra["session_id"]
    assert raw.headers["x-session-id"] == session_id
    assert out.id.startswith("chatcmpl-") and out.object == "chat.completion" and out.model == MODEL_ID
    choice = out.choices[0]
    assert choice.finish_reason in ("stop", "length")
    assert 1 <= out.usage.completion_tokens <= 6
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens
    ref = parser_for(None, None, starts_in_reasoning=False).parse(raw_answer(server, session_id))
    assert choice.message.content == ref.content
    assert choice.message.tool_calls is None
    assert "reasoning_content" not in choice.message.model_extra


def test_stream_equals_plain_and_reuses_the_prompt(client):
    kwargs = dict(model=MODEL_ID, messages=[{"role": "system", "content": "Be short."},
                                            {"role": "user", "content": "Count to three"}],
                  max_tokens=6, temperature=0, extra_body=NO_THINK)
    ref = client.chat.completions.create(**kwargs)
    out, finish, usage, session_id = streamed(client, stream_options={"include_usage": True}, **kwargs)
    assert out["content"] == ref.choices[0].message.content
    assert finish == ref.choices[0].finish_reason
    assert usage.completion_tokens == ref.usage.completion_tokens
    assert usage.prompt_tokens == ref.usage.prompt_tokens
    # The same prompt again resumes from the first request's checkpoint.
    assert usage.prompt_tokens_details.cached_tokens > 0
    assert session_id is not None


def test_thinking_on_returns_reasoning_content(server, client):
    out = client.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": "Think about it"}],
                                         max_tokens=6, temperature=0, extra_body={"enable_thinking": True})
    raw = raw_answer(server, out.model_extra["session_id"])
    ref = parser_for(None, None, starts_in_reasoning=True).parse(raw)
    assert ref.reasoning_content, "a random model writes text inside the open <think>"
    assert out.choices[0].message.model_extra["reasoning_content"] == ref.reasoning_content
    assert (out.choices[0].message.content or "") == ref.content


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_tools_answer_is_the_parsers_reading_of_the_output(server, client, stream):
    kwargs = dict(model=MODEL_ID, messages=[{"role": "user", "content": "Weather in Paris?"}], tools=[WEATHER],
                  max_tokens=8, temperature=0, extra_body=NO_THINK)
    if stream:
        parts, finish, _, session_id = streamed(client, **kwargs)
        content = parts["content"]
        calls = [(c["name"], c["arguments"]) for _, c in sorted(parts["tool_calls"].items())]
    else:
        out = client.chat.completions.create(**kwargs)
        session_id, finish = out.model_extra["session_id"], out.choices[0].finish_reason
        content = out.choices[0].message.content or ""
        calls = [(c.function.name, c.function.arguments) for c in out.choices[0].message.tool_calls or []]
    ref = parser_for("qwen_xml", [WEATHER], starts_in_reasoning=False).parse(raw_answer(server, session_id))
    assert content == ref.content
    assert calls == [(c.name, c.arguments) for c in ref.tool_calls]
    assert finish == ("tool_calls" if ref.tool_calls else finish)


def _answer(client, stream, **kwargs):
    """(content, [(name, arguments)], reasoning, finish reason, session id) of a plain or streamed request."""
    if stream:
        parts, finish, _, session_id = streamed(client, **kwargs)
        calls = [(c["name"], c["arguments"]) for _, c in sorted(parts["tool_calls"].items())]
        return parts["content"], calls, parts["reasoning_content"], finish, session_id
    out = client.chat.completions.create(**kwargs)
    message = out.choices[0].message
    calls = [(c.function.name, c.function.arguments) for c in message.tool_calls or []]
    reasoning = (message.model_extra or {}).get("reasoning_content") or ""
    return message.content or "", calls, reasoning, out.choices[0].finish_reason, out.model_extra["session_id"]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("choice, thinking, start", [
    ({"type": "function", "function": {"name": "get_weather"}}, False, "<tool_call>\n<function=get_weather>\n"),
    ({"type": "function", "function": {"name": "get_weather"}}, True,
     "\n</think>\n\n<tool_call>\n<function=get_weather>\n"),
    ("required", False, "<tool_call>\n"),
], ids=["named", "named-thinking", "required"])
def test_forced_tool_choice_starts_the_answer_with_the_call(server, client, stream, choice, thinking, start):
    """The stored answer starts with the forced call (closing an open <think> first); the reply is the
    parser's reading of it; a named choice always yields that function's call."""
    kwargs = dict(model=MODEL_ID, messages=[{"role": "user", "content": "Weather in Paris?"}],
                  tools=[WEATHER, TIME], tool_choice=choice, max_tokens=6, temperature=0,
                  extra_body={"enable_thinking": thinking})
    content, calls, reasoning, finish, session_id = _answer(client, stream, **kwargs)
    raw = raw_answer(server, session_id)
    assert raw.startswith(start) and len(raw) > len(start)
    ref = parser_for("qwen_xml", [WEATHER, TIME], starts_in_reasoning=thinking).parse(raw)
    assert (content, reasoning) == (ref.content, ref.reasoning_content or "")
    assert calls == [(c.name, c.arguments) for c in ref.tool_calls]
    if choice != "required":
        # A random model rarely closes the call within 6 tokens: "length" then, as OpenAI says.
        assert [name for name, _ in calls] == ["get_weather"] and finish in ("tool_calls", "length")
        assert not reasoning


def test_one_call_answers_stop_after_the_first_call_so_the_session_holds_what_the_client_got(server, client, tiny):
    """A bias makes the model write `</tool_call>` at every step: with parallel calls it runs to
    max_tokens; with parallel_tool_calls false or a named function it stops after the first one, and
    the session stores exactly the text the client's answer was parsed from."""
    close = tiny.tokenizer.token_id("</tool_call>")
    base = dict(model=MODEL_ID, messages=[{"role": "user", "content": "Weather in Paris?"}], tools=[WEATHER, TIME],
                max_tokens=6, temperature=0, logit_bias={str(close): 100.0}, extra_body=APPEND_ONLY)
    many = client.chat.completions.create(**base)
    assert (many.usage.completion_tokens, many.choices[0].finish_reason) == (6, "length")
    one = client.chat.completions.create(**base, parallel_tool_calls=False)
    assert (one.usage.completion_tokens, one.choices[0].finish_reason) == (1, "stop")
    assert raw_answer(server, one.model_extra["session_id"]) == "</tool_call>"
    named = client.chat.completions.create(**base, tool_choice={"type": "function", "function": {"name": "get_time"}})
    sid = named.model_extra["session_id"]
    raw = raw_answer(server, sid)
    assert raw == "<tool_call>\n<function=get_time>\n</tool_call>" and named.usage.completion_tokens == 1
    ref = parser_for("qwen_xml", [WEATHER, TIME]).parse(raw)
    calls = named.choices[0].message.tool_calls
    assert [(c.function.name, c.function.arguments) for c in calls] == [(c.name, c.arguments) for c in ref.tool_calls]
    assert [c.function.name for c in calls] == ["get_time"] and named.choices[0].finish_reason == "tool_calls"
    # The client answers the one call it got; the session goes on from the history it stored.
    result = {"role": "tool", "tool_call_id": calls[0].id, "content": "12:00"}
    after = client.chat.completions.create(model=MODEL_ID, messages=[result], max_tokens=2, temperature=0,
                                          extra_body={"session_id": sid})
    assert after.usage.prompt_tokens_details.cached_tokens >= named.usage.prompt_tokens + 1
    assert [m["role"] for m in session(server, sid)["messages"]] == ["user", "assistant", "tool", "assistant"]


def test_tool_call_and_result_go_into_the_session(server, client):
    history = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
    ]
    out = client.chat.completions.create(model=MODEL_ID, messages=history, tools=[WEATHER], max_tokens=4,
                                         temperature=0, extra_body=NO_THINK)
    stored = session(server, out.model_extra["session_id"])
    assert stored["messages"][1]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": {"city": "Paris"}}
    assert stored["messages"][2] == {"role": "tool", "content": "sunny, 21 C", "tool_call_id": "call_1"}
    assert stored["tools"][0]["function"]["name"] == "get_weather"
    assert stored["n_messages"] == 4


def test_session_continues_with_only_new_messages(server, client, tiny):
    first = client.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": "My name is Ada"}],
                                           max_tokens=4, temperature=0, logit_bias=digit_bias(tiny),
                                           extra_body=APPEND_ONLY)
    session_id = first.model_extra["session_id"]
    second = client.chat.completions.create(
        model=MODEL_ID, messages=[{"role": "user", "content": "What is my name?"}], max_tokens=4, temperature=0,
        extra_body={"session_id": session_id})
    assert second.model_extra["session_id"] == session_id
    assert first.choices[0].message.content.isdigit()
    assert second.usage.prompt_tokens_details.cached_tokens >= first.usage.prompt_tokens
    third = client.chat.completions.with_raw_response.create(
        model=MODEL_ID, messages=[{"role": "user", "content": "Bye"}], max_tokens=4, temperature=0,
        extra_headers={"X-Session-Id": session_id})
    assert third.headers["x-session-id"] == session_id
    stored = session(server, session_id)
    assert [m["role"] for m in stored["messages"]] == ["user", "assistant"] * 3
    assert [m["content"] for m in stored["messages"][::2]] == ["My name is Ada", "What is my name?", "Bye"]


def test_models_and_health(server, client):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL_ID]
    assert client.models.retrieve(MODEL_ID).id == MODEL_ID
    health = httpx.get(server.url + "/health", timeout=10)
    assert health.json()["status"] == "ok"
    document = httpx.get(server.url + "/openapi.json", timeout=10).json()
    chat = document["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]["application/json"]
    schemas = document["components"]["schemas"]
    assert schemas[chat["schema"]["$ref"].rsplit("/", 1)[1]]["properties"]["session_id"]
    assert "Message" in schemas and "ForkSession" in schemas
