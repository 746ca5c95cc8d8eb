"""Streaming behaviour of the tool-call parser: hold-back, early emission, fuzzed chunk invariance."""

from __future__ import annotations

import json
import random

import pytest

from qla_agent.tools.parsers import (
    ContentDelta,
    ParsedMessage,
    ReasoningDelta,
    ToolCall,
    ToolCallDelta,
    merge_deltas,
    opens_reasoning,
    parser_for,
)
from tests.tools.corpus import TOOLS, stream_in_chunks

FRAGMENTS = [
    "<tool_call>", "</tool_call>", "<function=get_weather>", "<function=write_file>", "<parameter=city>",
    "<parameter=days>", "<parameter=content>", "</parameter>", "</function>", "<think>", "</think>", "```",
    "{", "}", '"name": "get_weather"', '"arguments": {', '"city": "Oslo"', "\n", " ", "abc", "7", "<", ">",
    "/", "</", "<tool", "_call>", '"', "\\", "<function=", "<parameter=",
]


def _ids():
    n = iter(range(10_000))
    return lambda: f"call_{next(n)}"


@pytest.mark.parametrize("fmt", ["qwen_xml", "hermes", None])
@pytest.mark.parametrize(("starts", "cir"), [(False, False), (True, False), (True, True)])
def test_fuzzed_text_never_raises_and_chunking_does_not_matter(fmt, starts, cir):
    rng = random.Random(f"{fmt}-{starts}-{cir}")
    kwargs = {"starts_in_reasoning": starts, "calls_in_reasoning": cir}
    for _ in range(150):
        text = "".join(rng.choice(FRAGMENTS) for _ in range(rng.randint(1, 40)))
        ref = parser_for(fmt, TOOLS, new_id=_ids(), **kwargs).parse(text)
        for seed in range(3):
            parser = parser_for(fmt, TOOLS, new_id=_ids(), **kwargs)
            out = merge_deltas(stream_in_chunks(parser, text, seed, max_chunk=5))
            assert out == ref, (text, seed)
        for call in ref.tool_calls:
            json.loads(call.arguments)


def test_partial_tag_is_held_back_then_released_as_text():
    stream = parser_for("qwen_xml", TOOLS).stream()
    assert stream.feed("Hello <tool") == [ContentDelta("Hello")]
    assert stream.feed("box> ok") == [ContentDelta(" <toolbox> ok")]
    assert stream.finish() == []


def test_literal_tool_call_in_prose_is_released_before_finish():
    # club-3090 #72: a parser went silent for a minute after prose mentioning <tool_call>.
    stream = parser_for("qwen_xml", TOOLS).stream()
    out = stream.feed("Use a <tool_call> tag") + stream.feed(" when needed.")
    assert merge_deltas(out).content == "Use a <tool_call> tag when needed."


def test_string_argument_streams_before_the_call_closes():
    stream = parser_for("qwen_xml", TOOLS, new_id=lambda: "call_a").stream()
    head = stream.feed("<tool_call>\n<function=write_file>\n<parameter=content>\nline one\nline")
    assert head[0] == ToolCallDelta(index=0, id="call_a", name="write_file")
    pieces = "".join(d.arguments for d in head[1:])
    assert pieces == '{"content": "line one\\nline'
    tail = stream.feed(" two\n</parameter>\n<parameter=path>\nx\n</parameter>\n</function>\n</tool_call>")
    tail += stream.finish()
    args = pieces + "".join(d.arguments for d in tail)
    assert json.loads(args) == {"content": "line one\nline two", "path": "x"}
    assert all(d.error is None for d in tail)


def test_typed_argument_is_emitted_only_when_complete():
    stream = parser_for("qwen_xml", TOOLS).stream()
    out = stream.feed("<tool_call>\n<function=get_weather>\n<parameter=days>\n1")
    assert "".join(d.arguments for d in out) == ""
    out = stream.feed("2\n</parameter>\n<parameter=")
    assert "".join(d.arguments for d in out) == '{"days": 12'


def test_trailing_whitespace_is_held_until_more_text():
    stream = parser_for(None).stream()
    assert stream.feed("a \n") == [ContentDelta("a")]
    assert stream.feed(" b") == [ContentDelta(" \n b")]
    assert stream.feed("\n\n") == []
    assert stream.finish() == []


def test_reasoning_streams_as_reasoning_deltas():
    stream = parser_for("hermes", TOOLS, starts_in_reasoning=True).stream()
    out = stream.feed("\nstep one, ") + stream.feed("step two</th") + stream.feed("ink>\n\nAnswer.")
    assert [type(d) for d in out] == [ReasoningDelta, ReasoningDelta, ContentDelta]
    assert merge_deltas(out + stream.finish()) == ParsedMessage("Answer.", "step one, step two")


def test_feed_after_finish_is_refused():
    stream = parser_for("qwen_xml").stream()
    stream.finish()
    with pytest.raises(RuntimeError, match="after finish"):
        stream.feed("x")


def test_unknown_format_is_refused():
    with pytest.raises(ValueError, match="'json'"):
        parser_for("json")


@pytest.mark.parametrize(
    ("prompt", "ref"),
    [
        ("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n", True),
        ("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n", False),
        ("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", False),
        ("<|im_start|>assistant\n<think>\nold\n</think>\n\nx<|im_end|>\n<|im_start|>assistant\n", False),
    ],
    ids=["thinking-on", "thinking-off", "instruct", "old-think-closed"],
)
def test_opens_reasoning(prompt, ref):
    assert opens_reasoning(prompt) is ref


def test_openai_dicts():
    call = ToolCall(id="call_1", name="f", arguments='{"a": 1}', error="bad")
    msg = ParsedMessage(content="", reasoning_content="why", tool_calls=(call,))
    assert msg.to_openai() == {
        "role": "assistant", "content": None, "reasoning_content": "why",
        "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}],
    }
    assert msg.to_openai(include_errors=True)["tool_calls"][0]["error"] == "bad"
    assert msg.valid_calls == ()
    first = ToolCallDelta(index=0, id="call_1", name="f").to_openai()
    assert first == {"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                     "function": {"name": "f", "arguments": ""}}]}
    later = ToolCallDelta(index=0, arguments="{}").to_openai()
    assert later == {"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}
    assert ParsedMessage("hi", None).to_openai() == {"role": "assistant", "content": "hi"}
