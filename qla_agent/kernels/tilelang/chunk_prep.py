"""Chunk-parallel stage of the GDN prefill: gates, L2 norms, the UT solve and the intra-chunk scores.

One CTA per (64-token chunk, value head), all chunks independent. Per chunk it writes, for the
sequential stage (`chunk_scan`):

    tmat [c, h, 64, 64]  T = (I + L)^-1 diag(beta), L[r, j] = beta_r exp(gamma_r - gamma_j) kn_r.kn_j (j < r)
    pmat [c, h, 64, 64]  P = scale (qn kn^T * M), M[r, j] = exp(gamma_r - gamma_j) for j <= r
    vecs [c, h, 4, 64]   a_r = exp(gamma_r) rk_r, o_r = scale exp(gamma_r) rq_r,
                         d_r = exp(gamma_C - gamma_r) rk_r, and lambda = exp(gamma_C) in every column

with kn = rk * k, qn = rq * q (rk, rq the L2-norm factors, 1 without use_qk_l2norm) and gamma the
in-chunk cumsum of the log decays. Rows past the end of a sequence get g = beta = 0 and zero q, k,
which makes them inert: their T, P and vector entries are exactly 0. The triangular inverse is
blocked: 16x16 diagonal blocks by forward substitution on CUDA cores (D), then
(I + L)^-1 = D (I + M)^-1 with M = L_off D strictly block-lower, (I + M)^-1 = I - M + M^2 - M^3,
evaluated by Horner's rule with fp16 tensor-core GEMMs (fp32 accumulation).
"""

from dataclasses import dataclass

import tilelang
import tilelang.language as T

from qla_agent.kernels.tilelang.build import HEAD_DIM

CHUNK = 64
LOG2E = 1.4426950408889634


@dataclass(frozen=True, slots=True)
class PrepConfig:
    """One specialisation of the chunk-parallel stage (no sequence lengths: those are runtime values)."""

    key_heads: int
    value_heads: int
    dtype: str  # q/k dtype and the dtype of tmat/pmat: "bfloat16" | "float16"
    gate_dtype: str  # dtype of g and beta (raw a and b when raw_gates)
    param_dtype: str  # dtype of A_log and dt_bias
    raw_gates: bool  # g = -exp(A_log) softplus(a + dt_bias), beta = sigmoid(b)
    l2norm: bool
    varlen: bool
    scale: float


