"""GPU tests of the TileLang causal conv (prefill and one-token update) against the fp64 reference.

Inputs are bf16 (as in the model) unless a test says otherwise; the reference runs in fp64 on the same
values, so the error left is fp32 arithmetic plus one rounding of y. Final and updated states are
copies of inputs: exact. The allocator cache is NaN-filled before each run, so an output element
never written fails. The prefill reads x as vectors (8 bytes by default; every tile of the conv
benchmark's variants is checked against the default) straight from the model's slice of its
projection (row stride 8224) or from a contiguous x; a slice that is not vector-aligned is copied.
"""

import pytest
import torch

from benchmarks.kernels_conv import CONV_VARIANTS
from qla_agent import kernels
from qla_agent.kernels import reference_conv
from tests.kernels.gdn_inputs import rel_err

pytestmark = pytest.mark.gpu

BOUND = 8e-3
W = 4


def _poison_allocator() -> None:
    junk = torch.full((64 << 20,), float("nan"), device="cuda")
    del junk


def _inputs(batch: int, seqlen: int, channels: int, seed: int) -> tuple[torch.Tensor, ...]:
    """x [B,T,C] bf16 as a strided slice of a wider projection; weight [C,W]; state [B,C,W-1] (bf16)."""
    gen = torch.Generator().manual_seed(seed)
    wide = torch.randn(batch, seqlen, channels + 64, generator=gen).to("cuda", torch.bfloat16)
    weight = (torch.randn(channels, W, generator=gen) / 2).to("cuda", torch.bfloat16)
    state = torch.randn(batch, channels, W - 1, generator=gen).to("cuda", torch.bfloat16)
    return wide[..., 32 : 32 + channels], weight, state


@pytest.mark.parametrize("channels", [300, 6144], ids=lambda c: f"C{c}")
@pytest.mark.parametrize("seqlen", [1, 2, 63, 1000], ids=lambda t: f"T{t}")
@pytest.mark.parametrize("with_state", [True, False], ids=["state", "nostate"])
def test_conv_matches_reference(channels: int, seqlen: int, with_state: bool) -> None:
    from qla_agent.kernels.tilelang.conv import causal_conv1d

    x, weight, state = _inputs(2, seqlen, channels, seed=seqlen + channels)
    state = state if with_state else None
    ref_y, ref_state = reference_conv.causal_conv1d(
        x.double(), weight.double(), conv_state=None if state is None else state.double()
    )
    _poison_allocator()
    out_y, out_state = causal_conv1d(x, weight, conv_state=state)
    torch.cuda.synchronize()
    assert rel_err(ref_y, out_y) < BOUND
    assert torch.equal(ref_state.to(out_state.dtype), out_state)


@pytest.mark.parametrize("with_state", [True, False], ids=["state", "nostate"])
def test_varlen_conv_matches_reference(with_state: bool) -> None:
    """Packed sequences (1, 2, 63, 64, 65, 300 tokens), cu_seqlens int64 on the device."""
    from qla_agent.kernels.tilelang.conv import causal_conv1d

    lens = (1, 2, 63, 64, 65, 300)
    x, weight, state = _inputs(1, sum(lens), 6144, seed=4)
    state = torch.randn(len(lens), 6144, W - 1).to("cuda", torch.bfloat16) if with_state else None
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], device="cuda")
    ref_y, ref_state = reference_conv.causal_conv1d(
        x.double(), weight.double(), conv_state=None if state is None else state.double(), cu_seqlens=cu
    )
    _poison_allocator()
    out_y, out_state = causal_conv1d(x, weight, conv_state=state, cu_seqlens=cu)
    torch.cuda.synchronize()
    assert rel_err(ref_y, out_y) < BOUND
    assert torch.equal(ref_state.to(out_state.dtype), out_state)


