"""The context-parallel prefill's approximation, checked in float64 on the CPU.

The TileLang warm-up (`chunk_scan`, `ScanConfig.warmup`) starts each partition from the state the
recurrence reaches over a window of chunks before it, from zero, the window going back until the
chunks' decays multiply below exp(WARMUP_LOG_DECAY) or to the sequence start (then from h0). Here the
same rule drives the fp64 reference per head and partition, so these tests pin the rule itself: the
error it admits is far below bf16 resolution for decaying heads and zero for a head that never
decays. (The kernels' own agreement with the reference is tested on the GPU.)
"""

import pytest
import torch

from qla_agent.kernels import reference
from tests.kernels.gdn_inputs import GdnShape, gdn_inputs, rel_err

pytest.importorskip("tilelang")

CHUNK = 64


def window_start(g: torch.Tensor, end: int) -> int:
    """First chunk of the warm-up window that ends at chunk `end`, for one head's g [T] (the kernel's walk)."""
    from qla_agent.kernels.tilelang.chunk_scan import MIN_CHUNK_DECAY, WARMUP_LOG_DECAY

    log_decay = 0.0
    for chunk in range(end - 1, -1, -1):
        decay = torch.exp(g[chunk * CHUNK:(chunk + 1) * CHUNK].sum()).clamp_min(MIN_CHUNK_DECAY)
        log_decay += float(torch.log(decay))
        if log_decay <= WARMUP_LOG_DECAY:
            return chunk
    return 0


def partitioned(x: dict[str, torch.Tensor], parts: int, part_chunks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Outputs and final state of B = 1 inputs (Hk = Hv) scanned as `parts` partitions from warm-up states."""
    heads, seqlen = x["v"].shape[2], x["v"].shape[1]
    outs, final = [], []
    for h in range(heads):
        one = {n: x[n][:, :, h:h + 1] for n in ("q", "k", "v", "g", "beta")}
        h0 = x["initial_state"][:, h:h + 1]
        pieces = []
        for p in range(parts):
            begin, end = p * part_chunks * CHUNK, min((p + 1) * part_chunks * CHUNK, seqlen)
            start = window_start(one["g"][0, :, 0], p * part_chunks) if p else 0
            state = h0 if start == 0 else None
            if start * CHUNK < begin:
                window = {n: t[:, start * CHUNK:begin] for n, t in one.items()}
                _, state = reference.gdn_chunked(**window, initial_state=state, use_qk_l2norm=True)
            part = {n: t[:, begin:end] for n, t in one.items()}
            o, state = reference.gdn_chunked(**part, initial_state=state, use_qk_l2norm=True)
            pieces.append(o)
        outs.append(torch.cat(pieces, dim=1))
        final.append(state)
    return torch.cat(outs, dim=2), torch.cat(final, dim=1)


@pytest.mark.parametrize("still_head", [False, True], ids=["decaying", "one-head-never-decays"])
def test_warm_started_partitions_match_the_whole_sequence(still_head: bool) -> None:
    from qla_agent.kernels.tilelang.prefill import context_parts

    shape = GdnShape(B=1, T=4100, Hk=2, Hv=2, K=128, V=64)
    x = gdn_inputs(shape, seed=3)
    if still_head:
        x["g"][..., 0] = 0.0
    parts, part_chunks = context_parts(1, shape.T, shape.Hv, sm_count=8)
    assert (parts, part_chunks) == (4, 17)
    whole_o, whole_ht = reference.gdn_chunked(
        *(x[n] for n in ("q", "k", "v", "g", "beta")), initial_state=x["initial_state"], use_qk_l2norm=True
    )
    o, ht = partitioned(x, parts, part_chunks)
    # The dropped history weighs at most e^-10 = 4.5e-5 of the state where a window starts (measured 1.7e-6;
    # a bound of e^-5 would give 2.1e-4 here, e^-3 2.9e-3).
    assert rel_err(whole_o, o) < 4.5e-5 and rel_err(whole_ht, ht) < 4.5e-5
    last_start = 3 * part_chunks
    # gdn_inputs' fast head (~0.16 a token, ~10 a chunk) needs a chunk or two of warm-up.
    assert last_start - 3 <= window_start(x["g"][0, :, 1], last_start) < last_start
    if still_head:
        # Its windows reach back to the sequence start and its h0: the same recurrence, to rounding.
        assert window_start(x["g"][0, :, 0], last_start) == 0
        assert rel_err(whole_o[:, :, 0], o[:, :, 0]) < 1e-12
    else:
        # The slow head (~0.005 a token) needs ~30 chunks: a window, not the whole history.
        assert 0 < window_start(x["g"][0, :, 0], last_start) < last_start - 3
