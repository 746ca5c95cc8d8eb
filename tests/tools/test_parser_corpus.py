"""Every case of the tool-call regression corpus, parsed whole and streamed in random chunks."""

from __future__ import annotations

import json

import pytest

from qla_agent.tools.parsers import ToolCallDelta
from tests.tools.corpus import case_parser, load_cases, stream_in_chunks, streamed

CASES = load_cases()


def test_corpus_is_large_and_ids_unique():
    ids = [c["id"] for c in CASES]
    assert len(ids) >= 50
    assert len(set(ids)) == len(ids)


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_full_parse_matches_expected(case):
    out = case_parser(case).parse(case["text"])
    ref = case["expected"]
    assert out.content == ref["content"]
    assert out.reasoning_content == ref["reasoning_content"]
    assert [c.name for c in out.tool_calls] == [c["name"] for c in ref["tool_calls"]]
    for i, (call, want) in enumerate(zip(out.tool_calls, ref["tool_calls"], strict=True)):
        assert call.id == f"call_{i}"
        assert json.loads(call.arguments) == want["arguments"]
        if want["error"] is None:
            assert call.error is None
        else:
            assert call.error is not None and want["error"] in call.error


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_streamed_in_random_chunks_equals_full_parse(case):
    ref = case_parser(case).parse(case["text"])
    for seed in range(12):
        out = streamed(case_parser(case), case["text"], seed)
        assert out == ref, f"seed {seed}"


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_stream_deltas_have_openai_shape(case):
    deltas = stream_in_chunks(case_parser(case), case["text"], seed=7)
    seen: set[int] = set()
    for delta in deltas:
        if isinstance(delta, ToolCallDelta):
            first = delta.index not in seen
            assert (delta.id is not None) == first
            assert (delta.name is not None) == first
            seen.add(delta.index)
        else:
            assert delta.text
    assert sorted(seen) == list(range(len(seen)))
