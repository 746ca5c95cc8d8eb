"""Session files: exact round trip, atomic replacement (injected failure and a real SIGKILL), model check."""

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
from qla_agent.runtime import store as store_module
from qla_agent.runtime.sessions import Session
from qla_agent.runtime.state import MemoryPolicy, SessionState
from qla_agent.runtime.store import SessionStore, from_bytes, to_bytes
from tests.runtime.engine_setup import tiny  # noqa: F401 (fixture)

REPO = Path(__file__).resolve().parents[2]


def _session(tiny, policy: MemoryPolicy, *, session_id: str = "sess_a") -> Session:
    """A session that ran 3 prompt chunks on the tiny model, with a checkpoint after each."""
    session = Session(id=session_id, model_id="tiny", policy=policy, state=tiny.model.new_state(policy),
                      messages=[{"role": "user", "content": "héllo"}], tools=[{"type": "function"}],
                      template_kwargs={"enable_thinking": False}, rng_counter=17, implicit=True)
    gen = torch.Generator().manual_seed(0)
    for i, n in enumerate((7, 12, 9)):
        ids = torch.randint(0, 400, (n,), generator=gen).tolist()
        tiny.model.prefill(torch.tensor(ids), session.state)
        session.feed(ids)
        session.capture(n_messages=i + 1, limit=8)
    return session


def _assert_same(ref: Session, out: Session) -> None:
    assert out.id == ref.id and out.policy == ref.policy and out.tokens == ref.tokens
    assert (out.messages, out.tools, out.template_kwargs) == (ref.messages, ref.tools, ref.template_kwargs)
    assert (out.rng_seed, out.rng_counter, out.implicit, out.created) == (ref.rng_seed, ref.rng_counter,
                                                                          ref.implicit, ref.created)
    assert out.state.n_tokens == ref.state.n_tokens
    ref_t, out_t = ref.state.tensors(), out.state.tensors()
    assert ref_t.keys() == out_t.keys() and all(torch.equal(ref_t[k], out_t[k]) for k in ref_t)
    assert [c.n_tokens for c in out.checkpoints] == [c.n_tokens for c in ref.checkpoints]
    for a, b in zip(ref.checkpoints, out.checkpoints):
        assert a.digest == b.digest and a.n_messages == b.n_messages
        assert all(torch.equal(x, y) for x, y in zip(a.recurrent + a.conv, b.recurrent + b.conv))
        assert (a.kv is None) == (b.kv is None)
        for x, y in zip(a.kv or (), b.kv or ()):
            assert x.n_seen == y.n_seen and torch.equal(x.keys, y.keys) and torch.equal(x.values, y.values)


@pytest.mark.parametrize("policy", [MemoryPolicy(), MemoryPolicy("bounded", sink_tokens=2, window_tokens=8)],
                         ids=["full", "bounded-2+8"])
def test_round_trip_is_exact(tiny, tmp_path, policy):
    ref = _session(tiny, policy)
    _assert_same(ref, from_bytes(to_bytes(ref, fingerprint="fp"), fingerprint="fp", device="cpu"))
    store = SessionStore(tmp_path, fingerprint="fp")
    store.save(ref)
    _assert_same(ref, store.load(ref.id, device="cpu"))
    [info] = store.scan()
    assert info.id == ref.id and info.location == "disk" and info.n_tokens == 28
    assert [c.n_tokens for c in info.checkpoints] == [7, 19, 28]


def test_loaded_session_continues_like_the_original(tiny, tmp_path):
    ref = _session(tiny, MemoryPolicy())
    out = from_bytes(to_bytes(ref, fingerprint="fp"), fingerprint="fp", device="cpu")
    ids = torch.tensor([5, 6, 7])
    assert torch.equal(tiny.model.prefill(ids, ref.state), tiny.model.prefill(ids, out.state))


def test_another_models_session_is_refused(tiny, tmp_path):
    ref = _session(tiny, MemoryPolicy())
    data = to_bytes(ref, fingerprint="model-a")
    with pytest.raises(SessionError, match="different model"):
        from_bytes(data, fingerprint="model-b", device="cpu")
    SessionStore(tmp_path, fingerprint="model-a").save(ref)
    other = SessionStore(tmp_path, fingerprint="model-b")
    assert other.scan() == []
    with pytest.raises(SessionError, match="different model"):
        other.load(ref.id, device="cpu")
    with pytest.raises(SessionNotFoundError):
        other.load("sess_missing", device="cpu")


