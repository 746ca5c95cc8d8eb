"""Sessions through the engine: fork, export/import, restart after SIGKILL, LRU, bounded memory, limits."""

import copy
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import safetensors.torch
import torch

from qla_agent.errors import SessionError, SessionNotFoundError
from qla_agent.runtime.engine import Engine, EngineSettings
from qla_agent.runtime.requests import ChatRequest, SamplingParams
from qla_agent.runtime.state import MemoryPolicy
from qla_agent.runtime.store import header_of_bytes
from tests.runtime.engine_setup import (
    APPEND_ONLY,
    chat,
    from_scratch,
    greedy,
    make_engine,
    run,
    tiny,  # noqa: F401 (fixture)
)

REPO = Path(__file__).resolve().parents[2]


def _user(text: str) -> dict:
    return {"role": "user", "content": text}


def _answer(fin) -> dict:
    return {"role": "assistant", "content": fin.text}


def _contents(export: bytes) -> tuple[dict, dict]:
    """Header metadata and tensors of an exported session (byte order of the header may vary)."""
    return header_of_bytes(export), safetensors.torch.load(export)


def _same_contents(a: bytes, b: bytes) -> bool:
    (meta_a, ta), (meta_b, tb) = _contents(a), _contents(b)
    assert meta_a and "session" in meta_a and ta
    return meta_a == meta_b and ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def _history_tokens(tiny, messages, template_kwargs) -> int:
    return len(tiny.tokenizer.encode(tiny.template.render(messages, add_generation_prompt=False, **template_kwargs)))


def test_fork_diverges_independently_and_the_parent_is_unchanged(tiny):
    params = greedy(5, logit_bias=tiny.digit_bias())

    async def main():
        engine = make_engine(tiny)
        await engine.start()
        _, a = await chat(engine, ChatRequest([_user("Count to three.")], sampling=params, template_kwargs=APPEND_ONLY))
        parent = a.session_id
        history = [_user("Count to three."), _answer(a)]
        before = await engine.sessions.export(parent)
        child = (await engine.sessions.fork(parent)).id
        child_history = list(history)
        for text in ("Now count to five.", "And to seven?"):
            _, fin = await chat(engine, ChatRequest([_user(text)], sampling=params, session_id=child))
            ref = from_scratch(tiny, [*child_history, _user(text)], params, template_kwargs=APPEND_ONLY)
            assert list(fin.token_ids) == ref
            # The fork resumes from the state it copied: nothing of the shared history is prefilled again.
            assert fin.usage.cached_tokens == _history_tokens(tiny, child_history, APPEND_ONLY)
            child_history += [_user(text), _answer(fin)]
        assert _same_contents(await engine.sessions.export(parent), before)
        _, fin = await chat(engine, ChatRequest([_user("Count backwards.")], sampling=params, session_id=parent))
        assert list(fin.token_ids) == from_scratch(tiny, [*history, _user("Count backwards.")], params,
                                                   template_kwargs=APPEND_ONLY)
        assert (await engine.sessions.get(parent)).n_messages == 4
        assert (await engine.sessions.get(child)).n_messages == 6
        await engine.stop()

    run(main())


def test_fork_at_a_message_starts_from_that_checkpoint(tiny):
    params = greedy(4, logit_bias=tiny.digit_bias())

    async def main():
        engine = make_engine(tiny)
        await engine.start()
        sid, history = None, []
        for text in ("First question?", "Second question?", "Third question?"):
            _, fin = await chat(engine, ChatRequest([_user(text)], sampling=params, session_id=sid,
                                                    template_kwargs=APPEND_ONLY))
            sid = fin.session_id
            history += [_user(text), _answer(fin)]
        child = await engine.sessions.fork(sid, at_message=2)
        assert list(child.messages) == history[:2] and child.n_tokens == _history_tokens(tiny, history[:2], APPEND_ONLY)
        _, fin = await chat(engine, ChatRequest([_user("Other branch?")], sampling=params, session_id=child.id))
        assert fin.usage.cached_tokens == child.n_tokens
        assert list(fin.token_ids) == from_scratch(tiny, [*history[:2], _user("Other branch?")], params,
                                                   template_kwargs=APPEND_ONLY)
        with pytest.raises(SessionError, match="at_message=9"):
            await engine.sessions.fork(sid, at_message=9)
        await engine.stop()

    run(main())


def test_fork_continues_the_parents_random_stream(tiny):
    params = SamplingParams(temperature=1.0, max_tokens=8)

    async def main():
        engine = make_engine(tiny)
        await engine.start()
        _, a = await chat(engine, ChatRequest([_user("Tell me a story.")], sampling=params))
        child = (await engine.sessions.fork(a.session_id)).id
        _, p = await chat(engine, ChatRequest([_user("Go on.")], sampling=params, session_id=a.session_id))
        _, c = await chat(engine, ChatRequest([_user("Go on.")], sampling=params, session_id=child))
        _, p2 = await chat(engine, ChatRequest([_user("Go on.")], sampling=params, session_id=a.session_id))
        await engine.stop()
        return p, c, p2

    p, c, p2 = run(main())
    assert p.token_ids == c.token_ids
    # The stream moves on: the same prompt in the parent draws differently the next time.
    assert p2.token_ids != p.token_ids


