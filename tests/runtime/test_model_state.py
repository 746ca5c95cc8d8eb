"""Session-state semantics of HybridModel: split prefill, decode, batching, forks, bounded memory."""

import pytest
import torch

from qla_agent.runtime.loader import load_model
from qla_agent.runtime.state import KVCache, MemoryPolicy, SessionState
from tests.tiny_models import write_tiny_checkpoint

FAMILIES = ("qwen3_5", "qwen3_next", "qwen3_5_moe")


@pytest.fixture(scope="module", params=FAMILIES)
def model(request, tmp_path_factory):
    path = write_tiny_checkpoint(tmp_path_factory.mktemp(request.param), request.param, seed=5)
    return load_model(path, device="cpu", progress=False)


def _ids(n: int, seed: int, vocab: int) -> torch.Tensor:
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed))


def _close(out: torch.Tensor, ref: torch.Tensor) -> None:
    # fp32 round-off differs between chunkings (transformers itself differs by ~7e-5 relative here, and
    # a one-row GEMM takes another BLAS path than a many-row one: up to ~1.1e-4 seen); a wrong state is O(1).
    torch.testing.assert_close(out, ref, rtol=0, atol=3e-4 * ref.abs().max().item())


@pytest.mark.parametrize("split", [1, 5, 64, 69], ids=lambda s: f"split{s}")
def test_prefill_all_equals_prefill_part_then_rest(model, split):
    ids = _ids(70, 0, model.config.vocab_size)
    ref = model.prefill(ids, model.new_state(), all_logits=True)
    state = model.new_state()
    out = torch.cat([model.prefill(ids[:split], state, all_logits=True),
                     model.prefill(ids[split:], state, all_logits=True)])
    _close(out, ref)
    assert state.n_tokens == 70


def test_prefill_all_equals_prefill_part_then_decode(model):
    ids = _ids(30, 1, model.config.vocab_size)
    ref = model.prefill(ids, model.new_state(), all_logits=True)
    state = model.new_state()
    out = [model.prefill(ids[:10], state, all_logits=True)]
    out += [model.decode(ids[i : i + 1], [state]) for i in range(10, 30)]
    _close(torch.cat(out), ref)
    assert state.n_tokens == 30 and len(state.kv[0]) == 30


def test_prefill_last_logits_equal_all_logits_row(model):
    ids = _ids(9, 2, model.config.vocab_size)
    ref = model.prefill(ids, model.new_state(), all_logits=True)[-1]
    out = model.prefill(ids, model.new_state())
    assert out.shape == (model.config.vocab_size,)
    _close(out, ref)


def test_batched_decode_equals_each_session_alone(model):
    vocab = model.config.vocab_size
    prompts = [_ids(n, 10 + n, vocab) for n in (3, 11, 6)]
    steps = _ids(3 * 5, 3, vocab).view(5, 3)
    batch = [model.new_state() for _ in prompts]
    alone = [model.new_state() for _ in prompts]
    for p, b, a in zip(prompts, batch, alone):
        model.prefill(p, b)
        model.prefill(p, a)
    for step in steps:
        out = model.decode(step, batch)
        ref = torch.stack([model.decode(step[j : j + 1], [alone[j]])[0] for j in range(3)])
        _close(out, ref)
    for b, a in zip(batch, alone):
        assert b.n_tokens == a.n_tokens
        for x, y in zip(b.recurrent + b.conv, a.recurrent + a.conv):
            _close(x, y)


def test_fork_and_export_continue_like_the_original(model):
    vocab = model.config.vocab_size
    state = model.new_state()
    model.prefill(_ids(12, 4, vocab), state)
    fork = state.clone()
    saved = SessionState.from_tensors(state.tensors(), state.metadata())
    nxt = _ids(4, 5, vocab)
    ref = model.prefill(nxt, state, all_logits=True)
    _close(model.prefill(nxt, fork, all_logits=True), ref)
    _close(model.prefill(nxt, saved, all_logits=True), ref)


def test_bounded_policy_matches_full_until_eviction_and_stays_flat(model):
    vocab = model.config.vocab_size
    policy = MemoryPolicy(kind="bounded", sink_tokens=2, window_tokens=8)
    ids = _ids(40, 6, vocab)
    full, bounded = model.new_state(), model.new_state(policy)
    ref = model.prefill(ids[:10], full, all_logits=True)
    out = model.prefill(ids[:10], bounded, all_logits=True)
    _close(out, ref)
    sizes = []
    for i in range(10, 40):
        logits = model.decode(ids[i : i + 1], [bounded])
        assert torch.isfinite(logits).all()
        sizes.append(bounded.nbytes())
    assert len(set(sizes)) == 1
    assert len(bounded.kv[0]) == 10 and bounded.n_tokens == 40
    # Past the window the bounded session sees less context, so its logits differ from the full one.
    full_logits = [model.decode(ids[i : i + 1], [full]) for i in range(10, 40)]
    assert not torch.allclose(full_logits[-1], logits)


def test_bounded_decode_attends_to_sinks_and_window(model):
    """After eviction a decoded token sees the sinks and the last `window` tokens (itself included)."""
    vocab, sink = model.config.vocab_size, 2
    policy = MemoryPolicy(kind="bounded", sink_tokens=sink, window_tokens=8)
    ids = _ids(30, 7, vocab)
    bounded = model.new_state(policy)
    model.prefill(ids[:20], bounded)
    for i in range(20, 24):
        # Oracle: a full-policy copy holding exactly what the bounded query will see besides itself.
        oracle = bounded.clone()
        oracle.kv = [
            KVCache.from_tensors(torch.cat([c.keys[:, :sink], c.keys[:, sink + 1 :]], dim=1),
                                 torch.cat([c.values[:, :sink], c.values[:, sink + 1 :]], dim=1))
            for c in bounded.kv
        ]
        ref = model.decode(ids[i : i + 1], [oracle])
        out = model.decode(ids[i : i + 1], [bounded])
        _close(out, ref)
        assert len(bounded.kv[0]) == sink + 8


def test_decode_rejects_bad_batches(model):
    state = model.new_state()
    model.prefill(torch.tensor([1, 2]), state)
    with pytest.raises(ValueError, match="2 token ids for 1 session"):
        model.decode(torch.tensor([1, 2]), [state])
    with pytest.raises(ValueError, match="same session state twice"):
        model.decode(torch.tensor([1, 2]), [state, state])
    with pytest.raises(ValueError, match="1-D"):
        model.prefill(torch.tensor([[1, 2]]), state)
