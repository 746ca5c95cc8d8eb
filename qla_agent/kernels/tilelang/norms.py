"""TileLang row kernels: RMSNorm (zero-centred or plain, optionally fused with the residual add, or
followed by the attention heads' partial RoPE), the GDN output's gated RMSNorm, SiLU(gate) * up, and the
gated attention output x * sigmoid(gate). Math and rounding as `reference_norms`.

Bandwidth-bound design, one launch per call: a CTA holds a block of whole rows in registers (fp32)
and touches global memory only in 16-byte vectors; a row's sum of squares is an all-reduce over the
threads that share the row (warp shuffles, plus shared memory when a row spans several warps).
Norm inputs are read as [tokens, heads, D] (heads = 1 when all rows are one stride apart) with token
and head strides that are multiples of ROW_ALIGN elements, passed as stride // ROW_ALIGN so the
compiler can prove every row start 16-byte aligned: q/k slices of a fused projection and the z
columns of the GDN projection are read without a copy, as are the attention output in the layout SDPA
returns and the gate columns of q_proj that gate it. Token and head counts are runtime values
(T.dynamic), so a new prompt length never recompiles, and nothing reads a device value on the host.
"""

import functools
import math
from dataclasses import dataclass

import tilelang.language as T
import torch

from qla_agent.kernels.tilelang import build
from qla_agent.kernels.tilelang.build import ROW_ALIGN, VECTOR_BYTES

MAX_GRID_Y = 65535  # heads per token (grid y)
MAX_THREADS = 256
# Vectors of 16 bytes each thread holds: 2 hides latency, more than 8 spills registers (fp32 rows).
MIN_VECTORS, MAX_VECTORS = 2, 8
SILU_MUL_THREADS = 128
SILU_MUL_MAX_COLS = 1024


@dataclass(frozen=True, slots=True)
class RowBlock:
    """A norm CTA's rows: block_tokens tokens x block_heads heads of [tokens, heads, D] inputs."""

    block_tokens: int
    block_heads: int
    threads: int