def test_export_import_and_another_model_is_refused(tiny):
    params = greedy(4, logit_bias=tiny.digit_bias())
    other_model = copy.deepcopy(tiny.model)
    with torch.no_grad():
        other_model.norm.weight.add_(0.01)

    async def main():
        engine = make_engine(tiny)
        await engine.start()
        _, a = await chat(engine, ChatRequest([_user("Remember 42.")], sampling=params, template_kwargs=APPEND_ONLY))
        data = await engine.sessions.export(a.session_id)
        info = await engine.sessions.import_(data, session_id="imported")
        with pytest.raises(SessionError, match="already exists"):
            await engine.sessions.import_(data)
        assert info.n_tokens == (await engine.sessions.get(a.session_id)).n_tokens
        _, x = await chat(engine, ChatRequest([_user("What was it?")], sampling=params, session_id=a.session_id))
        _, y = await chat(engine, ChatRequest([_user("What was it?")], sampling=params, session_id="imported"))
        assert x.token_ids == y.token_ids and x.usage.cached_tokens == y.usage.cached_tokens > 0
        await engine.stop()
        other = Engine(other_model, tiny.tokenizer, tiny.template, settings=EngineSettings())
        with pytest.raises(SessionError, match="different model"):
            await other.sessions.import_(data)

    run(main())


CLOCK = {"type": "function", "function": {"name": "clock", "description": "The time", "parameters": {
    "type": "object", "properties": {}}}}


def test_restart_lists_and_resumes_saved_sessions(tiny, tmp_path):
    """Also: a session's tools and template options read from disk or memory, as copies."""
    params = greedy(4, logit_bias=tiny.digit_bias())

    async def main():
        first = make_engine(tiny, sessions_dir=tmp_path)
        await first.start()
        _, a = await chat(first, ChatRequest([_user("Hello there.")], sampling=params, template_kwargs=APPEND_ONLY))
        made = await first.sessions.create(messages=[_user("Prepared question?")], session_id="prepared",
                                           tools=[CLOCK], template_kwargs=APPEND_ONLY)
        await first.stop()
        history = [_user("Hello there."), _answer(a)]

        second = make_engine(tiny, sessions_dir=tmp_path)
        await second.start()
        listed = {i.id: i for i in await second.sessions.list()}
        assert set(listed) == {a.session_id, "prepared"} and listed[a.session_id].location == "disk"
        on_disk = await second.sessions.options("prepared")
        assert (on_disk.tools, on_disk.template_kwargs) == ((CLOCK,), APPEND_ONLY)
        assert (await second.sessions.get("prepared")).location == "disk"
        _, b = await chat(second, ChatRequest([_user("And now?")], sampling=params, session_id=a.session_id))
        assert b.usage.cached_tokens == _history_tokens(tiny, history, APPEND_ONLY)
        assert list(b.token_ids) == from_scratch(tiny, [*history, _user("And now?")], params,
                                                 template_kwargs=APPEND_ONLY)
        _, c = await chat(second, ChatRequest([], sampling=params, session_id=made.id))
        assert list(c.token_ids) == from_scratch(tiny, [_user("Prepared question?")], params, tools=[CLOCK],
                                                 template_kwargs=APPEND_ONLY)
        loaded = await second.sessions.options("prepared")
        assert (loaded.tools, loaded.template_kwargs) == ((CLOCK,), APPEND_ONLY)
        loaded.template_kwargs["enable_thinking"] = True
        loaded.tools[0]["function"]["name"] = "changed"
        again = await second.sessions.options("prepared")
        assert (again.tools, again.template_kwargs) == ((CLOCK,), APPEND_ONLY)
        with pytest.raises(SessionNotFoundError):
            await second.sessions.options("never_made")
        await second.sessions.delete("prepared")
        assert not (tmp_path / "prepared.safetensors").exists()
        with pytest.raises(SessionNotFoundError):
            await second.sessions.get("prepared")
        await second.stop()

    run(main())


_CHILD = textwrap.dedent("""
    import asyncio, json, sys, torch
    from qla_agent.runtime.chat_template import ChatTemplate
    from qla_agent.runtime.engine import Engine, EngineSettings
    from qla_agent.runtime.loader import load_model
    from qla_agent.runtime.requests import ChatRequest, Finished, SamplingParams
    from qla_agent.runtime.tokenizer import Tokenizer

    model_dir, sessions_dir = sys.argv[1], sys.argv[2]
    model = load_model(model_dir, device="cpu", dtype=torch.float32, progress=False)
    engine = Engine(model, Tokenizer.from_dir(model_dir), ChatTemplate.from_dir(model_dir),
                    settings=EngineSettings(sessions_dir=sessions_dir))
    params = SamplingParams(temperature=1.0, max_tokens=6)

    async def turn(text, session_id):
        async for event in engine.chat(ChatRequest([{"role": "user", "content": text}], session_id=session_id,
                                                   sampling=params)):
            if isinstance(event, Finished):
                return event

    async def main():
        await engine.start()
        sid = None
        for text in ("Hello!", "How are you?"):
            sid = (await turn(text, sid)).session_id
        # The oracle for after the restart: a fork (same state and random stream) takes the next turn.
        fork = await engine.sessions.fork(sid)
        ref = await turn("Tell me more.", fork.id)
        print(json.dumps({"session_id": sid, "ref": list(ref.token_ids)}), flush=True)
        await asyncio.sleep(120)

    asyncio.run(main())
""")


