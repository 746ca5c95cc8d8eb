"""Completion text → OpenAI objects, through the real tools parsers (no engine, fixed text).

Both answers are validated with the official `openai` types; the streamed chunks, reassembled the
way a client does, must equal the non-streamed message for any chunking of the text.
"""

import asyncio
import json

import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from qla_agent.runtime.requests import Finished, TextDelta, Usage
from qla_agent.server.chat import completion_body, stream_chunks
from qla_agent.server.convert import plan_chat
from qla_agent.server.output import RequestParser
from qla_agent.server.schemas import ChatCompletionRequest
from qla_agent.server.settings import ServerSettings

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
XML_TEXT = (
    "Let me check.\n</think>\n\nI'll look it up.\n<tool_call>\n<function=get_weather>\n"
    "<parameter=city>\nParis\n</parameter>\n<parameter=days>\n2\n</parameter>\n</function>\n</tool_call>\n"
    "<tool_call>\n<function=get_time>\n</function>\n</tool_call>"
)
HERMES_TEXT = (
    'Sure.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}\n</tool_call>\n'
    '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>'
)
USAGE = Usage(prompt_tokens=11, completion_tokens=7, cached_tokens=3)


def make_plan(**body):
    body.setdefault("messages", [{"role": "user", "content": "weather?"}])
    body.setdefault("tools", [WEATHER, TIME])
    request = ChatCompletionRequest.model_validate(body)
    return plan_chat(request, settings=ServerSettings(), model_id="tiny", served_names=())


def parser(plan, tool_format, starts_in_reasoning):
    fmt = tool_format if plan.policy.parse else None
    return RequestParser(fmt, plan.tools, starts_in_reasoning=starts_in_reasoning)


def stream(plan, fmt, text, *, step, reason="stop", reasoning=True):
    events = [TextDelta(text[i:i + step]) for i in range(0, len(text), step)]
    events.append(Finished(reason, USAGE, "sess-1", text))

    async def gen():
        for event in events:
            yield event

    async def collect():
        return [chunk async for chunk in stream_chunks(gen(), plan, parser(plan, fmt, reasoning))]

    return asyncio.run(collect())


def reassemble(raw_chunks):
    """What a client rebuilds from the SSE lines; each chunk validated as a ChatCompletionChunk."""
    assert raw_chunks[-1] == b"data: [DONE]\n\n"
    msg = {"content": "", "reasoning_content": "", "tool_calls": {}}
    finish, usage, session = None, None, None
    for raw in raw_chunks[:-1]:
        assert raw.startswith(b"data: ") and raw.endswith(b"\n\n")
        chunk = ChatCompletionChunk.model_validate(json.loads(raw[6:]))
        session = chunk.model_extra.get("session_id", session)
        usage = chunk.usage or usage
        for choice in chunk.choices:
            delta = choice.delta
            finish = choice.finish_reason or finish
            msg["content"] += delta.content or ""
            msg["reasoning_content"] += (delta.model_extra or {}).get("reasoning_content") or ""
            for call in delta.tool_calls or []:
                slot = msg["tool_calls"].setdefault(call.index, {"id": None, "name": "", "arguments": ""})
                if call.id:
                    assert slot["id"] is None, "a call's id is sent once"
                    slot["id"] = call.id
                slot["name"] += call.function.name or ""
                slot["arguments"] += call.function.arguments or ""
    return msg, finish, usage, session


def full(plan, fmt, text, *, reason="stop", reasoning=True):
    body = completion_body(Finished(reason, USAGE, "sess-1", text), plan, parser(plan, fmt, reasoning))
    return ChatCompletion.model_validate(body)


@pytest.mark.parametrize("step", [1, 3, 17, 10_000])
@pytest.mark.parametrize("fmt, text, reasoning", [("qwen_xml", XML_TEXT, True), ("hermes", HERMES_TEXT, False)],
                         ids=["xml", "hermes"])
