"""KVCache growth, bounded eviction, truncation, and SessionState copy/export."""

import pytest
import torch

from qla_agent.errors import SessionError
from qla_agent.runtime.state import KVCache, MemoryPolicy, SessionState

NKV, D = 2, 8


def _entries(start: int, n: int) -> torch.Tensor:
    """[NKV, n, D] entries whose every value is the token index (so order is checkable)."""
    idx = torch.arange(start, start + n, dtype=torch.float32)
    return idx[None, :, None].expand(NKV, n, D).clone()


def _tokens(t: torch.Tensor) -> list[int]:
    return t[0, :, 0].long().tolist()


@pytest.mark.parametrize("chunks", [[1] * 40, [7, 1, 30, 2], [100]], ids=["1x40", "7-1-30-2", "100"])
def test_full_cache_keeps_everything_in_order(chunks):
    cache = KVCache(NKV, D)
    n = 0
    for c in chunks:
        k, v = cache.append(_entries(n, c), -_entries(n, c))
        n += c
        assert _tokens(k) == list(range(n))
        assert _tokens(-v) == list(range(n))
    assert len(cache) == n
    assert _tokens(cache.keys) == list(range(n))
    # Amortised growth: capacity at most doubles past what is needed.
    assert n <= cache.capacity <= max(2 * n, 16)


def test_full_cache_truncate_then_append_overwrites():
    cache = KVCache(NKV, D)
    cache.append(_entries(0, 10), _entries(0, 10))
    cache.truncate(4)
    assert len(cache) == 4
    k, _ = cache.append(_entries(100, 3), _entries(100, 3))
    assert _tokens(k) == [0, 1, 2, 3, 100, 101, 102]
    with pytest.raises(SessionError, match="to 9"):
        cache.truncate(9)


@pytest.mark.parametrize("chunks", [[1] * 50, [3, 20, 1, 1, 9, 40], [60]], ids=["1x50", "mixed", "60"])
def test_bounded_cache_keeps_sinks_and_window(chunks):
    policy = MemoryPolicy(kind="bounded", sink_tokens=3, window_tokens=8)
    cache = KVCache(NKV, D, policy=policy)
    n = 0
    for c in chunks:
        held_before = _tokens(cache.keys)
        ctx_k, _ = cache.append(_entries(n, c), _entries(n, c))
        n += c
        expected = list(range(min(n, 3))) + [t for t in range(max(3, n - 8), n)]
        if c == 1 or n <= 11:
            # One token, or nothing evicted: the queries see the cache as it is after the append.
            assert sorted(_tokens(ctx_k)) == expected
        else:
            # An evicting chunk: its queries see what was held plus the new entries, new ones last.
            assert sorted(_tokens(ctx_k)[: len(held_before)]) == held_before
            assert _tokens(ctx_k)[len(held_before) :] == list(range(n - c, n))
        assert _tokens(cache.keys) == expected
        assert sorted(_tokens(cache.context()[0])) == expected
        assert cache.capacity <= 11


def test_bounded_cache_memory_is_flat():
    policy = MemoryPolicy(kind="bounded", sink_tokens=4, window_tokens=32)
    cache = KVCache(NKV, D, policy=policy)
    sizes = []
    for n in range(200):
        cache.append(_entries(n, 1), _entries(n, 1))
        sizes.append(cache.nbytes())
    assert len(set(sizes[36:])) == 1
    assert sizes[-1] == 2 * NKV * 36 * D * 4


def test_bounded_cache_refuses_truncation_after_eviction():
    cache = KVCache(NKV, D, policy=MemoryPolicy(kind="bounded", sink_tokens=1, window_tokens=4))
    cache.append(_entries(0, 4), _entries(0, 4))
    cache.truncate(2)
    cache.append(_entries(2, 6), _entries(2, 6))
    with pytest.raises(SessionError, match="evicted"):
        cache.truncate(5)


@pytest.mark.parametrize("kind,n", [("full", 13), ("bounded", 5), ("bounded", 29)])
def test_kv_from_tensors_roundtrip(kind, n):
    policy = MemoryPolicy(kind=kind, sink_tokens=2, window_tokens=6)
    ref = KVCache(NKV, D, policy=policy)
    ref.append(_entries(0, n), _entries(0, n))
    out = KVCache.from_tensors(ref.keys, ref.values, policy=policy, n_seen=ref.n_seen)
    torch.testing.assert_close(out.keys, ref.keys, rtol=0, atol=0)
    ref.append(_entries(n, 3), _entries(n, 3))
    out.append(_entries(n, 3), _entries(n, 3))
    torch.testing.assert_close(out.keys, ref.keys, rtol=0, atol=0)
    torch.testing.assert_close(out.values, ref.values, rtol=0, atol=0)


def _state(policy: MemoryPolicy) -> SessionState:
    kv = [KVCache(NKV, D, policy=policy)]
    kv[0].append(_entries(0, 5), _entries(0, 5))
    return SessionState(
        recurrent=[torch.randn(2, 4, 4), torch.randn(2, 4, 4)],
        conv=[torch.randn(6, 3), torch.randn(6, 3)],
        kv=kv,
        n_tokens=5,
        policy=policy,
    )


def test_session_state_clone_is_independent_and_counts_bytes():
    ref = _state(MemoryPolicy())
    out = ref.clone()
    out.recurrent[0].add_(1)
    out.conv[1].zero_()
    out.kv[0].append(_entries(5, 1), _entries(5, 1))
    assert not torch.equal(out.recurrent[0], ref.recurrent[0])
    assert not torch.equal(out.conv[1], ref.conv[1])
    assert len(ref.kv[0]) == 5 and len(out.kv[0]) == 6
    expected = 2 * 2 * 4 * 4 * 4 + 2 * 6 * 3 * 4 + ref.kv[0].nbytes()
    assert ref.nbytes() == expected


def test_session_state_export_roundtrip():
    ref = _state(MemoryPolicy(kind="bounded", sink_tokens=1, window_tokens=3))
    out = SessionState.from_tensors(ref.tensors(), ref.metadata())
    assert out.n_tokens == 5 and out.policy == ref.policy
    for a, b in zip(ref.recurrent + ref.conv, out.recurrent + out.conv):
        torch.testing.assert_close(b, a, rtol=0, atol=0)
    torch.testing.assert_close(out.kv[0].keys, ref.kv[0].keys, rtol=0, atol=0)
    with pytest.raises(SessionError, match="conv.1"):
        SessionState.from_tensors({k: v for k, v in ref.tensors().items() if k != "conv.1"}, ref.metadata())


def test_memory_policy_rejects_bad_values():
    with pytest.raises(ValueError, match="'sliding'"):
        MemoryPolicy(kind="sliding")
    with pytest.raises(ValueError, match="window_tokens"):
        MemoryPolicy(kind="bounded", window_tokens=0)
