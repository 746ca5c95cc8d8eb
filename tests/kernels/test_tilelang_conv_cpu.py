"""The TileLang conv programs (prefill and one-token update) run on the CPU through TileLang's C backend.

As for decode (test_tilelang_decode_cpu.py): the real launchers and prim_funcs, lowered for the CPU
with fp32 tensors, against the fp64 reference. C = 300 is not a multiple of the 256-channel tile and
T = 70 ends in a partial 64-token tile and a partial 8-token run; x is a strided slice of a wider
projection, as in the model. The prefill reads x in vectors of 2 fp32 channels by default (C = 301:
1; 16-byte tiles: 4); the slice's layout decides whether the launcher passes a view or a contiguous copy, and both
run here. What the C backend cannot show (vector widths, registers) is read in the compile tests.
"""

import pytest
import torch

from qla_agent.kernels import reference_conv
from tests.kernels.gdn_inputs import rel_err

pytest.importorskip("tilelang")

C, W = 300, 4


def _projection_slice(*lead: int, seed: int, channels: int = C, start: int = 5, extra: int = 11) -> torch.Tensor:
    """x [*lead, channels] as columns start .. start + channels of a wider fp32 tensor (strided rows)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*lead, channels + extra, generator=gen)[..., start : start + channels]


def _weight_and_state(rows: int, seed: int, channels: int = C) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(channels, W, generator=gen) / 2, torch.randn(rows, channels, W - 1, generator=gen)


# (start column, extra columns) of the slice: 16-byte aligned rows (a view), or not (a copy).
LAYOUTS = {"view": (4, 12), "copy": (5, 11), "contiguous": (0, 0)}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_vectors_views_aligned_rows_and_copies_others(layout: str) -> None:
    """The launcher reads the model's slice in place: rows whose stride and start are whole vectors."""
    from qla_agent.kernels.tilelang.conv import _vectors

    start, extra = LAYOUTS[layout]
    x = _projection_slice(2, 5, seed=0, start=start, extra=extra)
    vectors, sxb, sxt = _vectors(x, 4)
    assert (vectors.data_ptr() == x.data_ptr()) == (layout != "copy")
    rows = [vectors[(b * sxb + t * sxt) // 4 :][: C // 4].flatten() for b in range(2) for t in range(5)]
    assert torch.equal(torch.stack(rows), x.reshape(10, C))


@pytest.mark.parametrize("layout", ["view", "copy"])
@pytest.mark.parametrize("seqlen", [1, 2, 70], ids=lambda t: f"T{t}")
@pytest.mark.parametrize("with_state", [True, False], ids=["state", "nostate"])
def test_conv_program_matches_reference(c_kernels, seqlen: int, with_state: bool, layout: str) -> None:
    """B=2 sequences of `seqlen` tokens; T < W-1 makes the final state mix old state and new inputs."""
    from qla_agent.kernels.tilelang.conv import causal_conv1d

    start, extra = LAYOUTS[layout]
    x = _projection_slice(2, seqlen, seed=seqlen, start=start, extra=extra)
    weight, state = _weight_and_state(2, seed=3)
    state = state if with_state else None
    ref_y, ref_state = reference_conv.causal_conv1d(x, weight, conv_state=state)
    ref64_y, _ = reference_conv.causal_conv1d(
        x.double(), weight.double(), conv_state=None if state is None else state.double()
    )
    out_y, out_state = causal_conv1d(x, weight, conv_state=state)
    assert rel_err(ref64_y, out_y) < 1e-6
    assert rel_err(ref_y, out_y) < 1e-6
    assert torch.equal(ref_state, out_state), "the final state is a copy of inputs: it must be exact"


@pytest.mark.parametrize("channels", [302, 301], ids=lambda c: f"C{c}")
def test_conv_program_narrow_vectors(c_kernels, channels: int) -> None:
    """C = 302 and 301 are read in vectors of 2 and 1 channels (the default 8 bytes)."""
    from qla_agent.kernels.tilelang.conv import causal_conv1d

    x = _projection_slice(2, 70, seed=10, channels=channels)
    weight, state = _weight_and_state(2, seed=11, channels=channels)
    ref_y, ref_state = reference_conv.causal_conv1d(x, weight, conv_state=state)
    out_y, out_state = causal_conv1d(x, weight, conv_state=state)
    assert rel_err(ref_y, out_y) < 1e-6
    assert torch.equal(ref_state, out_state)


@pytest.mark.parametrize("slot_dtype", [torch.int64, torch.int32, None], ids=["int64", "int32", "noslots"])
def test_conv_update_program_matches_reference(c_kernels, slot_dtype: torch.dtype | None) -> None:
    from qla_agent.kernels.tilelang.conv import causal_conv1d_update

    x = _projection_slice(3, seed=4)
    weight, pool = _weight_and_state(6, seed=5)
    slots = None if slot_dtype is None else torch.tensor([4, 0, 2], dtype=slot_dtype)
    ref_pool, out_pool = pool.clone(), pool.clone()
    ref_y = reference_conv.causal_conv1d_update(x, weight, ref_pool, slots)
    out_y = causal_conv1d_update(x, weight, out_pool, slots)
    assert rel_err(ref_y, out_y) < 1e-6
    assert torch.equal(ref_pool, out_pool), "updated rows are copies of inputs; other rows untouched"
    assert not torch.equal(out_pool, pool)


def test_conv_prefill_then_updates_equals_one_prefill(c_kernels) -> None:
    """Kernel prefill of 40 tokens, then 5 kernel updates == reference prefill of 45 tokens."""
    from qla_agent.kernels.tilelang.conv import causal_conv1d, causal_conv1d_update

    x = _projection_slice(1, 45, seed=6)
    weight, state = _weight_and_state(1, seed=7)
    ref_y, ref_state = reference_conv.causal_conv1d(x, weight, conv_state=state)
    head_y, pool = causal_conv1d(x[:, :40], weight, conv_state=state)
    steps = [causal_conv1d_update(x[:, t], weight, pool) for t in range(40, 45)]
    assert rel_err(ref_y, torch.cat([head_y, torch.stack(steps, dim=1)], dim=1)) < 1e-6
    assert torch.equal(ref_state, pool)


# Sequence starts inside 8-token runs and 64-token tiles, on run starts (8, 16, 32), in the W-1 tokens
# before a run (a run's first taps), several in one run; 20 sequences take five binary-search steps.
VARLEN_LENS = [(1, 2, 40, 3, 33), (8, 1, 7, 16, 2, 30), (3, 1, 9, 2, 6, 1, 1, 5, 8, 4, 2, 7, 1, 3, 9, 2, 2, 6, 1, 4)]


@pytest.mark.parametrize("lens", VARLEN_LENS, ids=lambda lens: f"N{len(lens)}")
@pytest.mark.parametrize("with_state", [True, False], ids=["state", "nostate"])
def test_varlen_conv_program_matches_reference(c_kernels, with_state: bool, lens: tuple[int, ...]) -> None:
    """Packed sequences: runs and tiles straddle sequence starts, and sequences shorter than W-1 take
    taps (and final-state values) from their own state row."""
    from qla_agent.kernels.tilelang.conv import causal_conv1d

    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
    x = _projection_slice(1, sum(lens), seed=8)
    weight, state = _weight_and_state(len(lens), seed=9)
    state = state if with_state else None
    ref_y, ref_state = reference_conv.causal_conv1d(x, weight, conv_state=state, cu_seqlens=cu)
    out_y, out_state = causal_conv1d(x, weight, conv_state=state, cu_seqlens=cu.long())
    assert rel_err(ref_y, out_y) < 1e-6
    assert torch.equal(ref_state, out_state)


# Tile overrides: the kernel as first measured (16-byte vectors, 64-token tiles, channel-by-channel SiLU),
# 16-token runs, 4-token runs with 128-channel tiles, one CTA per SM.
TILES = {
    "measured": {"vector_bytes": 16, "block_t": 64, "min_blocks": 1, "split_silu": False},
    "run16": {"run": 16, "block_t": 64, "min_blocks": 2},
    "run4": {"run": 4, "block_t": 16, "block_c": 128},
    "v16": {"vector_bytes": 16, "block_t": 64, "min_blocks": 1},
}


@pytest.mark.parametrize("tiles", TILES, ids=str)
def test_conv_tiles_compute_the_same_values(c_kernels, tiles: str) -> None:
    """Every tile computes the default's values bit for bit (packed sequences with states, C = 300)."""
    from qla_agent.kernels.tilelang.conv import causal_conv1d

    lens = VARLEN_LENS[1]
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
    x = _projection_slice(1, sum(lens), seed=12, start=4, extra=12)
    weight, state = _weight_and_state(len(lens), seed=13)
    ref_y, ref_state = reference_conv.causal_conv1d(x, weight, conv_state=state, cu_seqlens=cu)
    default_y, _ = causal_conv1d(x, weight, conv_state=state, cu_seqlens=cu)
    out_y, out_state = causal_conv1d(x, weight, conv_state=state, cu_seqlens=cu, tiles=TILES[tiles])
    assert rel_err(ref_y, out_y) < 1e-6
    assert torch.equal(default_y, out_y)
    assert torch.equal(ref_state, out_state)
