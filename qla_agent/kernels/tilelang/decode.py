"""TileLang GDN decode: one token per sequence on a state pool updated in place, one launch.

Grid (128 / block_v, value heads, tokens). A CTA owns the columns v0 .. v0 + block_v of one
head's state S [128, 128] (`[K, V]`, fp32) for one token: it stages that slice in shared memory
(one vectorised copy), then thread j works on column v0 + j (all 128 rows), so every state element
is read once and written once and no reduction crosses threads. With raw inputs k, q (L2-norm
factors rk, rq; 1 without use_qk_l2norm) and alpha = exp(g):

    pk = S^T k, pq = S^T q, kk = k.k, qq = q.q, kq = k.q     one pass over the column
    u = beta (v - alpha rk pk)                               the delta value
    o = scale rq (alpha pq + u rk kq)                        = S_new^T (scale rq q)
    S_new = alpha S + (rk k) u^T

which is the recurrence's decay, write and read (see ../README.md) with the read expanded so the
column is needed only once. The q, k, v, g, beta rows are read through flat views and a per-token
stride, so slices of a fused projection need no copy; slots may be int32 or int64.
"""

from dataclasses import dataclass

import tilelang.language as T
import torch

from qla_agent.kernels.tilelang import build
from qla_agent.kernels.tilelang.build import HEAD_DIM

L2NORM_EPS = 1e-6


@dataclass(frozen=True, slots=True)
class DecodeConfig:
    """One specialisation of the decode kernel (no batch or pool size: those are runtime values)."""

    key_heads: int
    value_heads: int
    dtype: str  # q/k/v/o dtype
    gate_dtype: str  # g and beta (raw a and b when raw_gates)
    param_dtype: str  # A_log and dt_bias
    slot_dtype: str  # "int32" | "int64"
    raw_gates: bool  # g = -exp(A_log) softplus(a + dt_bias), beta = sigmoid(b)
    l2norm: bool
    scale: float
    block_v: int = 32

    @property
    def threads(self) -> int:
        return max(32, self.block_v)