def test_corrupt_files_are_refused(tiny, tmp_path):
    store = SessionStore(tmp_path, fingerprint="fp")
    store.save(_session(tiny, MemoryPolicy()))
    path = store.path("sess_a")
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(SessionError):
        store.load("sess_a", device="cpu")
    with pytest.raises(SessionError, match="not a qla-agent session"):
        from_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ", fingerprint="fp", device="cpu")


def test_failure_during_a_save_keeps_the_previous_file(tiny, tmp_path, monkeypatch):
    store = SessionStore(tmp_path, fingerprint="fp")
    first = _session(tiny, MemoryPolicy())
    store.save(first)
    before = store.path(first.id).read_bytes()

    def half_write_then_fail(tensors, path, metadata=None):
        data = safetensors.torch.save(tensors, metadata=metadata)
        Path(path).write_bytes(data[: len(data) // 2])
        raise OSError("disk full (injected)")

    monkeypatch.setattr(store_module.safetensors.torch, "save_file", half_write_then_fail)
    second = _session(tiny, MemoryPolicy())
    second.messages.append({"role": "assistant", "content": "new"})
    with pytest.raises(OSError, match="injected"):
        store.save(second)
    assert store.path(first.id).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sess_a.safetensors"]
    _assert_same(first, store.load(first.id, device="cpu"))


_WRITER = textwrap.dedent("""
    import sys, time, torch, safetensors.torch
    from qla_agent.runtime import store as store_module
    from qla_agent.runtime.sessions import Session
    from qla_agent.runtime.state import MemoryPolicy, SessionState
    from qla_agent.runtime.store import SessionStore
    root, mode = sys.argv[1], sys.argv[2]
    version = 0
    real_save_file = safetensors.torch.save_file

    def announced_save_file(tensors, path, metadata=None):
        # The real writer, with a pause (a slow disk) where the parent will SIGKILL us.
        if version >= 2 and mode == "half":
            data = safetensors.torch.save(tensors, metadata=metadata)
            with open(path, "wb") as f:
                f.write(data[: len(data) // 2])
                f.flush()
                print("pausing", version, flush=True)
                time.sleep(30)
                f.write(data[len(data) // 2 :])
        else:
            real_save_file(tensors, path, metadata=metadata)
            if version >= 2 and mode == "written":
                print("pausing", version, flush=True)
                time.sleep(30)

    store_module.safetensors.torch.save_file = announced_save_file
    store = SessionStore(root, fingerprint="fp")
    while True:
        value = float(version)
        state = SessionState(recurrent=[torch.full((1, 1024, 1024), value)], conv=[torch.full((8, 3), value)], kv=[])
        session = Session(id="big", model_id="m", policy=MemoryPolicy(), state=state,
                          messages=[{"role": "user", "content": str(version)}])
        store.save(session)
        print("saved", version, flush=True)
        version += 1
""")


@pytest.mark.parametrize("pause", ["written", "half"])
def test_sigkill_during_a_save_leaves_the_previous_file_whole(tmp_path, pause):
    """A real process is SIGKILLed while saving version 2 (temp file half or fully written, not renamed)."""
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path), pause],
                            stdout=subprocess.PIPE, text=True, cwd=REPO)
    lines = [proc.stdout.readline().split() for _ in range(3)]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    assert lines[:2] == [["saved", "0"], ["saved", "1"]] and lines[2] == ["pausing", "2"]
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".")], "the save of version 2 was under way"
    session = SessionStore(tmp_path, fingerprint="fp").load("big", device="cpu")
    assert session.messages[0]["content"] == "1"
    assert bool((session.state.recurrent[0] == 1.0).all()) and bool((session.state.conv[0] == 1.0).all())
    # A restart (scan) removes what the interrupted save left behind.
    assert [i.id for i in SessionStore(tmp_path, fingerprint="fp").scan()] == ["big"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.safetensors"]
