"""Engine on a tiny real model (fp32, CPU): prefix reuse across turns, batching, stops, cancel, limits."""

import asyncio

import pytest

from qla_agent.errors import (
    ContextOverflowError,
    EngineNotRunningError,
    SessionBusyError,
    SessionError,
    SessionNotFoundError,
)
from qla_agent.runtime.requests import ChatRequest, SamplingParams, TextDelta
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

SYSTEM = {"role": "system", "content": "You are a helpful assistant."}


def _user(k: int) -> dict:
    return {"role": "user", "content": f"Question {k}: what is the weather in Paris on day {k}?"}


def _history_tokens(tiny, messages, template_kwargs) -> int:
    """Tokens of `messages` rendered without a generation prompt."""
    text = tiny.template.render(messages, add_generation_prompt=False, **template_kwargs)
    return len(tiny.tokenizer.encode(text))


async def _started(tiny, **settings):
    engine = make_engine(tiny, **settings)
    await engine.start()
    return engine


def test_ten_turns_reuse_every_token_and_match_rendering_from_scratch(tiny):
    """Append-only rendering: each turn prefills only its new message; no token is computed twice."""
    params = greedy(6, logit_bias=tiny.digit_bias())

    async def main():
        engine = await _started(tiny)
        history, session_id = [SYSTEM], None
        for k in range(10):
            ref = from_scratch(tiny, [*history, _user(k)], params, template_kwargs=APPEND_ONLY)
            new = [_user(k)] if k else [SYSTEM, _user(k)]
            deltas, fin = await chat(engine, ChatRequest(new, sampling=params, session_id=session_id,
                                                         template_kwargs=APPEND_ONLY))
            assert list(fin.token_ids) == ref
            assert "".join(deltas) == fin.text == completion_text(tiny, ref)
            if k:
                assert fin.usage.cached_tokens == _history_tokens(tiny, history, APPEND_ONLY)
            session_id = fin.session_id
            history += [_user(k), {"role": "assistant", "content": fin.text}]
        stats = engine.stats()
        await engine.stop()
        # Every token of the final conversation ran through the model exactly once.
        assert stats.prefill_tokens_computed + stats.decode_tokens == _history_tokens(tiny, history, APPEND_ONLY)
        assert stats.requests_finished == 10

    run(main())


def test_template_that_drops_old_thinking_resumes_from_the_checkpoint_before_the_answer(tiny):
    """Qwen3.5's template re-renders old answers without thinking: the engine falls back one message."""
    params = greedy(5)

    async def main():
        engine = await _started(tiny)
        history, session_id = [], None
        for k in range(4):
            ref = from_scratch(tiny, [*history, _user(k)], params)
            _, fin = await chat(engine, ChatRequest([_user(k)], sampling=params, session_id=session_id))
            assert list(fin.token_ids) == ref
            if k:
                # Everything up to the previous question is reused; the previous answer is re-rendered.
                assert fin.usage.cached_tokens == _history_tokens(tiny, history[:-1], {})
            session_id = fin.session_id
            history += [_user(k), {"role": "assistant", "content": fin.text}]
        await engine.stop()

    run(main())


def test_resent_history_hits_the_checkpoint_and_an_edited_message_falls_back(tiny):
    params = greedy(4, logit_bias=tiny.digit_bias())

    async def main():
        engine = await _started(tiny, max_checkpoints=16)
        history, session_id = [SYSTEM], None
        for k in range(3):
            new = [_user(k)] if k else [SYSTEM, _user(k)]
            _, fin = await chat(engine, ChatRequest(new, sampling=params, session_id=session_id,
                                                    template_kwargs=APPEND_ONLY))
            session_id = fin.session_id
            history += [_user(k), {"role": "assistant", "content": fin.text}]
        before = engine.stats().prefill_tokens_computed

        # A stateless client resends everything plus a new question: only the question is prefilled.
        resent = [*history, _user(3)]
        _, fin = await chat(engine, ChatRequest(resent, sampling=params, template_kwargs=APPEND_ONLY))
        assert fin.usage.cached_tokens == _history_tokens(tiny, history, APPEND_ONLY)
        assert list(fin.token_ids) == from_scratch(tiny, resent, params, template_kwargs=APPEND_ONLY)
        assert fin.session_id == session_id
        assert engine.stats().prefill_tokens_computed - before < fin.usage.prompt_tokens - fin.usage.cached_tokens + 8

        # Editing the second question resumes from the checkpoint before it, in a fork.
        edited = [*history[:3], {"role": "user", "content": "A different second question?"}]
        _, fin = await chat(engine, ChatRequest(edited, sampling=params, template_kwargs=APPEND_ONLY))
        assert fin.usage.cached_tokens == _history_tokens(tiny, history[:3], APPEND_ONLY)
        assert list(fin.token_ids) == from_scratch(tiny, edited, params, template_kwargs=APPEND_ONLY)
        assert fin.session_id != session_id
        # The original session still resumes from its whole history.
        info = await engine.sessions.get(session_id)
        assert info.n_messages == len(resent) + 1
        await engine.stop()

    run(main())


