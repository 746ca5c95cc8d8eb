"""Request options on a tiny real model (fp32, CPU): the assistant prefix and stop strings kept in the answer."""

from dataclasses import replace

import pytest

from qla_agent.runtime.requests import ChatRequest, SamplingParams
from qla_agent.runtime.stopping import StopMatcher
from tests.runtime.engine_setup import (
    APPEND_ONLY,
    chat,
    completion_text,
    from_scratch,
    greedy,
    make_engine,
    run,
    tiny,  # noqa: F401 (fixture)
)

SYSTEM = {"role": "system", "content": "You count."}


def _user(k: int) -> dict:
    return {"role": "user", "content": f"Count from {k}."}


def _tokens(tiny, messages, *, generation_prompt: bool, suffix: str = "") -> int:
    text = tiny.template.render(messages, add_generation_prompt=generation_prompt, **APPEND_ONLY) + suffix
    return len(tiny.tokenizer.encode(text))


def test_assistant_prefix_is_prefilled_streamed_first_and_stored_in_the_answer(tiny):
    """The model continues the prefix (from-scratch oracle: prompt + prefix prefilled); the prefix is the
    first delta and starts Finished.text and the stored message; its tokens are prompt tokens; the
    next turn reuses the whole history, prefix included."""
    params = greedy(5, logit_bias=tiny.digit_bias())
    prefix = "42"

    async def main():
        engine = make_engine(tiny)
        await engine.start()
        deltas, fin = await chat(engine, ChatRequest([SYSTEM, _user(1)], sampling=params, template_kwargs=APPEND_ONLY,
                                                     assistant_prefix=prefix))
        info = await engine.sessions.get(fin.session_id)
        _, nxt = await chat(engine, ChatRequest([_user(2)], sampling=params, session_id=fin.session_id))
        await engine.stop()
        return deltas, fin, info, nxt

    deltas, fin, info, nxt = run(main())
    ref = from_scratch(tiny, [SYSTEM, _user(1)], params, template_kwargs=APPEND_ONLY, prefix=prefix)
    assert list(fin.token_ids) == ref
    # The prefix changes what the model says, so the check above sees whether it was prefilled.
    assert ref != from_scratch(tiny, [SYSTEM, _user(1)], params, template_kwargs=APPEND_ONLY)
    assert deltas[0] == prefix
    assert "".join(deltas) == fin.text == prefix + completion_text(tiny, ref)
    assert info.messages[-1] == {"role": "assistant", "content": fin.text}
    assert fin.usage.prompt_tokens == _tokens(tiny, [SYSTEM, _user(1)], generation_prompt=True, suffix=prefix)
    assert fin.usage.completion_tokens == len(ref)
    history = [SYSTEM, _user(1), {"role": "assistant", "content": fin.text}]
    assert nxt.usage.cached_tokens == _tokens(tiny, history, generation_prompt=False)
    assert list(nxt.token_ids) == from_scratch(tiny, [*history, _user(2)], params, template_kwargs=APPEND_ONLY)


def test_stop_after_string_ends_the_answer_and_stays_in_it_and_in_the_session(tiny):
    """Sampled text, then the same request with a piece of its middle as `stop_after`: the answer is the
    text up to and including the piece, streamed whole, and the session stores exactly that."""
    params = SamplingParams(temperature=1.0, seed=7, max_tokens=24)

    async def main():
        engine = make_engine(tiny)
        await engine.start()
        _, full = await chat(engine, ChatRequest([_user(3)], sampling=params))
        piece = full.text[6:9]
        cut = replace(params, stop_after=(piece,))
        deltas, fin = await chat(engine, ChatRequest([_user(3)], sampling=cut))
        info = await engine.sessions.get(fin.session_id)
        await engine.stop()
        return full, piece, deltas, fin, info

    full, piece, deltas, fin, info = run(main())
    assert len(piece) == 3
    end = full.text.index(piece) + len(piece)
    assert fin.finish_reason == "stop" and fin.text == full.text[:end]
    assert "".join(deltas) == fin.text and fin.usage.completion_tokens < full.usage.completion_tokens
    assert info.messages[-1] == {"role": "assistant", "content": fin.text}


@pytest.mark.parametrize("stops, keep, deltas, out", [
    ((), ("</tool_call>",), ["a<tool_call>x</tool", "_call>\nmore"], ["a<tool_call>x", "</tool_call>"]),
    (("STOP",), ("END",), ["1 END 2 STOP"], ["1 END"]),
    (("STOP",), ("END",), ["1 STOP 2 END"], ["1 "]),
    (("AB",), ("A",), ["xAB"], ["x"]),
], ids=["kept-split", "kept-first", "cut-first", "same-start-cut-wins"])
def test_stop_matcher_keeps_stop_after_strings(stops, keep, deltas, out):
    matcher = StopMatcher(stops, keep=keep)
    assert [matcher.feed(d) for d in deltas] == out
    assert matcher.stopped and matcher.flush() == ""