# (start column, row width) of x inside a wider bf16 tensor: the 0.8B model's projection slice (a view),
# a contiguous x, and a slice starting 3 columns in (not 16-byte aligned: the launcher copies it).
LAYOUTS = {"projection": (0, 8224), "contiguous": (0, 6144), "unaligned": (3, 6150)}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("seqlen", [16, 1000, 8192], ids=lambda t: f"T{t}")
def test_conv_layouts_match_reference(layout: str, seqlen: int) -> None:
    """The model's case: x [1, T, 6144] bf16, W = 4, with a state, from each layout."""
    from qla_agent.kernels.tilelang.conv import causal_conv1d

    start, width = LAYOUTS[layout]
    gen = torch.Generator().manual_seed(seqlen)
    x = torch.randn(1, seqlen, width, generator=gen).to("cuda", torch.bfloat16)[..., start : start + 6144]
    weight = (torch.randn(6144, W, generator=gen) / 2).to("cuda", torch.bfloat16)
    state = torch.randn(1, 6144, W - 1, generator=gen).to("cuda", torch.bfloat16)
    ref_y, ref_state = reference_conv.causal_conv1d(x.double(), weight.double(), conv_state=state.double())
    _poison_allocator()
    out_y, out_state = causal_conv1d(x, weight, conv_state=state)
    torch.cuda.synchronize()
    assert rel_err(ref_y, out_y) < BOUND
    assert torch.equal(ref_state.to(out_state.dtype), out_state)


# x dtype, state dtype, bound: fp16 rounds y to 11 bits, fp32 not at all; an fp32 state with bf16 x
# keeps its values exact in the taps and in the final state.
DTYPES = [
    (torch.float16, torch.float16, 1e-3),
    (torch.float32, torch.float32, 1e-5),
    (torch.bfloat16, torch.float32, BOUND),
]


@pytest.mark.parametrize("x_dtype,state_dtype,bound", DTYPES, ids=["fp16", "fp32", "bf16-fp32state"])
def test_conv_dtypes_match_reference(x_dtype: torch.dtype, state_dtype: torch.dtype, bound: float) -> None:
    from qla_agent.kernels.tilelang.conv import causal_conv1d

    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 257, 6144 + 64, generator=gen).to("cuda", x_dtype)[..., 32 : 32 + 6144]
    weight = (torch.randn(6144, W, generator=gen) / 2).to("cuda", x_dtype)
    state = torch.randn(2, 6144, W - 1, generator=gen).to("cuda", state_dtype)
    ref_y, ref_state = reference_conv.causal_conv1d(x.double(), weight.double(), conv_state=state.double())
    _poison_allocator()
    out_y, out_state = causal_conv1d(x, weight, conv_state=state)
    torch.cuda.synchronize()
    assert out_y.dtype == x_dtype and out_state.dtype == state_dtype
    assert rel_err(ref_y, out_y) < bound
    assert torch.equal(ref_state.to(state_dtype), out_state)


def test_varlen_many_short_sequences_match_reference() -> None:
    """40 packed sequences of 1..9 tokens and one of 500: starts inside, at and just before the
    kernel's 8-token runs, several per run, and a binary search six steps deep."""
    from qla_agent.kernels.tilelang.conv import causal_conv1d

    gen = torch.Generator().manual_seed(6)
    lens = (*torch.randint(1, 10, (40,), generator=gen).tolist(), 500)
    x, weight, _ = _inputs(1, sum(lens), 6144, seed=7)
    state = torch.randn(len(lens), 6144, W - 1, generator=gen).to("cuda", torch.bfloat16)
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32, device="cuda")
    ref_y, ref_state = reference_conv.causal_conv1d(
        x.double(), weight.double(), conv_state=state.double(), cu_seqlens=cu
    )
    _poison_allocator()
    out_y, out_state = causal_conv1d(x, weight, conv_state=state, cu_seqlens=cu)
    torch.cuda.synchronize()
    assert rel_err(ref_y, out_y) < BOUND
    assert torch.equal(ref_state.to(out_state.dtype), out_state)


