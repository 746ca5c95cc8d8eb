"""Causal depthwise conv1d + SiLU: against torch's conv1d, state carry, one-token updates, varlen."""

import pytest
import torch
import torch.nn.functional as F
from transformers.models.qwen3_5 import modeling_qwen3_5 as hf

from qla_agent.kernels import causal_conv1d, causal_conv1d_update


def _conv_oracle(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x [B,T,C] from a zero start, via torch's grouped conv1d (an independent implementation)."""
    channels, width = weight.shape
    y = F.conv1d(x.transpose(1, 2), weight[:, None, :], padding=width - 1, groups=channels)
    return F.silu(y[:, :, : x.shape[1]]).transpose(1, 2)


def _data(B: int, T: int, C: int, W: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return (
        torch.randn(B, T, C, generator=gen, dtype=torch.float64),
        torch.randn(C, W, generator=gen, dtype=torch.float64),
    )


@pytest.mark.parametrize("B,T,C,W", [(1, 1, 8, 4), (2, 3, 6, 4), (2, 65, 12, 4), (1, 10, 5, 2), (1, 9, 7, 3)],
                         ids=lambda x: str(x))
def test_conv_matches_torch_conv1d_and_returns_last_inputs(B: int, T: int, C: int, W: int) -> None:
    x, weight = _data(B, T, C, W)
    ref = _conv_oracle(x, weight)
    out_y, out_state = causal_conv1d(x, weight)
    assert torch.allclose(ref, out_y, rtol=1e-12, atol=1e-12)
    # The state holds the last W-1 inputs (zeros where the sequence is shorter), oldest first.
    padded = torch.cat([torch.zeros(B, W - 1, C, dtype=x.dtype), x], dim=1)
    assert torch.equal(out_state, padded[:, -(W - 1):].transpose(1, 2))


@pytest.mark.parametrize("t1", [1, 2, 3, 17])
def test_prefill_split_and_updates_equal_whole_sequence(t1: int) -> None:
    x, weight = _data(2, 24, 10, 4, seed=1)
    ref_y, ref_state = causal_conv1d(x, weight)
    y1, state = causal_conv1d(x[:, :t1], weight)
    y2, state = causal_conv1d(x[:, t1:20], weight, conv_state=state)
    pool = torch.zeros(5, 10, 3, dtype=x.dtype)
    slots = torch.tensor([3, 1])
    pool[slots] = state
    ys = [causal_conv1d_update(x[:, t], weight, pool, slots) for t in range(20, 24)]
    out_y = torch.cat([y1, y2, torch.stack(ys, dim=1)], dim=1)
    assert torch.allclose(ref_y, out_y, rtol=1e-12, atol=1e-12)
    assert torch.equal(ref_state, pool[slots])
    assert torch.equal(pool[[0, 2, 4]], torch.zeros(3, 10, 3, dtype=x.dtype))


def test_update_without_slots_uses_first_rows() -> None:
    x, weight = _data(3, 6, 4, 4, seed=2)
    ref_y, ref_state = causal_conv1d(x, weight)
    pool = torch.zeros(4, 4, 3, dtype=x.dtype)
    out = [causal_conv1d_update(x[:, t], weight, pool) for t in range(6)]
    assert torch.allclose(ref_y, torch.stack(out, dim=1), rtol=1e-12, atol=1e-12)
    assert torch.equal(ref_state, pool[:3])
    assert torch.equal(pool[3], torch.zeros(4, 3, dtype=x.dtype))


@pytest.mark.parametrize("cu", [[0, 1, 5, 40], [0, 2, 3, 9, 10]], ids=lambda c: "cu" + "-".join(map(str, c)))
def test_conv_varlen_matches_each_sequence_alone(cu: list[int]) -> None:
    x, weight = _data(1, cu[-1], 6, 4, seed=3)
    state = torch.randn(len(cu) - 1, 6, 3, dtype=x.dtype)
    out_y, out_state = causal_conv1d(x, weight, conv_state=state, cu_seqlens=torch.tensor(cu))
    for n, (start, end) in enumerate(zip(cu, cu[1:])):
        ref_y, ref_state = causal_conv1d(x[:, start:end], weight, conv_state=state[n : n + 1])
        assert torch.equal(ref_y, out_y[:, start:end])
        assert torch.equal(ref_state, out_state[n : n + 1])
    # A nonzero incoming state matters: the first output of each sequence differs from a zero start.
    zero_y, _ = causal_conv1d(x, weight, cu_seqlens=torch.tensor(cu))
    assert not torch.allclose(zero_y[0, cu[:-1]], out_y[0, cu[:-1]])


def test_conv_dtypes() -> None:
    x, weight = _data(1, 12, 8, 4, seed=4)
    x16, w16 = x.to(torch.bfloat16), weight.to(torch.bfloat16)
    out_y, out_state = causal_conv1d(x16, w16)
    assert out_y.dtype == torch.bfloat16 and out_state.dtype == torch.bfloat16
    ref = _conv_oracle(x16.double(), w16.double())
    assert torch.allclose(ref, out_y.double(), rtol=2e-2, atol=2e-2)
    pool = torch.zeros(2, 8, 3, dtype=torch.float32)
    y = causal_conv1d_update(x16[:, 0], w16, pool)
    assert y.dtype == torch.bfloat16 and pool.dtype == torch.float32
    assert torch.equal(pool[0, :, -1], x16[0, 0].float())


def test_conv_matches_transformers_qwen3_5() -> None:
    x, weight = _data(2, 9, 12, 4, seed=5)
    x, weight = x.float(), weight.float()
    ref_y = hf.causal_conv1d_fn(x.transpose(1, 2), weight, activation="silu").transpose(1, 2)
    out_y, out_state = causal_conv1d(x[:, :8], weight)
    assert torch.allclose(ref_y[:, :8], out_y, rtol=1e-5, atol=1e-6)
    # transformers' update takes the token as [N, C, 1] and shifts a state of any width in place.
    hf_state = out_state.clone()
    ref_last = hf.causal_conv1d_update(x[:, 8:9].transpose(1, 2), hf_state, weight, activation="silu")[:, :, 0]
    out_last = causal_conv1d_update(x[:, 8], weight, out_state)
    assert torch.allclose(ref_y[:, 8], out_last, rtol=1e-5, atol=1e-6)
    assert torch.allclose(ref_last, out_last, rtol=1e-5, atol=1e-6)
    assert torch.equal(hf_state, out_state)
