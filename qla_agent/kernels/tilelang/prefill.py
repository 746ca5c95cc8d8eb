"""Launcher of the TileLang GDN prefill: picks the kernel configs, shapes the buffers, runs two kernels
(three with context parallelism, one for an append: the self-prepping scan or the fused kernel).

No host synchronisation: sequence boundaries are read on the device (the kernels walk cu_seqlens),
and every buffer size follows from tensor shapes alone, so a call can be captured in a CUDA graph.
"""

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from qla_agent.kernels.tilelang import build, chunk_prep, chunk_scan
from qla_agent.kernels.tilelang.build import ROW_ALIGN, VECTOR_BYTES

logger = logging.getLogger(__name__)

CHUNK = chunk_prep.CHUNK
# Context parallelism keeps partitions at least this many chunks long (the warm-up costs a few chunks).
MIN_PART_CHUNKS = 16
# Calls of at most this many tokens (an agent's appends) run the self-prepping scan: one launch, no
# T / P / vector buffers (`chunk_scan.ScanConfig.prep`). Each chunk costs it ~7 us of serial prep, so two
# chunks (~18 us) stay below the host time of two launches; longer calls take the two kernels, whose
# device time grows ~4x slower with T (H100, benchmarks/NOTES.md session 7).
PREPPED_MAX_TOKENS = 128


# Longer calls of at most this many tokens run the fused kernel when its scan CTAs fit the SMs at once
# (`ScanConfig.grid_prep`): one cooperative launch that preps on every CTA, waits at a grid barrier and
# scans. Its device time is the two kernels' plus 0.3-4 us up to here (the barrier; the prep items of more
# than one CTA per SM), so it pays while one launch fewer saves more host time: an append of 256 tokens
# 22.9-26.1 us a call eagerly against 28.3-28.5 (two kernels) and 33 (self-prepping scan); at 512 the two
# kernels are as fast or faster, at 640 fused is 10 us slower on the device (H100, benchmarks/NOTES.md,
# session 8).
FUSED_MAX_TOKENS = 384


def takes_prepped(tokens: int, parts: int, overridden: bool) -> bool:
    """Whether a call of `tokens` tokens in all, scanned in `parts` partitions per sequence, runs the
    self-prepping scan by default (not when its tiles are overridden or it only times the prep)."""
    return parts == 1 and tokens <= PREPPED_MAX_TOKENS and not overridden


def fused_fits(value_heads: int, num_seqs: int, sm_count: int) -> bool:
    """Whether the fused kernel's scan CTAs (two per sequence and value head) are resident at once, one
    per SM: its grid barrier needs the whole grid resident (a cooperative launch refuses more)."""
    return 2 * value_heads * num_seqs <= sm_count


def takes_fused(tokens: int, parts: int, overridden: bool, value_heads: int, num_seqs: int, sm_count: int) -> bool:
    """Whether a call the self-prepping scan does not take runs the fused kernel by default."""
    return (
        parts == 1 and PREPPED_MAX_TOKENS < tokens <= FUSED_MAX_TOKENS and not overridden
        and fused_fits(value_heads, num_seqs, sm_count)
    )


def pick_scan_tile(arch: str, parallel_units: int, sm_count: int) -> dict:
    """chunk_scan's tile for N x Hv = parallel_units: block_v, threads, split_k, value_rows, wgmma.

    Enough units for two CTAs each (every context-parallel call, the runtime's layers): the value-rows
    layout, 64 columns on 4 warps, on wgmma on sm_90a (H200 session 6: 1.14-1.3x over the column layout
    with mma.sync, 1.25-1.45x with wgmma). Fewer: the column layout, 16-column slices on 8 warps with
    the second K tile for the fewest (1.09 ms vs 1.33 on 1x32768 2/8 without splits, H100), else
    32 columns on 4 warps. See benchmarks/NOTES.md.
    """
    if parallel_units * 8 <= sm_count:
        return dict(block_v=16, threads=256, split_k=True)
    if parallel_units * 2 < sm_count:
        return dict(block_v=32, threads=128, split_k=False)
    return dict(block_v=64, threads=128, split_k=False, value_rows=True, wgmma=arch == "sm_90a")