def test_sigkill_right_after_a_turn_then_restart_continues_with_the_same_tokens(tiny, tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(tiny.path), str(tmp_path)],
                            stdout=subprocess.PIPE, text=True, cwd=REPO)
    line = proc.stdout.readline()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    child = json.loads(line)

    async def main():
        engine = make_engine(tiny, sessions_dir=tmp_path)
        await engine.start()
        _, fin = await chat(engine, ChatRequest([_user("Tell me more.")], session_id=child["session_id"],
                                                sampling=SamplingParams(temperature=1.0, max_tokens=6)))
        await engine.stop()
        return fin

    fin = run(main())
    assert list(fin.token_ids) == child["ref"]
    assert fin.usage.cached_tokens > 0


def test_idle_sessions_leave_memory_and_come_back(tiny, tmp_path):
    params = greedy(4, logit_bias=tiny.digit_bias())

    async def main():
        engine = make_engine(tiny, sessions_dir=tmp_path, max_memory_sessions=1)
        await engine.start()
        histories = {}
        for text in ("Session one?", "Session two?", "Session three?"):
            _, fin = await chat(engine, ChatRequest([_user(text)], sampling=params, template_kwargs=APPEND_ONLY))
            histories[fin.session_id] = [_user(text), _answer(fin)]
        locations = {i.id: i.location for i in await engine.sessions.list()}
        assert sorted(locations.values()) == ["cpu", "disk", "disk"]
        assert engine.stats().loaded_sessions == 1
        for sid, history in histories.items():
            _, fin = await chat(engine, ChatRequest([_user("More?")], sampling=params, session_id=sid))
            assert fin.usage.cached_tokens == _history_tokens(tiny, history, APPEND_ONLY)
            assert list(fin.token_ids) == from_scratch(tiny, [*history, _user("More?")], params,
                                                       template_kwargs=APPEND_ONLY)
        await engine.stop()

    run(main())


def test_bounded_session_runs_twenty_windows_in_flat_memory(tiny):
    window = 32
    policy = MemoryPolicy("bounded", sink_tokens=4, window_tokens=window)
    params = greedy(8, logit_bias=tiny.digit_bias())

    async def main():
        # A context far smaller than the conversation: the bounded policy never overflows.
        engine = make_engine(tiny, context_length=128, default_policy=policy)
        await engine.start()
        sid, sizes, turns = None, [], 0
        while (sizes and sizes[-1][0] <= 20 * window) or turns < 4:
            _, fin = await chat(engine, ChatRequest([_user(f"Turn {turns}: add one more number to the list.")],
                                                    sampling=params, session_id=sid, template_kwargs=APPEND_ONLY))
            assert fin.finish_reason in ("stop", "length") and fin.usage.completion_tokens >= 1
            sid = fin.session_id
            info = await engine.sessions.get(sid)
            sizes.append((info.n_tokens, info.state_bytes, engine.stats().state_bytes))
            turns += 1
        await engine.stop()
        return sizes

    sizes = run(main())
    assert sizes[-1][0] > 20 * window
    warm = [s[1] for s in sizes[4:]]
    assert min(warm) == max(warm), f"state bytes moved: {warm}"
    assert all(s[1] == s[2] for s in sizes)
    # Far below what the full KV of that many tokens would take (8 heads*dims per token per layer).
    c = tiny.model.config
    full_kv = sizes[-1][0] * 2 * c.num_key_value_heads * c.head_dim * 4 * len(c.attention_layers)
    assert warm[-1] < full_kv


def test_implicit_sessions_are_capped_and_busy_ones_not_deleted(tiny):
    async def main():
        engine = make_engine(tiny, max_implicit_sessions=2)
        await engine.start()
        ids = [(await chat(engine, ChatRequest([_user(f"Topic {i}?")], sampling=greedy(2))))[1].session_id
               for i in range(3)]
        listed = [i.id for i in await engine.sessions.list()]
        assert sorted(listed) == sorted(ids[1:])
        named = await engine.sessions.create(session_id="mine")
        long = engine.chat(ChatRequest([_user("Long answer please.")], session_id="mine", sampling=greedy(300)))
        await long.__anext__()
        with pytest.raises(SessionError, match="busy"):
            await engine.sessions.delete(named.id)
        with pytest.raises(SessionError, match="busy"):
            await engine.sessions.fork(named.id)
        await long.aclose()
        await engine.stop()

    run(main())