def program(cfg: PrepConfig):
    """The prim_func for `cfg`: grid (chunks, value heads), 128 threads."""
    dt, f32 = cfg.dtype, "float32"
    Hk, Hv, D, C = cfg.key_heads, cfg.value_heads, HEAD_DIM, CHUNK
    group = Hv // Hk
    scale = float(cfg.scale)
    ntok = T.dynamic("ntok")
    nchunk = T.dynamic("nchunk")
    ncu = T.dynamic("ncu")

    @T.macro
    def _chunk_body(q, k, g, beta, a_log, dt_bias, tmat, pmat, vecs, bc, bh, bos, eos, tx):
        hk = bh // group
        k_s = T.alloc_shared((C, D), dt)
        q_s = T.alloc_shared((C, D), dt)
        g_s = T.alloc_shared((C,), f32)
        b_s = T.alloc_shared((C,), f32)
        gam_s = T.alloc_shared((C,), f32)
        rk_s = T.alloc_shared((C,), f32)
        rq_s = T.alloc_shared((C,), f32)
        l_s = T.alloc_shared((C, C), f32)
        lo_s = T.alloc_shared((C, C), "float16")
        d_s = T.alloc_shared((C, C), "float16")
        m_s = T.alloc_shared((C, C), "float16")
        z_s = T.alloc_shared((C, C), "float16")
        out_s = T.alloc_shared((C, C), dt)
        kk = T.alloc_fragment((C, C), f32)
        qk = T.alloc_fragment((C, C), f32)
        acc = T.alloc_fragment((C, C), f32)
        xs = T.alloc_local((16,), f32)

        for r, c in T.Parallel(C, D):
            if bos + r < eos:
                k_s[r, c] = k[bos + r, hk, c]
                q_s[r, c] = q[bos + r, hk, c]
            else:
                k_s[r, c] = T.cast(0, dt)
                q_s[r, c] = T.cast(0, dt)
        for r in T.Parallel(C):
            if bos + r < eos:
                if cfg.raw_gates:
                    x = T.cast(g[bos + r, bh], f32) + T.cast(dt_bias[bh], f32)
                    softplus = T.if_then_else(x > 20.0, x, T.log(1.0 + T.exp(x)))
                    g_s[r] = -T.exp(T.cast(a_log[bh], f32)) * softplus
                    b_s[r] = T.sigmoid(T.cast(beta[bos + r, bh], f32))
                else:
                    g_s[r] = T.cast(g[bos + r, bh], f32)
                    b_s[r] = T.cast(beta[bos + r, bh], f32)
            else:
                g_s[r] = 0.0
                b_s[r] = 0.0
        T.cumsum(src=g_s, dst=gam_s, dim=0)
        if cfg.l2norm:
            sq = T.alloc_fragment((C, D), f32)
            ss = T.alloc_fragment((C,), f32)
            for r, c in T.Parallel(C, D):
                sq[r, c] = T.cast(k_s[r, c], f32) * T.cast(k_s[r, c], f32)
            T.reduce_sum(sq, ss, dim=1)
            for r in T.Parallel(C):
                rk_s[r] = T.rsqrt(ss[r] + 1e-6)
            for r, c in T.Parallel(C, D):
                sq[r, c] = T.cast(q_s[r, c], f32) * T.cast(q_s[r, c], f32)
            T.reduce_sum(sq, ss, dim=1)
            for r in T.Parallel(C):
                rq_s[r] = T.rsqrt(ss[r] + 1e-6)
        else:
            for r in T.Parallel(C):
                rk_s[r] = 1.0
                rq_s[r] = 1.0

        T.gemm(k_s, k_s, kk, transpose_B=True, clear_accum=True)
        T.gemm(q_s, k_s, qk, transpose_B=True, clear_accum=True)
        for r, c in T.Parallel(C, C):
            decay = T.exp2(T.min(gam_s[r] - gam_s[c], 0.0) * LOG2E)
            lval = T.if_then_else(c < r, b_s[r] * kk[r, c] * rk_s[r] * rk_s[c] * decay, 0.0)
            l_s[r, c] = lval
            lo_s[r, c] = T.cast(T.if_then_else(r // 16 > c // 16, lval, 0.0), "float16")
            d_s[r, c] = T.cast(0, "float16")
            out_s[r, c] = T.cast(T.if_then_else(c <= r, scale * qk[r, c] * rq_s[r] * rk_s[c] * decay, 0.0), dt)
        T.copy(out_s, pmat[bc, bh, 0:C, 0:C])

        # Inverses of the four 16x16 unit-lower diagonal blocks, one column per thread.
        if tx < C:
            blk = tx // 16
            col = tx % 16
            for i in T.unroll(16):
                xs[i] = T.if_then_else(i == col, 1.0, 0.0)
                for j in T.unroll(16):
                    if j < i:
                        xs[i] = xs[i] - l_s[blk * 16 + i, blk * 16 + j] * xs[j]
            for i in T.unroll(16):
                d_s[blk * 16 + i, blk * 16 + col] = T.cast(xs[i], "float16")

        # M = L_off D; Z = I - M (I - M (I - M)); X = D Z = (I + L)^-1.
        T.gemm(lo_s, d_s, acc, clear_accum=True)
        for r, c in T.Parallel(C, C):
            m_s[r, c] = T.cast(acc[r, c], "float16")
            z_s[r, c] = T.cast(T.if_then_else(r == c, 1.0, 0.0) - acc[r, c], "float16")
        for _ in T.serial(2):
            T.gemm(m_s, z_s, acc, clear_accum=True)
            for r, c in T.Parallel(C, C):
                z_s[r, c] = T.cast(T.if_then_else(r == c, 1.0, 0.0) - acc[r, c], "float16")
        T.gemm(d_s, z_s, acc, clear_accum=True)
        for r, c in T.Parallel(C, C):
            out_s[r, c] = T.cast(acc[r, c] * b_s[c], dt)
        T.copy(out_s, tmat[bc, bh, 0:C, 0:C])

        for r in T.Parallel(C):
            valid = bos + r < eos
            e = T.exp2(gam_s[r] * LOG2E)
            vecs[bc, bh, 0, r] = T.if_then_else(valid, e * rk_s[r], 0.0)
            vecs[bc, bh, 1, r] = T.if_then_else(valid, scale * e * rq_s[r], 0.0)
            vecs[bc, bh, 2, r] = T.if_then_else(valid, T.exp2((gam_s[C - 1] - gam_s[r]) * LOG2E) * rk_s[r], 0.0)
            vecs[bc, bh, 3, r] = T.exp2(gam_s[C - 1] * LOG2E)

    @T.prim_func
    def chunk_prep(
        q: T.Tensor((ntok, Hk, D), dt),
        k: T.Tensor((ntok, Hk, D), dt),
        g: T.Tensor((ntok, Hv), cfg.gate_dtype),
        beta: T.Tensor((ntok, Hv), cfg.gate_dtype),
        a_log: T.Tensor((Hv,), cfg.param_dtype),
        dt_bias: T.Tensor((Hv,), cfg.param_dtype),
        cu_seqlens: T.Tensor((ncu,), "int32"),
        tmat: T.Tensor((nchunk, Hv, C, C), dt),
        pmat: T.Tensor((nchunk, Hv, C, C), dt),
        vecs: T.Tensor((nchunk, Hv, 4, C), f32),
        seq_len: T.int32,
    ):
        with T.Kernel(nchunk, Hv, threads=128) as (bc, bh):
            tx = T.get_thread_binding()
            bos = T.alloc_var("int32")
            eos = T.alloc_var("int32")
            pos = T.alloc_var("int32")
            found = T.alloc_var("int32")
            bos = 0
            eos = 0
            pos = 0
            found = 0
            if cfg.varlen:
                # Walk the sequences to find the one holding flat chunk bc (no host-side index).
                done = T.alloc_var("int32")
                done = 0
                for i in T.serial(ncu - 1):
                    s0 = cu_seqlens[i]
                    s1 = cu_seqlens[i + 1]
                    n = T.ceildiv(s1 - s0, C)
                    if found == 0 and bc < done + n:
                        found = 1
                        bos = s0 + (bc - done) * C
                        eos = s1
                    done = done + n
            else:
                per_seq = T.ceildiv(seq_len, C)
                found = 1
                bos = (bc // per_seq) * seq_len + (bc % per_seq) * C
                eos = (bc // per_seq) * seq_len + seq_len
            if found == 1:
                _chunk_body(q, k, g, beta, a_log, dt_bias, tmat, pmat, vecs, bc, bh, bos, eos, tx)

    return chunk_prep