def context_parts(batch: int, seqlen: int, value_heads: int, sm_count: int) -> tuple[int, int]:
    """(partitions per sequence, chunks per partition) of a dense call's scan.

    A sequence is cut in two again while its B x parts x Hv scan units stay within one per SM (so
    `pick_scan_tile` gives each unit two 64-column CTAs: two per SM) and each partition keeps
    MIN_PART_CHUNKS chunks. On 132 SMs: 16/16 -> 8 partitions, 16/32 -> 4, 16/64 -> 2, 2/8 or 4/8 -> 16,
    the best of 1-16 partitions x 16-64 columns in benchmarks/context_sweep.py (NOTES.md, session 5).
    """
    chunks = -(-seqlen // CHUNK)
    parts = 1
    while 2 * batch * parts * value_heads <= sm_count and chunks >= 2 * parts * MIN_PART_CHUNKS:
        parts *= 2
    part_chunks = -(-chunks // parts)
    return -(-chunks // part_chunks), part_chunks


def prefill_configs(
    *, key_heads: int, value_heads: int, dtype: torch.dtype, gate_dtype: torch.dtype, param_dtype: torch.dtype,
    scale: float, raw_gates: bool, l2norm: bool, varlen: bool, has_h0: bool, store_ht: bool, num_seqs: int,
    arch: str, sm_count: int, block_v: int | None = None, scan_overrides: dict | None = None, parts: int = 1,
    prep_overrides: dict | None = None, prepped: bool = False, fused: bool = False,
) -> tuple[chunk_prep.PrepConfig, chunk_scan.ScanConfig]:
    """The prep and scan configs of one call (a pure function of shapes and flags, for precompiling too);
    with parts > 1 partitions per sequence the scan starts from the warm-up's states (`warmup_config`).

    scan_overrides / prep_overrides replace ScanConfig / PrepConfig fields (threads, split_k, wgmma, ...) for
    benchmarking variants: wgmma=False in both runs the portable path on a Hopper card. prepped: the scan
    preps its own chunks (`ScanConfig.prep`; value rows, 64 columns on 128 threads, the prep's CTA).
    """
    tl = build.TORCH_TO_TL
    tl_dtype = tl[dtype]
    prep = chunk_prep.PrepConfig(
        key_heads=key_heads, value_heads=value_heads, dtype=tl_dtype, gate_dtype=tl[gate_dtype],
        param_dtype=tl[param_dtype], raw_gates=raw_gates, l2norm=l2norm, varlen=varlen, scale=float(scale),
        wgmma=arch == "sm_90a",
    )
    prep = dataclasses.replace(prep, **(prep_overrides or {}))
    if prepped or fused:
        tile = dict(block_v=64, threads=128, split_k=False, value_rows=True, wgmma=arch == "sm_90a")
    else:
        tile = pick_scan_tile(arch, num_seqs * parts * value_heads, sm_count)
    if block_v is not None:
        tile["block_v"] = block_v
        if tile.get("value_rows"):  # 16 columns per warp; wgmma takes whole warpgroups
            tile.update(threads=2 * block_v, wgmma=tile["wgmma"] and block_v % 64 == 0)
    scan = chunk_scan.ScanConfig(
        key_heads=key_heads, value_heads=value_heads, dtype=tl_dtype, has_initial_state=has_h0 or parts > 1,
        store_final_state=store_ht, varlen=varlen, **tile,
    )
    scan = dataclasses.replace(scan, **(scan_overrides or {}))
    if prepped:  # the prep's GEMMs are lowered as the scan's (wgmma is a compile-wide switch)
        scan = dataclasses.replace(scan, prep=dataclasses.replace(prep, wgmma=scan.wgmma))
    if fused:
        scan = dataclasses.replace(scan, grid_prep=dataclasses.replace(prep, wgmma=scan.wgmma))
    return prep, scan


def warmup_config(scan: chunk_scan.ScanConfig, has_h0: bool) -> chunk_scan.ScanConfig:
    """The warm-up of a context-parallel call: `scan`'s tile, the call's initial state, states out."""
    return dataclasses.replace(scan, warmup=True, has_initial_state=has_h0, store_final_state=True)


@dataclass(frozen=True, slots=True)
class LaunchPlan:
    """What every call with one signature shares: the kernels' FFI entries (warmup: None without context
    parallelism; prep: None when the scan preps its own chunks) and the stand-ins for arguments the
    specialisation never reads (no offsets, no gate parameters, no state), and the device's SM count (the
    fused kernel's grid)."""

    prep: Callable[..., object] | None
    scan: Callable[..., object]
    warmup: Callable[..., object] | None
    no_offsets: torch.Tensor
    no_params: torch.Tensor
    no_state: torch.Tensor
    sm_count: int


# Call signature -> plan; a handful of entries per process (one per layer shape). The signature
# is the argument tuple of _make_plan, led by the compile function, so kernels a test swaps in
# (tests/kernels/conftest.py) never meet a plan built with others.
_plans: dict[tuple, LaunchPlan] = {}


def _make_plan(
    compiler: Callable[..., object], device: torch.device, hk: int, hv: int, dim: int, dtype: torch.dtype,
    gate_dtype: torch.dtype, param_dtype: torch.dtype | None, scale: float, l2norm: bool, varlen: bool,
    has_h0: bool, store_ht: bool, num_seqs: int, parts: int, block_v: int | None, overrides: tuple,
    prep_overrides: tuple, prepped: bool, fused: bool,
) -> LaunchPlan:
    """Configs, compiled kernels and placeholders for one call signature (param_dtype None: no raw gates)."""
    arch, sm_count = build.device_facts(device)
    prep_cfg, scan_cfg = prefill_configs(
        key_heads=hk, value_heads=hv, dtype=dtype, gate_dtype=gate_dtype,
        param_dtype=torch.float32 if param_dtype is None else param_dtype, scale=scale,
        raw_gates=param_dtype is not None, l2norm=l2norm, varlen=varlen, has_h0=has_h0, store_ht=store_ht,
        num_seqs=num_seqs, arch=arch, sm_count=sm_count, block_v=block_v, scan_overrides=dict(overrides),
        parts=parts, prep_overrides=dict(prep_overrides), prepped=prepped, fused=fused,
    )
    warmup = None if parts == 1 else compiler(chunk_scan.program, warmup_config(scan_cfg, has_h0), arch)
    return LaunchPlan(
        prep=None if prepped or fused else build.entry(compiler(chunk_prep.program, prep_cfg, arch)),
        warmup=None if warmup is None else build.entry(warmup),
        scan=build.entry(compiler(chunk_scan.program, scan_cfg, arch)),
        no_offsets=build.placeholder((2,), torch.int32, device),
        no_params=build.placeholder((hv,), torch.float32, device),
        no_state=build.placeholder((1, hv, dim, dim), torch.float32, device),
        sm_count=sm_count,
    )


def input_strides(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor
) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """(chunk_prep's, chunk_scan's) stride arguments when the kernels can read all five inputs in place,
    else None (`readable_inputs` then copies what they cannot read).

    In place: q, k, v [B, T, H, 128] with batch and token strides that are multiples of ROW_ALIGN (passed
    // ROW_ALIGN), head stride 128, unit column stride and a 16-byte aligned start; g, beta [B, T, Hv]
    with adjacent heads (any batch and token strides). The runtime's q, k, v (column slices of the conv
    output) and raw gates (halves of one projection) all are. Strides of a dim of size 1 are passed as 0:
    the kernels multiply them by index 0 only, and TileLang checks no stride of such a dim.
    """
    batch, seqlen, hk, dim = q.shape
    hv = v.shape[2]
    qb, qt, qh, qc = q.stride()
    kb, kt, kh, kc = k.stride()
    vb, vt, vh, vc = v.stride()
    gb, gt, gc = g.stride()
    bb, bt, bc = beta.stride()
    if batch == 1:
        qb = kb = vb = gb = bb = 0
    if seqlen == 1:
        qt = kt = vt = gt = bt = 0
    # ROW_ALIGN and VECTOR_BYTES are powers of two: an OR of numbers is a multiple of one iff each number is.
    if (
        (qb | qt | kb | kt | vb | vt) % ROW_ALIGN
        or not qc == kc == vc == 1
        or (hk > 1 and not qh == kh == dim)
        or (hv > 1 and not (vh == dim and gc == bc == 1))
        or (q.data_ptr() | k.data_ptr() | v.data_ptr()) % VECTOR_BYTES
    ):
        return None
    qb, qt, kb, kt = qb // ROW_ALIGN, qt // ROW_ALIGN, kb // ROW_ALIGN, kt // ROW_ALIGN
    return (qb, qt, kb, kt, gb, gt, bb, bt), (qb, qt, kb, kt, vb // ROW_ALIGN, vt // ROW_ALIGN)


def _readable_heads(x: torch.Tensor) -> torch.Tensor:
    """x [B, T, H, 128] itself when the kernels can read it in place (`input_strides`), else a compact copy."""
    batch, seqlen, heads, dim = x.shape
    b, t, h, c = x.stride()
    # As in `input_strides`: the stride of a dim of size 1 is never read.
    strides = (b if batch > 1 else 0) | (t if seqlen > 1 else 0)
    if not strides % ROW_ALIGN and not x.data_ptr() % VECTOR_BYTES and c == 1 and (h == dim or heads == 1):
        return x
    return x.clone(memory_format=torch.contiguous_format)


def _readable_gates(x: torch.Tensor) -> torch.Tensor:
    """x [B, T, Hv] itself when its heads are adjacent (or one), else a compact copy."""
    return x if x.stride(2) == 1 or x.shape[2] == 1 else x.clone(memory_format=torch.contiguous_format)


def readable_inputs(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """(q, k, v, g, beta), each one the kernels cannot read in place replaced by a compact copy (one
    launch each; no call of the runtime needs one)."""
    return _readable_heads(q), _readable_heads(k), _readable_heads(v), _readable_gates(g), _readable_gates(beta)


def gdn_prefill(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor, *,
    scale: float | None = None, initial_state: torch.Tensor | None = None, output_final_state: bool = True,
    cu_seqlens: torch.Tensor | None = None, use_qk_l2norm: bool = False,
    A_log: torch.Tensor | None = None, dt_bias: torch.Tensor | None = None, block_v: int | None = None,
    out: torch.Tensor | None = None, final_state_out: torch.Tensor | None = None,
    scan_overrides: dict | None = None, prep_only: bool = False, context_parallel: bool = True,
    parts: int | None = None, prep_overrides: dict | None = None, prepped: bool | None = None,
    fused: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunked gated delta rule on CUDA; arguments and results as `qla_agent.kernels.gdn_prefill`.

    q, k [B,T,Hk,128]; v [B,T,Hv,128] bf16/fp16; g, beta [B,T,Hv]; initial_state [N,Hv,128,128] fp32
    -> o [B,T,Hv,128] in v.dtype, final_state [N,Hv,128,128] fp32 or None. `out` / `final_state_out`
    (contiguous, those shapes and dtypes) receive the results when given; block_v, scan_overrides and prep_overrides
    override the kernel configs (`prefill_configs`), prep_only stops after the first launch (for timing it)
    and returns its outputs (T and P [chunks, Hv, 2, 64, 64], the vectors [chunks, Hv, 4, 64]).
    Per call this runs two kernels (three with context parallelism; one for a call of at most
    FUSED_MAX_TOKENS tokens, `prepped` and `fused`) and makes four allocations (five; two for the
    self-prepping scan) and no views: the
    kernels read q, k, v, g and beta in their own layouts through their strides (`input_strides`; only a
    layout they cannot read is copied) and write o as [B, T, Hv, 128]; everything else is looked up by
    the call's signature.

    context_parallel: a dense call whose B x Hv heads leave SMs idle splits each sequence into
    partitions scanned at once (`context_parts`), after a warm-up launch that finds their starting
    states (`chunk_scan`: exact for heads that do not decay below e^-10 before a partition, else within
    e^-10 of the older state). Only with use_qk_l2norm, as its error bound needs unit-norm keys (and
    0 <= beta <= 2, g <= 0, which the model's gates satisfy). `parts` overrides the partition count
    (benchmarks).

    prepped: run the self-prepping scan, one launch (`chunk_scan.ScanConfig.prep`; sequences whole, no
    context parallelism); None (the default) takes it for a call of at most PREPPED_MAX_TOKENS tokens
    without tile overrides. fused: run the fused kernel, one cooperative launch (`ScanConfig.grid_prep`;
    sequences whole; only while its 2 x Hv x N scan CTAs fit one per SM, `fused_fits`); None (the
    default) takes it for a longer call of at most FUSED_MAX_TOKENS tokens without tile overrides.
    """
    batch, seqlen, hk, dim = q.shape
    hv = v.shape[2]
    device = q.device
    num_seqs = batch if cu_seqlens is None else cu_seqlens.shape[0] - 1
    chunks = -(-seqlen // CHUNK)
    if cu_seqlens is not None:
        parts, part_chunks = 1, 0  # varlen sequences are scanned whole
    elif not (context_parallel and use_qk_l2norm) or prep_only or prepped or fused:
        parts, part_chunks = 1, chunks
    elif parts is None and chunks < 2 * MIN_PART_CHUNKS:
        # Too short to split (`context_parts`): short appends skip the SM count lookup.
        parts, part_chunks = 1, chunks
    elif parts is None:
        parts, part_chunks = context_parts(batch, seqlen, hv, build.device_facts(device)[1])
    else:
        if parts < 1:
            raise ValueError(f"parts must be a positive partition count, got {parts}")
        part_chunks = -(-chunks // parts)
        parts = -(-chunks // part_chunks)
    overridden = bool(prep_only or block_v or scan_overrides or prep_overrides)
    if prep_only and (prepped or fused):
        raise ValueError("prep_only stops after the two-kernel path's first launch; prepped and fused have none")
    if prepped and fused:
        raise ValueError("prepped and fused are two different one-launch kernels: ask for one")
    if prepped is None:
        prepped = not fused and takes_prepped(batch * seqlen, parts, overridden)
    if fused is None:
        # The SM count is looked up only for a call in the fused kernel's range.
        fused = not prepped and PREPPED_MAX_TOKENS < batch * seqlen <= FUSED_MAX_TOKENS and takes_fused(
            batch * seqlen, parts, overridden, hv, num_seqs, build.device_facts(device)[1]
        )
    elif fused and not fused_fits(hv, num_seqs, build.device_facts(device)[1]):
        raise ValueError(
            f"fused needs its 2 x {hv} value heads x {num_seqs} sequences scan CTAs resident at once, one per SM: "
            f"this GPU has {build.device_facts(device)[1]}; leave fused=None to let the launcher choose"
        )
    key = (
        build.compiled, device, hk, hv, dim, q.dtype, g.dtype, None if A_log is None else A_log.dtype,
        dim**-0.5 if scale is None else scale, use_qk_l2norm, cu_seqlens is not None, initial_state is not None,
        output_final_state, num_seqs, parts, block_v,
        tuple(sorted(scan_overrides.items())) if scan_overrides else (),
        tuple(sorted(prep_overrides.items())) if prep_overrides else (), prepped, fused,
    )
    plan = _plans.get(key)
    if plan is None:
        plan = _plans[key] = _make_plan(*key)

    strides = input_strides(q, k, v, g, beta)
    if strides is None:
        q, k, v, g, beta = readable_inputs(q, k, v, g, beta)
        strides = input_strides(q, k, v, g, beta)
    prep_strides, scan_strides = strides
    if cu_seqlens is None:
        cu = plan.no_offsets
        # Each sequence is cut into its own chunks.
        num_chunks = batch * chunks
    else:
        cu = cu_seqlens if cu_seqlens.dtype == torch.int32 else cu_seqlens.to(torch.int32)
        # Upper bound on the chunk count that needs no look at the lengths: each sequence adds < 1 chunk.
        num_chunks = seqlen // CHUNK + num_seqs
    if A_log is None:
        a_log = dtb = plan.no_params
    else:
        a_log = A_log.contiguous()
        dtb = (dt_bias if dt_bias.dtype == A_log.dtype else dt_bias.to(A_log.dtype)).contiguous()
    if plan.prep is not None or fused:
        # new_empty with sizes as separate ints: a third cheaper than torch.empty(shape, dtype=, device=).
        tpmat = q.new_empty(num_chunks, hv, 2, CHUNK, CHUNK)
        vecs = plan.no_state.new_empty(num_chunks, hv, 4, CHUNK)
        if not fused:
            plan.prep(q, k, g, beta, a_log, dtb, cu, tpmat, vecs, seqlen, *prep_strides)
        if prep_only:
            return tpmat, vecs

    o = v.new_empty(batch, seqlen, hv, dim) if out is None else out
    if initial_state is None:
        h0 = plan.no_state
    elif initial_state.dtype == torch.float32:
        h0 = initial_state.contiguous()
    else:
        h0 = initial_state.float().contiguous()
    if not output_final_state:
        ht = plan.no_state
    elif final_state_out is not None:
        ht = final_state_out
    elif initial_state is not None:
        ht = torch.empty_like(h0)
    else:
        ht = plan.no_state.new_empty(num_seqs, hv, dim, dim)
    if plan.warmup is not None:
        starts = plan.no_state.new_empty(batch * parts, hv, dim, dim)
        plan.warmup(k, v, tpmat, vecs, h0, starts, seqlen, batch * parts, parts, part_chunks, *scan_strides[2:])
        h0 = starts
    if fused:
        grid = max(2 * hv * num_seqs, min(num_chunks * hk, plan.sm_count))
        plan.scan(
            q, k, v, g, beta, a_log, dtb, cu, tpmat, vecs, h0, o, ht, seqlen, num_seqs, grid, *scan_strides,
            *prep_strides[4:],
        )
    elif plan.prep is None:
        plan.scan(q, k, v, g, beta, a_log, dtb, h0, cu, o, ht, seqlen, num_seqs, *scan_strides, *prep_strides[4:])
    else:
        plan.scan(q, k, v, tpmat, vecs, h0, cu, o, ht, seqlen, num_seqs * parts, parts, part_chunks, *scan_strides)
    return o, (ht if output_final_state else None)