def test_streamed_tool_calls_equal_the_full_answer(fmt, text, reasoning, step):
    plan = make_plan(stream=True, stream_options={"include_usage": True})
    out_msg, out_finish, out_usage, session = reassemble(stream(plan, fmt, text, step=step, reasoning=reasoning))
    ref = full(plan, fmt, text, reasoning=reasoning)
    ref_msg = ref.choices[0].message
    assert out_finish == ref.choices[0].finish_reason == "tool_calls"
    assert out_msg["content"] == ref_msg.content
    assert out_msg["reasoning_content"] == (ref_msg.model_extra.get("reasoning_content") or "")
    out_calls = [(c["name"], json.loads(c["arguments"])) for _, c in sorted(out_msg["tool_calls"].items())]
    ref_calls = [(c.function.name, json.loads(c.function.arguments)) for c in ref_msg.tool_calls]
    assert out_calls == ref_calls == [("get_weather", {"city": "Paris", "days": 2}), ("get_time", {})]
    assert all(c["id"].startswith("call_") for c in out_msg["tool_calls"].values())
    assert out_usage.prompt_tokens_details.cached_tokens == ref.usage.prompt_tokens_details.cached_tokens == 3
    assert session == ref.model_extra["session_id"] == "sess-1"


def test_reasoning_and_content_are_split():
    ref = full(make_plan(), "qwen_xml", XML_TEXT)
    msg = ref.choices[0].message
    assert msg.model_extra["reasoning_content"] == "Let me check."
    assert msg.content == "I'll look it up."


@pytest.mark.parametrize("stream_it", [False, True])
def test_parallel_false_keeps_only_the_first_call(stream_it):
    plan = make_plan(parallel_tool_calls=False)
    if stream_it:
        msg, finish, _, _ = reassemble(stream(plan, "qwen_xml", XML_TEXT, step=5))
        names = [c["name"] for _, c in sorted(msg["tool_calls"].items())]
        indices = sorted(msg["tool_calls"])
    else:
        choice = full(plan, "qwen_xml", XML_TEXT).choices[0]
        names = [c.function.name for c in choice.message.tool_calls]
        indices, finish = [0], choice.finish_reason
    assert (names, indices, finish) == (["get_weather"], [0], "tool_calls")


@pytest.mark.parametrize("stream_it", [False, True])
def test_named_choice_keeps_that_function_renumbered(stream_it):
    plan = make_plan(tool_choice={"type": "function", "function": {"name": "get_time"}})
    if stream_it:
        msg, finish, _, _ = reassemble(stream(plan, "qwen_xml", XML_TEXT, step=4))
        calls = {i: c["name"] for i, c in msg["tool_calls"].items()}
    else:
        choice = full(plan, "qwen_xml", XML_TEXT).choices[0]
        calls, finish = {i: c.function.name for i, c in enumerate(choice.message.tool_calls)}, choice.finish_reason
    assert (calls, finish) == ({0: "get_time"}, "tool_calls")


def test_tool_choice_none_returns_text_and_stop():
    plan = make_plan(tool_choice="none")
    choice = full(plan, "qwen_xml", "Plain answer.", reasoning=False).choices[0]
    assert (choice.message.content, choice.message.tool_calls, choice.finish_reason) == ("Plain answer.", None, "stop")


def test_length_wins_over_a_truncated_call():
    text = "<tool_call>\n<function=get_weather>\n<parameter=city>\nPar"
    choice = full(make_plan(), "qwen_xml", text, reason="length", reasoning=False).choices[0]
    assert choice.finish_reason == "length"
    msg, finish, _, _ = reassemble(stream(make_plan(), "qwen_xml", text, step=2, reason="length", reasoning=False))
    assert finish == "length"


def test_usage_chunk_only_when_asked():
    chunks = stream(make_plan(stream=True), "qwen_xml", "hello", step=2, reasoning=False)
    bodies = [json.loads(c[6:]) for c in chunks[:-1]]
    assert all("usage" not in b for b in bodies)
    assert all(len(b["choices"]) == 1 for b in bodies)
    chunks = stream(make_plan(stream=True, stream_options={"include_usage": True}), "qwen_xml", "hello",
                    step=2, reasoning=False)
    bodies = [json.loads(c[6:]) for c in chunks[:-1]]
    assert bodies[-1]["choices"] == [] and bodies[-1]["usage"]["total_tokens"] == 18
    assert all(b["usage"] is None for b in bodies[:-1])


def test_engine_error_reaches_the_stream_as_an_error_event():
    chunks = stream(make_plan(stream=True), "qwen_xml", "partial", step=3, reason="error", reasoning=False)
    error = json.loads(chunks[-2][6:])
    assert error["error"]["type"] == "server_error" and error["error"]["code"] == "generation_failed"
    assert chunks[-1] == b"data: [DONE]\n\n"
