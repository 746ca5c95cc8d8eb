"""Continuous batching on a tiny real model: requests that arrive together decode in shared steps."""

import asyncio

from qla_agent.runtime.requests import ChatRequest
from qla_agent.runtime.engine import Engine
from tests.runtime.engine_setup import (
    APPEND_ONLY,
    chat,
    from_scratch,
    greedy,
    make_engine,
    run,
    tiny,  # noqa: F401 (fixture)
)

SESSIONS = 8
MAX_TOKENS = 3


def _system(i: int) -> dict:
    return {"role": "system", "content": f"You are counter number {i}."}


def _user(i: int) -> dict:
    return {"role": "user", "content": f"client {i} turn 0: {i * 7}"}


async def _session_turns(engine: Engine, params) -> list:
    """One short turn on each of SESSIONS stored sessions, all sent at once; their Finished events."""
    ids = [(await engine.sessions.create(messages=[_system(i)], template_kwargs=APPEND_ONLY)).id
           for i in range(SESSIONS)]
    results = await asyncio.gather(*(chat(engine, ChatRequest([_user(i)], sampling=params, session_id=sid))
                                     for i, sid in enumerate(ids)))
    return [fin for _, fin in results]


def test_eight_short_answers_sent_together_share_decode_steps_and_equal_each_alone(tiny):
    """Prompts with several message boundaries (several prefill chunks each) and 3-token answers: the
    prefills of the requests that arrived together finish in the same step, so their decodes share
    steps instead of trailing one prefill each; every answer equals the from-scratch greedy one."""
    no_stop = {t: -100.0 for t in tiny.stop_ids}
    params = greedy(MAX_TOKENS, logit_bias=no_stop)

    async def main():
        engine = make_engine(tiny)
        await engine.start()
        finished = await _session_turns(engine, params)
        stats = engine.stats()
        await engine.stop()
        return finished, stats

    finished, stats = run(main())
    for i, out in enumerate(finished):
        ref = from_scratch(tiny, [_system(i), _user(i)], params, template_kwargs=APPEND_ONLY)
        assert list(out.token_ids) == ref, f"session {i}"
    # The first token comes from the prefill; the other MAX_TOKENS - 1 from decode steps.
    assert stats.decode_tokens == SESSIONS * (MAX_TOKENS - 1)
    # One decode step per token would be 16 steps; together it is 2 (a few more if the scheduler
    # woke up between two submissions).
    assert stats.decode_steps <= 3 * (MAX_TOKENS - 1), stats