@pytest.mark.parametrize("varlen", [False, True], ids=["dense", "varlen"])
@pytest.mark.parametrize("tiles", CONV_VARIANTS, ids=str)
def test_conv_tiles_compute_the_same_values(tiles: str, varlen: bool) -> None:
    """Every tile the benchmark times computes the default tile's y bit for bit, given the same SiLU
    division (split_silu, fast_silu), and the exact final state (x the projection slice, states)."""
    from qla_agent.kernels.tilelang.conv import causal_conv1d

    lens = (1, 2, 63, 64, 65, 300, 505)
    x, weight, _ = _inputs(1, sum(lens), 6144, seed=8)
    state = torch.randn(len(lens) if varlen else 1, 6144, W - 1).to("cuda", torch.bfloat16)
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], device="cuda") if varlen else None
    ref_y, ref_state = reference_conv.causal_conv1d(
        x.double(), weight.double(), conv_state=state.double(), cu_seqlens=cu
    )
    division = {k: v for k, v in CONV_VARIANTS[tiles].items() if k in ("split_silu", "fast_silu")}
    default_y, _ = causal_conv1d(x, weight, conv_state=state, cu_seqlens=cu, tiles=division or None)
    _poison_allocator()
    out_y, out_state = causal_conv1d(x, weight, conv_state=state, cu_seqlens=cu, tiles=CONV_VARIANTS[tiles])
    torch.cuda.synchronize()
    assert torch.equal(default_y, out_y)
    assert rel_err(ref_y, out_y) < BOUND
    assert torch.equal(ref_state.to(out_state.dtype), out_state)


@pytest.mark.parametrize("slot_dtype", [torch.int64, torch.int32, None], ids=["int64", "int32", "noslots"])
def test_conv_update_matches_reference(slot_dtype: torch.dtype | None) -> None:
    from qla_agent.kernels.tilelang.conv import causal_conv1d_update

    x, weight, pool = _inputs(9, 1, 6144, seed=1)
    x, slots = x[:5, 0], None
    if slot_dtype is not None:
        slots = torch.tensor([8, 0, 3, 5, 1], dtype=slot_dtype, device="cuda")
    ref_pool, out_pool = pool.clone(), pool.clone()
    ref_y = reference_conv.causal_conv1d_update(x.double(), weight.double(), ref_pool, slots)
    _poison_allocator()
    out_y = causal_conv1d_update(x, weight, out_pool, slots)
    torch.cuda.synchronize()
    assert rel_err(ref_y, out_y) < BOUND
    assert torch.equal(ref_pool, out_pool)


def test_conv_prefill_then_updates_equals_one_prefill() -> None:
    from qla_agent.kernels.tilelang.conv import causal_conv1d, causal_conv1d_update

    x, weight, state = _inputs(1, 205, 6144, seed=2)
    ref_y, ref_state = reference_conv.causal_conv1d(x.double(), weight.double(), conv_state=state.double())
    head_y, pool = causal_conv1d(x[:, :200], weight, conv_state=state)
    steps = [causal_conv1d_update(x[:, t], weight, pool) for t in range(200, 205)]
    assert rel_err(ref_y, torch.cat([head_y, torch.stack(steps, dim=1)], dim=1)) < BOUND
    assert torch.equal(ref_state.to(pool.dtype), pool)


def test_dispatch_uses_tilelang_conv() -> None:
    """The public entry points run these kernels for CUDA bf16 inputs (impl="tilelang" must not raise)."""
    x, weight, state = _inputs(1, 100, 6144, seed=3)
    ref_y, ref_state = kernels.causal_conv1d(x, weight, conv_state=state, impl="reference")
    out_y, out_state = kernels.causal_conv1d(x, weight, conv_state=state, impl="tilelang")
    assert rel_err(ref_y, out_y) < BOUND and torch.equal(ref_state, out_state)
    ref_pool, out_pool = state.clone(), state.clone()
    ref_step = kernels.causal_conv1d_update(x[:, 0], weight, ref_pool, impl="reference")
    out_step = kernels.causal_conv1d_update(x[:, 0], weight, out_pool, impl="tilelang")
    assert rel_err(ref_step, out_step) < BOUND and torch.equal(ref_pool, out_pool)