def program(cfg: DecodeConfig):
    """The prim_func for `cfg`: grid (128 / block_v, value heads, tokens)."""
    dt, f32 = cfg.dtype, "float32"
    Hk, Hv, D, BV = cfg.key_heads, cfg.value_heads, HEAD_DIM, cfg.block_v
    group = Hv // Hk
    scale = float(cfg.scale)
    n = T.dynamic("n")
    npool = T.dynamic("npool")
    lq, lk, lv, lg, lb = (T.dynamic(name) for name in ("lq", "lk", "lv", "lg", "lb"))

    @T.macro
    def gates(g, beta, a_log, dt_bias, bn, bh, sg, sb, alpha, bet):
        if cfg.raw_gates:
            x = T.cast(g[bn * sg + bh], f32) + T.cast(dt_bias[bh], f32)
            softplus = T.if_then_else(x > 20.0, x, T.log1p(T.exp(x)))
            alpha[0] = T.exp(-T.exp(T.cast(a_log[bh], f32)) * softplus)
            bet[0] = T.sigmoid(T.cast(beta[bn * sb + bh], f32))
        else:
            alpha[0] = T.exp(T.cast(g[bn * sg + bh], f32))
            bet[0] = T.cast(beta[bn * sb + bh], f32)

    @T.prim_func
    def gdn_decode(
        q: T.Tensor((lq,), dt),
        k: T.Tensor((lk,), dt),
        v: T.Tensor((lv,), dt),
        g: T.Tensor((lg,), cfg.gate_dtype),
        beta: T.Tensor((lb,), cfg.gate_dtype),
        a_log: T.Tensor((Hv,), cfg.param_dtype),
        dt_bias: T.Tensor((Hv,), cfg.param_dtype),
        state: T.Tensor((npool, Hv, D, D), f32),
        slots: T.Tensor((n,), cfg.slot_dtype),
        o: T.Tensor((n, Hv, D), dt),
        sq: T.int32,
        sk: T.int32,
        sv: T.int32,
        sg: T.int32,
        sb: T.int32,
    ):
        with T.Kernel(D // BV, Hv, n, threads=cfg.threads) as (bv, bh, bn):
            # q and k in static shared memory, the state slice in the (single) dynamic allocation.
            qk_s = T.alloc_shared((2, D), f32, scope="shared")
            s_s = T.alloc_shared((D, BV), f32)
            acc = T.alloc_local((5,), f32)
            alpha = T.alloc_local((1,), f32)
            bet = T.alloc_local((1,), f32)
            norm = T.alloc_local((2,), f32)
            hk = bh // group
            v0 = bv * BV
            slot = slots[bn]
            for i in T.Parallel(D):
                qk_s[0, i] = T.cast(q[bn * sq + hk * D + i], f32)
                qk_s[1, i] = T.cast(k[bn * sk + hk * D + i], f32)
            T.copy(state[slot, bh, 0:D, v0:v0 + BV], s_s)
            for j in T.Parallel(BV):
                gates(g, beta, a_log, dt_bias, bn, bh, sg, sb, alpha, bet)
                for c in T.unroll(5):
                    acc[c] = 0.0
                for i in T.unroll(D):
                    acc[0] += s_s[i, j] * qk_s[1, i]
                    acc[1] += s_s[i, j] * qk_s[0, i]
                    acc[2] += qk_s[1, i] * qk_s[1, i]
                    acc[3] += qk_s[0, i] * qk_s[0, i]
                    acc[4] += qk_s[1, i] * qk_s[0, i]
                if cfg.l2norm:
                    norm[0] = T.rsqrt(acc[2] + L2NORM_EPS)
                    norm[1] = T.rsqrt(acc[3] + L2NORM_EPS)
                else:
                    norm[0] = 1.0
                    norm[1] = 1.0
                u = bet[0] * (T.cast(v[bn * sv + bh * D + v0 + j], f32) - alpha[0] * norm[0] * acc[0])
                o[bn, bh, v0 + j] = T.cast(scale * norm[1] * (alpha[0] * acc[1] + u * norm[0] * acc[4]), dt)
                for i in T.unroll(D):
                    state[slot, bh, i, v0 + j] = alpha[0] * s_s[i, j] + norm[0] * qk_s[1, i] * u

    return gdn_decode


def pick_block_v(units: int, sm_count: int) -> int:
    """State columns per CTA for N x Hv = units: the widest slice that still gives every SM a CTA."""
    for block_v in (128, 64, 32):
        if units * (HEAD_DIM // block_v) >= sm_count:
            return block_v
    return 16


def decode_config(
    *, key_heads: int, value_heads: int, dtype: torch.dtype, gate_dtype: torch.dtype, param_dtype: torch.dtype,
    slot_dtype: torch.dtype, raw_gates: bool, l2norm: bool, scale: float, block_v: int,
) -> DecodeConfig:
    """The kernel config of one call (a pure function of shapes and flags, for precompiling too)."""
    tl = build.TORCH_TO_TL
    return DecodeConfig(
        key_heads=key_heads, value_heads=value_heads, dtype=tl[dtype], gate_dtype=tl[gate_dtype],
        param_dtype=tl[param_dtype], slot_dtype=tl[slot_dtype], raw_gates=raw_gates,
        l2norm=l2norm, scale=float(scale), block_v=block_v,
    )


def launch_args(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor, state: torch.Tensor,
    slots: torch.Tensor, o: torch.Tensor, A_log: torch.Tensor | None, dt_bias: torch.Tensor | None,
) -> tuple:
    """The kernel's arguments in order: flat q, k, v, g, beta, gate parameters, state, slots, o, strides."""
    (qf, (sq,)), (kf, (sk,)), (vf, (sv,)) = (build.flat_view(x, 2) for x in (q, k, v))
    (gf, (sg,)), (bf, (sb,)) = (build.flat_view(x, 1) for x in (g, beta))
    if A_log is None:
        a_log = dtb = build.placeholder((v.shape[1],), torch.float32, q.device)
    else:
        a_log, dtb = A_log.contiguous(), dt_bias.to(A_log.dtype).contiguous()
    return qf, kf, vf, gf, bf, a_log, dtb, state, slots.contiguous(), o, sq, sk, sv, sg, sb


def gdn_decode(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
    state: torch.Tensor, slots: torch.Tensor, *, scale: float | None = None, use_qk_l2norm: bool = False,
    A_log: torch.Tensor | None = None, dt_bias: torch.Tensor | None = None, block_v: int | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """One GDN step per sequence on CUDA; arguments and result as `qla_agent.kernels.gdn_decode`.

    q, k [N,Hk,128]; v [N,Hv,128] (bf16/fp16/fp32); g, beta [N,Hv]; state [S,Hv,128,128] fp32,
    contiguous, updated in place at rows slots [N] -> o [N,Hv,128] in v.dtype (written into `out`
    when given: contiguous, that shape and dtype). block_v overrides the tile (benchmarking).
    """
    count, key_heads, dim = q.shape
    value_heads = v.shape[1]
    arch, sm_count = build.device_facts(q.device)
    cfg = decode_config(
        key_heads=key_heads, value_heads=value_heads, dtype=v.dtype, gate_dtype=g.dtype,
        param_dtype=torch.float32 if A_log is None else A_log.dtype, slot_dtype=slots.dtype,
        raw_gates=A_log is not None, l2norm=use_qk_l2norm, scale=dim**-0.5 if scale is None else scale,
        block_v=block_v or pick_block_v(count * value_heads, sm_count),
    )
    kernel = build.launcher(program, cfg, arch)
    o = torch.empty((count, value_heads, dim), dtype=v.dtype, device=q.device) if out is None else out
    if count == 0:
        return o
    kernel(*launch_args(q, k, v, g, beta, state, slots, o, A_log, dt_bias))
    return o