def test_regenerate_and_edit_last_turn_with_keep_messages(tiny):
    params = greedy(5, logit_bias=tiny.digit_bias())

    async def main():
        engine = await _started(tiny)
        _, first = await chat(engine, ChatRequest([SYSTEM, _user(0)], sampling=params, template_kwargs=APPEND_ONLY))
        sid = first.session_id
        _, second = await chat(engine, ChatRequest([_user(1)], sampling=params, session_id=sid))
        history = [SYSTEM, _user(0), {"role": "assistant", "content": first.text}, _user(1)]
        # Regenerate: drop the last answer, add nothing.
        _, again = await chat(engine, ChatRequest([], sampling=params, session_id=sid, keep_messages=4))
        assert again.token_ids == second.token_ids
        assert again.usage.cached_tokens == _history_tokens(tiny, history, APPEND_ONLY)
        # Edit the last question.
        edited = {"role": "user", "content": "Another question entirely?"}
        _, fin = await chat(engine, ChatRequest([edited], sampling=params, session_id=sid, keep_messages=3))
        assert fin.usage.cached_tokens == _history_tokens(tiny, history[:3], APPEND_ONLY)
        assert list(fin.token_ids) == from_scratch(tiny, [*history[:3], edited], params, template_kwargs=APPEND_ONLY)
        assert (await engine.sessions.get(sid)).n_messages == 5
        await engine.stop()

    run(main())


def _mixed_params(i: int) -> SamplingParams:
    if i % 2 == 0:
        return greedy(12 + i)
    return SamplingParams(temperature=0.9, top_p=0.95, top_k=50, seed=100 + i, max_tokens=12 + i,
                          presence_penalty=0.3, repetition_penalty=1.1)


def test_eight_sessions_decoded_together_equal_each_alone(tiny):
    requests = [ChatRequest([SYSTEM, _user(i)], sampling=_mixed_params(i)) for i in range(8)]

    async def main():
        alone_engine = await _started(tiny)
        alone = [(await chat(alone_engine, r))[1] for r in requests]
        await alone_engine.stop()
        batch_engine = await _started(tiny, max_batch=8)
        together = await asyncio.gather(*(chat(batch_engine, r) for r in requests))
        stats = batch_engine.stats()
        await batch_engine.stop()
        return alone, [fin for _, fin in together], stats

    alone, together, stats = run(main())
    assert [f.token_ids for f in together] == [f.token_ids for f in alone]
    assert [f.text for f in together] == [f.text for f in alone]
    # The requests really shared decode steps.
    assert stats.decode_tokens / stats.decode_steps > 3


def test_stop_string_is_cut_and_never_streamed(tiny):
    params = SamplingParams(temperature=1.0, seed=5, max_tokens=24)

    async def main():
        engine = await _started(tiny)
        _, full = await chat(engine, ChatRequest([_user(0)], sampling=params))
        stop = full.text[8:11]
        deltas, fin = await chat(engine, ChatRequest([_user(0)], sampling=SamplingParams(
            temperature=1.0, seed=5, max_tokens=24, stop=(stop,))))
        await engine.stop()
        return full, stop, deltas, fin

    full, stop, deltas, fin = run(main())
    assert len(stop) == 3
    assert fin.finish_reason == "stop"
    assert fin.text == full.text[: full.text.index(stop)]
    assert "".join(deltas) == fin.text
    assert all(stop not in d for d in deltas)