# Cached: `supports` and the launcher's config both ask on every call, with a few distinct arguments per model.
@functools.cache
def row_block(dim: int, itemsize: int, heads: int) -> RowBlock | None:
    """The CTA for rows of `dim` elements of `itemsize` bytes, or None when there is no regular one.

    Rows of up to 128 vectors (a power of two) share a 128-thread CTA, several rows per pass; longer
    rows get the largest power-of-two thread group (32 ... 256) that divides their vector count, so
    every thread holds the same number of whole vectors of a row. The rows are as many heads of a token
    as divide `heads`, then tokens (so only a few compile variants, whatever the token count).
    """
    per_vector = VECTOR_BYTES // itemsize
    if dim % ROW_ALIGN:
        return None
    vectors = dim // per_vector
    if vectors <= 128 and 128 % vectors == 0:
        rows, threads = 128 // vectors * MIN_VECTORS, 128
    else:
        threads = min(vectors & -vectors, MAX_THREADS)
        if threads < 32 or vectors // threads > MAX_VECTORS:
            return None
        rows = max(1, MIN_VECTORS // (vectors // threads))
    block_heads = math.gcd(heads, rows)
    return RowBlock(block_tokens=rows // block_heads, block_heads=block_heads, threads=threads)


# Cached as row_block.
@functools.cache
def rope_block(dim: int, rotary_dim: int, itemsize: int, heads: int) -> RowBlock | None:
    """The CTA of rms_norm_rope: row_block's threads, with rows enough that the rotated dims [0, R) and
    the passed dims [R, D) of the CTA's rows each split into whole 16-byte vectors over the threads.
    None when there is no such block within MAX_VECTORS per thread."""
    base, per_vector = row_block(dim, itemsize, 1), VECTOR_BYTES // itemsize
    if base is None or rotary_dim % (2 * per_vector):
        return None
    rows, unit = base.block_tokens, base.threads * per_vector
    while rows * rotary_dim % unit or rows * (dim - rotary_dim) % unit:
        rows *= 2
    if rows * dim // unit > MAX_VECTORS:
        return None
    block_heads = math.gcd(heads, rows)
    return RowBlock(block_tokens=rows // block_heads, block_heads=block_heads, threads=base.threads)


@functools.cache
def silu_mul_tile(dim: int, itemsize: int) -> tuple[int, int] | None:
    """(block_tokens, block_cols) of the SiLU-mul CTA: the largest power-of-two column block up to
    SILU_MUL_MAX_COLS that divides `dim`, and enough rows for MIN_VECTORS vectors per thread."""
    if dim % ROW_ALIGN:
        return None
    per_vector = VECTOR_BYTES // itemsize
    cols = min(dim & -dim, SILU_MUL_MAX_COLS)
    return max(1, SILU_MUL_THREADS * MIN_VECTORS * per_vector // cols), cols


@dataclass(frozen=True, slots=True)
class RmsNormConfig:
    """One RMSNorm specialisation (token and head counts, eps and row strides are runtime values)."""

    dim: int
    dtype: str  # x, y and the sum s
    weight_dtype: str
    residual_dtype: str | None  # add_rms_norm: s = x + residual is normalised and returned; None: plain
    zero_centered: bool  # y = rms(x) * (1 + w), else rms(x) * w
    block: RowBlock


@dataclass(frozen=True, slots=True)
class GatedRmsNormConfig:
    """One gated-RMSNorm specialisation (token and head counts, eps and row strides are runtime values)."""

    dim: int
    dtype: str  # x and y
    gate_dtype: str  # z
    weight_dtype: str
    product_dtype: str  # w * rms(x): the promotion of the weight and x dtypes, rounded there
    block: RowBlock


@dataclass(frozen=True, slots=True)
class SiluMulConfig:
    """One SiLU(gate) * up specialisation (the row count and row strides are runtime values)."""

    dim: int
    dtype: str
    block_tokens: int
    block_cols: int
    threads: int = SILU_MUL_THREADS


@dataclass(frozen=True, slots=True)
class SigmoidGateMulConfig:
    """One x * sigmoid(gate) specialisation (token and head counts and row strides are runtime values)."""

    dim: int
    dtype: str  # x, gate and y
    block: RowBlock


@dataclass(frozen=True, slots=True)
class RmsNormRopeConfig:
    """One zero-centred RMSNorm + RoPE specialisation (token and head counts, eps and x's strides are
    runtime values)."""

    dim: int
    rotary_dim: int
    dtype: str  # x, cos, sin and y
    weight_dtype: str
    block: RowBlock


@functools.cache
def rms_norm_config(
    dim: int, heads: int, dtype: torch.dtype, weight_dtype: torch.dtype, residual_dtype: torch.dtype | None, *,
    zero_centered: bool,
) -> RmsNormConfig:
    """The specialisation for [tokens, heads, dim] rows (residual_dtype None: no residual add)."""
    tl = build.TORCH_TO_TL
    return RmsNormConfig(
        dim=dim, dtype=tl[dtype], weight_dtype=tl[weight_dtype],
        residual_dtype=None if residual_dtype is None else tl[residual_dtype], zero_centered=zero_centered,
        block=row_block(dim, dtype.itemsize, heads),
    )


@functools.cache
def gated_rms_norm_config(
    dim: int, heads: int, dtype: torch.dtype, gate_dtype: torch.dtype, weight_dtype: torch.dtype
) -> GatedRmsNormConfig:
    """The specialisation for [tokens, heads, dim] rows of x (dtype) and z (gate_dtype)."""
    tl = build.TORCH_TO_TL
    return GatedRmsNormConfig(
        dim=dim, dtype=tl[dtype], gate_dtype=tl[gate_dtype], weight_dtype=tl[weight_dtype],
        product_dtype=tl[torch.promote_types(weight_dtype, dtype)], block=row_block(dim, dtype.itemsize, heads),
    )


@functools.cache
def rms_norm_rope_config(
    dim: int, rotary_dim: int, heads: int, dtype: torch.dtype, weight_dtype: torch.dtype
) -> RmsNormRopeConfig:
    """The specialisation for [tokens, heads, dim] rows rotated on their first rotary_dim dims."""
    tl = build.TORCH_TO_TL
    return RmsNormRopeConfig(
        dim=dim, rotary_dim=rotary_dim, dtype=tl[dtype], weight_dtype=tl[weight_dtype],
        block=rope_block(dim, rotary_dim, dtype.itemsize, heads),
    )


@functools.cache
def silu_mul_config(dim: int, dtype: torch.dtype) -> SiluMulConfig:
    block_tokens, block_cols = silu_mul_tile(dim, dtype.itemsize)
    return SiluMulConfig(dim=dim, dtype=build.TORCH_TO_TL[dtype], block_tokens=block_tokens, block_cols=block_cols)


@functools.cache
def sigmoid_gate_mul_config(dim: int, heads: int, dtype: torch.dtype) -> SigmoidGateMulConfig:
    """The specialisation for [tokens, heads, dim] rows of x and gate (one dtype)."""
    return SigmoidGateMulConfig(dim=dim, dtype=build.TORCH_TO_TL[dtype], block=row_block(dim, dtype.itemsize, heads))


def _rows_of(dtype: str, dim: int, tokens, heads, token_stride8, head_stride8):
    """A kernel input [tokens, heads, D] whose token and head strides are ROW_ALIGN times a runtime value."""
    return T.StridedTensor((tokens, heads, dim), (token_stride8 * ROW_ALIGN, head_stride8 * ROW_ALIGN, 1), dtype)


@T.macro
def _load_rows(x, xf, bt, bh, nt, nh, block: RowBlock, dim: int):
    """xf = the CTA's rows of x in fp32 (0 past the last token or head)."""
    BT, BH = block.block_tokens, block.block_heads
    for t, h, j in T.Parallel(BT, BH, dim):
        inside = bt * BT + t < nt and bh * BH + h < nh
        xf[t, h, j] = T.if_then_else(inside, T.cast(x[bt * BT + t, bh * BH + h, j], "float32"), 0.0)


@T.macro
def _row_rsqrt(xf, rstd, eps, dim: int, block: RowBlock):
    """rstd[t, h] = rsqrt(mean(xf[t, h, :]^2) + eps), as torch: the fp32 sum of squares times 1/dim in fp32."""
    squares = T.alloc_fragment((block.block_tokens, block.block_heads, dim), "float32")
    for t, h, j in T.Parallel(block.block_tokens, block.block_heads, dim):
        squares[t, h, j] = xf[t, h, j] * xf[t, h, j]
    T.reduce_sum(squares, rstd, dim=2)
    for t, h in T.Parallel(block.block_tokens, block.block_heads):
        rstd[t, h] = T.rsqrt(rstd[t, h] * T.float32(1.0 / dim) + eps)


@T.macro
def _weight_rows(weight, wf, block: RowBlock, dim: int, plus_one: bool):
    """wf[t, h, :] = weight (+ 1) in fp32. Staged in registers apart from the stores, so an fp32 weight
    does not narrow the 16-byte vectors of bf16/fp16 rows."""
    for t, h, j in T.Parallel(block.block_tokens, block.block_heads, dim):
        wf[t, h, j] = 1.0 + T.cast(weight[j], "float32") if plus_one else T.cast(weight[j], "float32")


def rms_norm_program(cfg: RmsNormConfig):
    """The prim_func: grid (tokens / block_tokens, heads / block_heads), block.threads threads; inputs
    [nt, nh, D] with strided tokens and heads, y (and s) contiguous [nt, nh, D]."""
    f32, D, BT, BH = "float32", cfg.dim, cfg.block.block_tokens, cfg.block.block_heads
    nt, nh = T.dynamic("nt"), T.dynamic("nh")
    sxt, sxh, srt, srh = (T.dynamic(name, "int32") for name in ("sxt8", "sxh8", "srt8", "srh8"))
    residual_dtype = cfg.residual_dtype or cfg.dtype

    @T.macro
    def normalise(xf, weight, y, bh, bt, eps):
        rstd = T.alloc_fragment((BT, BH), f32)
        wf = T.alloc_fragment((BT, BH, D), f32)
        _row_rsqrt(xf, rstd, eps, D, cfg.block)
        _weight_rows(weight, wf, cfg.block, D, cfg.zero_centered)
        for t, h, j in T.Parallel(BT, BH, D):
            if bt * BT + t < nt and bh * BH + h < nh:
                y[bt * BT + t, bh * BH + h, j] = T.cast(xf[t, h, j] * rstd[t, h] * wf[t, h, j], cfg.dtype)

    @T.prim_func
    def rms_norm(
        x: _rows_of(cfg.dtype, D, nt, nh, sxt, sxh),
        weight: T.Tensor((D,), cfg.weight_dtype),
        y: T.Tensor((nt, nh, D), cfg.dtype),
        eps: T.float32,
        x_token_stride8: sxt,
        x_head_stride8: sxh,
    ):
        with T.Kernel(T.ceildiv(nt, BT), T.ceildiv(nh, BH), threads=cfg.block.threads) as (bt, bh):
            xf = T.alloc_fragment((BT, BH, D), f32)
            _load_rows(x, xf, bt, bh, nt, nh, cfg.block, D)
            normalise(xf, weight, y, bh, bt, eps)

    @T.prim_func
    def add_rms_norm(
        x: _rows_of(cfg.dtype, D, nt, nh, sxt, sxh),
        residual: _rows_of(residual_dtype, D, nt, nh, srt, srh),
        weight: T.Tensor((D,), cfg.weight_dtype),
        y: T.Tensor((nt, nh, D), cfg.dtype),
        s: T.Tensor((nt, nh, D), cfg.dtype),
        eps: T.float32,
        x_token_stride8: sxt,
        x_head_stride8: sxh,
        residual_token_stride8: srt,
        residual_head_stride8: srh,
    ):
        with T.Kernel(T.ceildiv(nt, BT), T.ceildiv(nh, BH), threads=cfg.block.threads) as (bt, bh):
            total = T.alloc_fragment((BT, BH, D), cfg.dtype)
            xf = T.alloc_fragment((BT, BH, D), f32)
            for t, h, j in T.Parallel(BT, BH, D):
                tok, head = bt * BT + t, bh * BH + h
                both = T.cast(x[tok, head, j], f32) + T.cast(residual[tok, head, j], f32)
                total[t, h, j] = T.if_then_else(tok < nt and head < nh, T.cast(both, cfg.dtype), 0.0)
            # Two loops: one shared with the fp32 copy would narrow the store to 8 bytes.
            for t, h, j in T.Parallel(BT, BH, D):
                if bt * BT + t < nt and bh * BH + h < nh:
                    s[bt * BT + t, bh * BH + h, j] = total[t, h, j]
            for t, h, j in T.Parallel(BT, BH, D):
                xf[t, h, j] = T.cast(total[t, h, j], f32)
            normalise(xf, weight, y, bh, bt, eps)

    return rms_norm if cfg.residual_dtype is None else add_rms_norm


def _rounded(value, dtype: str):
    """value (fp32) rounded to `dtype` and back: where torch's op in that dtype rounds."""
    return value if dtype == "float32" else T.cast(T.cast(value, dtype), "float32")


def rms_norm_rope_program(cfg: RmsNormRopeConfig):
    """The prim_func: grid and rows as `rms_norm_program`, cos and sin contiguous [nt, 1, R], y contiguous
    [nt, nh, D]. The normed rows (rounded to the dtype) wait in shared memory, where each rotated
    element finds its partner half a rotation away; the passed dims are copied out in a loop of their own
    so that both loops move whole 16-byte vectors."""
    f32, D, R, BT, BH = "float32", cfg.dim, cfg.rotary_dim, cfg.block.block_tokens, cfg.block.block_heads
    half = R // 2
    nt, nh = T.dynamic("nt"), T.dynamic("nh")
    sxt, sxh = T.dynamic("sxt8", "int32"), T.dynamic("sxh8", "int32")

    @T.prim_func
    def rms_norm_rope(
        x: _rows_of(cfg.dtype, D, nt, nh, sxt, sxh),
        weight: T.Tensor((D,), cfg.weight_dtype),
        cos: T.Tensor((nt, 1, R), cfg.dtype),
        sin: T.Tensor((nt, 1, R), cfg.dtype),
        y: T.Tensor((nt, nh, D), cfg.dtype),
        eps: T.float32,
        x_token_stride8: sxt,
        x_head_stride8: sxh,
    ):
        with T.Kernel(T.ceildiv(nt, BT), T.ceildiv(nh, BH), threads=cfg.block.threads) as (bt, bh):
            xf = T.alloc_fragment((BT, BH, D), f32)
            rstd = T.alloc_fragment((BT, BH), f32)
            wf = T.alloc_fragment((BT, BH, D), f32)
            normed = T.alloc_shared((BT, BH, D), cfg.dtype)
            _load_rows(x, xf, bt, bh, nt, nh, cfg.block, D)
            _row_rsqrt(xf, rstd, eps, D, cfg.block)
            _weight_rows(weight, wf, cfg.block, D, True)
            for t, h, j in T.Parallel(BT, BH, D):
                normed[t, h, j] = T.cast(xf[t, h, j] * rstd[t, h] * wf[t, h, j], cfg.dtype)
            for t, h, j in T.Parallel(BT, BH, D - R):
                if bt * BT + t < nt and bh * BH + h < nh:
                    y[bt * BT + t, bh * BH + h, R + j] = normed[t, h, R + j]
            # side 0: dims [0, R/2) rotate with -(their partner); side 1: [R/2, R) with +(their partner).
            for t, h, side, i in T.Parallel(BT, BH, 2, half):
                tok, head, j = bt * BT + t, bh * BH + h, side * half + i
                if tok < nt and head < nh:
                    value = T.cast(normed[t, h, j], f32)
                    partner = T.cast(normed[t, h, (1 - side) * half + i], f32)
                    rotated = T.if_then_else(side == 0, -partner, partner)
                    cosine = _rounded(value * T.cast(cos[tok, 0, j], f32), cfg.dtype)
                    sine = _rounded(rotated * T.cast(sin[tok, 0, j], f32), cfg.dtype)
                    y[tok, head, j] = T.cast(cosine + sine, cfg.dtype)

    return rms_norm_rope


def gated_rms_norm_program(cfg: GatedRmsNormConfig):
    """The prim_func: grid and rows as `rms_norm_program`; y contiguous [nt, nh, D]."""
    f32, D, BT, BH = "float32", cfg.dim, cfg.block.block_tokens, cfg.block.block_heads
    nt, nh = T.dynamic("nt"), T.dynamic("nh")
    sxt, sxh, szt, szh = (T.dynamic(name, "int32") for name in ("sxt8", "sxh8", "szt8", "szh8"))

    @T.prim_func
    def gated_rms_norm(
        x: _rows_of(cfg.dtype, D, nt, nh, sxt, sxh),
        z: _rows_of(cfg.gate_dtype, D, nt, nh, szt, szh),
        weight: T.Tensor((D,), cfg.weight_dtype),
        y: T.Tensor((nt, nh, D), cfg.dtype),
        eps: T.float32,
        x_token_stride8: sxt,
        x_head_stride8: sxh,
        z_token_stride8: szt,
        z_head_stride8: szh,
    ):
        with T.Kernel(T.ceildiv(nt, BT), T.ceildiv(nh, BH), threads=cfg.block.threads) as (bt, bh):
            xf = T.alloc_fragment((BT, BH, D), f32)
            rstd = T.alloc_fragment((BT, BH), f32)
            wf = T.alloc_fragment((BT, BH, D), f32)
            _load_rows(x, xf, bt, bh, nt, nh, cfg.block, D)
            _row_rsqrt(xf, rstd, eps, D, cfg.block)
            _weight_rows(weight, wf, cfg.block, D, False)
            for t, h, j in T.Parallel(BT, BH, D):
                tok, head = bt * BT + t, bh * BH + h
                if tok < nt and head < nh:
                    normed = _rounded(xf[t, h, j] * rstd[t, h], cfg.dtype)
                    scaled = _rounded(wf[t, h, j] * normed, cfg.product_dtype)
                    gate = T.cast(z[tok, head, j], f32)
                    y[tok, head, j] = T.cast(scaled * (gate / (1.0 + T.exp(-gate))), cfg.dtype)

    return gated_rms_norm


def silu_mul_program(cfg: SiluMulConfig):
    """The prim_func: grid (tokens / block_tokens, D / block_cols), cfg.threads threads; gate and up
    [nt, D] with strided rows, out contiguous [nt, D]."""
    f32, D, BT, BC = "float32", cfg.dim, cfg.block_tokens, cfg.block_cols
    nt = T.dynamic("nt")
    sg, su = T.dynamic("sg8", "int32"), T.dynamic("su8", "int32")

    @T.prim_func
    def silu_mul(
        gate: T.StridedTensor((nt, D), (sg * ROW_ALIGN, 1), cfg.dtype),
        up: T.StridedTensor((nt, D), (su * ROW_ALIGN, 1), cfg.dtype),
        out: T.Tensor((nt, D), cfg.dtype),
        gate_stride8: sg,
        up_stride8: su,
    ):
        with T.Kernel(T.ceildiv(nt, BT), D // BC, threads=cfg.threads) as (bt, bc):
            for t, j in T.Parallel(BT, BC):
                tok, col = bt * BT + t, bc * BC + j
                if tok < nt:
                    g = T.cast(gate[tok, col], f32)
                    # torch: silu in fp32 rounded to the dtype, then the product in fp32 rounded again.
                    activated = T.cast(T.cast(g / (1.0 + T.exp(-g)), cfg.dtype), f32)
                    out[tok, col] = T.cast(activated * T.cast(up[tok, col], f32), cfg.dtype)

    return silu_mul


def sigmoid_gate_mul_program(cfg: SigmoidGateMulConfig):
    """The prim_func: grid and rows as `rms_norm_program` (no reduction: each thread's whole vectors of
    x and gate in, y out); y contiguous [nt, nh, D]."""
    f32, D, BT, BH = "float32", cfg.dim, cfg.block.block_tokens, cfg.block.block_heads
    nt, nh = T.dynamic("nt"), T.dynamic("nh")
    sxt, sxh, sgt, sgh = (T.dynamic(name, "int32") for name in ("sxt8", "sxh8", "sgt8", "sgh8"))

    @T.prim_func
    def sigmoid_gate_mul(
        x: _rows_of(cfg.dtype, D, nt, nh, sxt, sxh),
        gate: _rows_of(cfg.dtype, D, nt, nh, sgt, sgh),
        y: T.Tensor((nt, nh, D), cfg.dtype),
        x_token_stride8: sxt,
        x_head_stride8: sxh,
        gate_token_stride8: sgt,
        gate_head_stride8: sgh,
    ):
        with T.Kernel(T.ceildiv(nt, BT), T.ceildiv(nh, BH), threads=cfg.block.threads) as (bt, bh):
            for t, h, j in T.Parallel(BT, BH, D):
                tok, head = bt * BT + t, bh * BH + h
                if tok < nt and head < nh:
                    g = T.cast(gate[tok, head, j], f32)
                    # torch: sigmoid in fp32 rounded to the dtype, then the product in fp32 rounded again.
                    activated = T.cast(T.cast(1.0 / (1.0 + T.exp(-g)), cfg.dtype), f32)
                    y[tok, head, j] = T.cast(T.cast(x[tok, head, j], f32) * activated, cfg.dtype)

    return sigmoid_gate_mul