def test_stop_token_and_max_tokens(tiny):
    async def main():
        engine = await _started(tiny)
        _, full = await chat(engine, ChatRequest([_user(1)], sampling=SamplingParams(temperature=1.0, seed=9,
                                                                                       max_tokens=12)))
        token = full.token_ids[4]
        first = full.token_ids.index(token)
        _, cut = await chat(engine, ChatRequest([_user(1)], sampling=SamplingParams(
            temperature=1.0, seed=9, max_tokens=12, stop_token_ids=(token,))))
        await engine.stop()
        return full, first, cut

    full, first, cut = run(main())
    assert full.finish_reason == "length" and full.usage.completion_tokens == 12
    assert cut.finish_reason == "stop" and cut.token_ids == full.token_ids[: first + 1]


def test_cancel_leaves_the_session_as_before_the_turn(tiny):
    params = greedy(5, logit_bias=tiny.digit_bias())

    async def main():
        engine = await _started(tiny)
        _, first = await chat(engine, ChatRequest([SYSTEM, _user(0)], sampling=params, template_kwargs=APPEND_ONLY))
        sid = first.session_id
        stream = engine.chat(ChatRequest([_user(1)], session_id=sid, sampling=greedy(400)))
        got = 0
        async for event in stream:
            got += isinstance(event, TextDelta)
            if got == 3:
                break
        await stream.aclose()
        # The next turn may follow at once; it sees the session as it was before the cancelled one.
        _, fin = await chat(engine, ChatRequest([_user(2)], session_id=sid, sampling=params))
        history = [SYSTEM, _user(0), {"role": "assistant", "content": first.text}]
        assert list(fin.token_ids) == from_scratch(tiny, [*history, _user(2)], params, template_kwargs=APPEND_ONLY)
        assert fin.usage.cached_tokens == _history_tokens(tiny, history, APPEND_ONLY)
        info = await engine.sessions.get(sid)
        assert info.n_messages == 5 and info.messages[3] == _user(2)
        assert engine.stats().requests_cancelled == 1
        await engine.stop()

    run(main())


def test_context_overflow_and_length_at_the_context_limit(tiny):
    async def main():
        engine = await _started(tiny, context_length=40)
        long = {"role": "user", "content": "word " * 60}
        with pytest.raises(ContextOverflowError, match=r"tokens too many") as err:
            await chat(engine, ChatRequest([long]))
        n_prompt = len(tiny.tokenizer.encode(tiny.template.render([long], add_generation_prompt=True)))
        assert f"{n_prompt - 40 + 1} tokens too many" in str(err.value)
        assert await engine.sessions.list() == []
        short = {"role": "user", "content": "Hi"}
        _, fin = await chat(engine, ChatRequest([short], sampling=greedy(100)))
        await engine.stop()
        return fin

    fin = run(main())
    assert fin.finish_reason == "length"
    assert fin.usage.prompt_tokens + fin.usage.completion_tokens == 40


def test_busy_and_unknown_sessions_are_refused(tiny):
    async def main():
        engine = await _started(tiny)
        _, first = await chat(engine, ChatRequest([_user(0)], sampling=greedy(2)))
        long = engine.chat(ChatRequest([_user(1)], session_id=first.session_id, sampling=greedy(300)))
        await long.__anext__()
        with pytest.raises(SessionBusyError, match="busy"):
            await chat(engine, ChatRequest([_user(2)], session_id=first.session_id))
        with pytest.raises(SessionBusyError, match="busy"):
            await engine.sessions.delete(first.session_id)
        await long.aclose()
        with pytest.raises(SessionNotFoundError):
            await chat(engine, ChatRequest([_user(2)], session_id="sess_missing"))
        with pytest.raises(SessionError, match="invalid"):
            await chat(engine, ChatRequest([_user(2)], session_id="../etc/passwd"))
        await engine.stop()
        with pytest.raises(EngineNotRunningError, match="not running"):
            await chat(engine, ChatRequest([_user(2)]))

    run(main())


def test_same_seed_same_text_in_different_sessions(tiny):
    params = SamplingParams(temperature=1.2, seed=1234, max_tokens=10)

    async def main():
        engine = await _started(tiny)
        a = await chat(engine, ChatRequest([_user(0)], sampling=params))
        b = await chat(engine, ChatRequest([SYSTEM, _user(0)], sampling=params))
        c = await chat(engine, ChatRequest([SYSTEM, _user(0)], sampling=params))
        await engine.stop()
        return a[1], b[1], c[1]

    a, b, c = run(main())
    assert b.token_ids == c.token_ids
    # The resent conversation regenerates in place in the implicit session of the first send.
    assert c.session_id == b.session_id and c.usage.cached_tokens > 0 and b.usage.cached_tokens == 0
    assert a.session_id != b.session_id
