"""Chunk-parallel stage of the GDN prefill: gates, L2 norms, the UT solve and the intra-chunk scores.

All chunks are independent. Per chunk and value head it writes, for the sequential stage (`chunk_scan`):

    tmat [c, h, 64, 64]  T = (I + L)^-1 diag(beta), L[r, j] = beta_r exp(gamma_r - gamma_j) kn_r.kn_j (j < r)
    pmat [c, h, 64, 64]  P = scale (qn kn^T * M), M[r, j] = exp(gamma_r - gamma_j) for j <= r
    vecs [c, h, 4, 64]   a_r = exp(gamma_r) rk_r, o_r = scale exp(gamma_r) rq_r,
                         d_r = exp(gamma_C - gamma_r) rk_r, and lambda = exp(gamma_C) in every column

with kn = rk * k, qn = rq * q (rk, rq the L2-norm factors, 1 without use_qk_l2norm) and gamma the
in-chunk cumsum of the log decays. Rows past the end of a sequence get g = beta = 0 and zero q, k,
which makes them inert: their T, P and vector entries are exactly 0. The triangular inverse is
blocked: 16x16 diagonal blocks by forward substitution on CUDA cores (D), then
(I + L)^-1 = D (I + M)^-1 with M = L_off D strictly block-lower (M^4 = 0), on fp16 tensor cores
(fp32 accumulation).

Two forms (`PrepConfig.form`) of what the scan gets besides pmat and vecs:
- "t": tmat itself; the scan reads v and computes U = T (V - diag(a) K S) (three GEMMs on its state chain).
- "wy": wk [c, h, 64, 128] = T diag(a) K and u0 [c, h, 64, 128] = T V (input dtype; FLA's w and u), so
  the scan's U = U0 - Wk S is one GEMM. Neither depends on S, so they are chunk-parallel. T diag(a) and
  T go to shared memory in the input dtype and meet k (raw: its norm is in a) and v (loaded as zeros
  past the sequence end) on tensor cores, 64 output columns at a time. Costs per chunk and value head:
  16 KB more read (v) and 24 KB more written (wk and u0 replace tmat), 58.6 KB of shared memory at
  Hv = Hk (three CTAs per SM on the H100 instead of four), 88-90 KB at Hv > Hk (two).

Inputs are read in place: q and k (and v: in `chunk_scan`, or here in the "wy" form) with a runtime
token stride, ROW_ALIGN x a scalar argument (so 16-byte vector loads stay provably aligned), g and beta
with any token stride; the model's column slices of its conv output and gate projection need no copies.

Two designs (`PrepConfig.design`):
- "grouped": one CTA per (chunk, key head) handles the Hv / Hk value heads that share its q and k, so
  the loads, norms, K K^T and Q K^T are done once per key head; all global loads are issued first;
  (I + M)^-1 = (I - M)(I + M^2), so D (I + M)^-1 = Y + Y M^2 with Y = D - D M (M^2 and D M in one phase).
- "per_head": one CTA per (chunk, value head), (I + M)^-1 by Horner's rule (three dependent GEMMs).
"""

from dataclasses import dataclass

import tilelang.language as T

from qla_agent.kernels.tilelang.build import HEAD_DIM

CHUNK = 64
# q, k and v token strides reach the kernels as stride // ROW_ALIGN (elements), so the compiler can
# prove every row start 16-byte aligned and keep 16-byte vector loads.
ROW_ALIGN = 8
LOG2E = 1.4426950408889634
DESIGNS = ("grouped", "per_head")
# What the scan gets: "t" = T itself; "wy" = Wk = T diag(a) K and U0 = T V (see the module docstring).
FORMS = ("t", "wy")
# CTAs per SM the grouped design asks registers for (ptxas caps them at 65536 / (128 x this)).
GROUPED_MIN_BLOCKS = 4
# The "wy" form keeps K and a value tile in shared memory through the inverse (58.6 KB at Hv = Hk):
# three CTAs fit an SM, so it asks for registers for three (168: no spill; 128 spilled 172 bytes).
WY_MIN_BLOCKS = 3


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
    design: str = "grouped"  # one of DESIGNS (see the module docstring)
    form: str = "t"  # one of FORMS; "wy" only with the grouped design


def strided_rows(shape: tuple, stride8, dtype: str):
    """A kernel input [tokens, heads, D], compact but for its token stride: ROW_ALIGN x stride8 (runtime)."""
    return T.StridedTensor(shape, (stride8 * ROW_ALIGN, shape[-1], 1), dtype)


def program(cfg: PrepConfig):
    """The prim_func for `cfg`: grid (chunks, key heads) when grouped, else (chunks, value heads); 128 threads."""
    if cfg.design not in DESIGNS:
        raise ValueError(f"PrepConfig.design must be one of {DESIGNS}, got {cfg.design!r}")
    if cfg.form not in FORMS or (cfg.form == "wy" and cfg.design != "grouped"):
        raise ValueError(f"PrepConfig.form must be one of {FORMS} ('wy' needs design='grouped'), got {cfg.form!r}"
                         f" with design {cfg.design!r}")
    if cfg.design == "grouped":
        return _grouped_program(cfg)
    return _per_head_program(cfg)


@T.macro
def _locate_chunk(cfg: PrepConfig, cu_seqlens, ncu, seq_len, bc, span):
    """span = (first token, end of its sequence, 1) of flat chunk bc, or found = span[2] = 0 for a spare slot."""
    C = CHUNK
    span[0] = 0
    span[1] = 0
    span[2] = 0
    if cfg.varlen:
        # Walk the sequences to find the one holding flat chunk bc (no host-side index).
        done = T.alloc_var("int32")
        done = 0
        for i in T.serial(ncu - 1):
            s0 = cu_seqlens[i]
            s1 = cu_seqlens[i + 1]
            n = T.ceildiv(s1 - s0, C)
            if span[2] == 0 and bc < done + n:
                span[2] = 1
                span[0] = s0 + (bc - done) * C
                span[1] = s1
            done = done + n
    else:
        per_seq = T.ceildiv(seq_len, C)
        span[2] = 1
        span[0] = (bc // per_seq) * seq_len + (bc % per_seq) * C
        span[1] = (bc // per_seq) * seq_len + seq_len


def _kernel(cfg: PrepConfig, heads: int, body, min_blocks: int):
    """The prim_func shared by both designs: finds the chunk's token range, then runs `body` on it.

    Grid (chunk slots, heads); a slot past the last chunk of a varlen batch exits. The form decides the
    outputs `body` gets: (tmat,) for "t", (wk, u0) for "wy" (which also reads v).
    """
    dt, f32 = cfg.dtype, "float32"
    Hk, Hv, D, C = cfg.key_heads, cfg.value_heads, HEAD_DIM, CHUNK
    ntok = T.dynamic("ntok")
    nchunk = T.dynamic("nchunk")
    ncu = T.dynamic("ncu")
    sq, sk, sv, sg, sb = (T.dynamic(name, "int32") for name in ("sq8", "sk8", "sv8", "sg", "sb"))

    if cfg.form == "wy":
        @T.prim_func
        def chunk_prep(
            q: strided_rows((ntok, Hk, D), sq, dt),
            k: strided_rows((ntok, Hk, D), sk, dt),
            v: strided_rows((ntok, Hv, D), sv, dt),
            g: T.StridedTensor((ntok, Hv), (sg, 1), cfg.gate_dtype),
            beta: T.StridedTensor((ntok, Hv), (sb, 1), cfg.gate_dtype),
            a_log: T.Tensor((Hv,), cfg.param_dtype),
            dt_bias: T.Tensor((Hv,), cfg.param_dtype),
            cu_seqlens: T.Tensor((ncu,), "int32"),
            wk: T.Tensor((nchunk, Hv, C, D), dt),
            u0: T.Tensor((nchunk, Hv, C, D), dt),
            pmat: T.Tensor((nchunk, Hv, C, C), dt),
            vecs: T.Tensor((nchunk, Hv, 4, C), f32),
            seq_len: T.int32,
            q_stride8: sq,
            k_stride8: sk,
            v_stride8: sv,
            g_stride: sg,
            beta_stride: sb,
        ):
            with T.Kernel(nchunk, heads, threads=128) as (bc, bh):
                T.annotate_min_blocks_per_sm(min_blocks)
                tx = T.get_thread_binding()
                span = T.alloc_local((3,), "int32")
                _locate_chunk(cfg, cu_seqlens, ncu, seq_len, bc, span)
                if span[2] == 1:
                    body(q, k, v, g, beta, a_log, dt_bias, (wk, u0), pmat, vecs, bc, bh, span[0], span[1], tx)

        return chunk_prep

    @T.prim_func
    def chunk_prep(
        q: strided_rows((ntok, Hk, D), sq, dt),
        k: strided_rows((ntok, Hk, D), sk, dt),
        g: T.StridedTensor((ntok, Hv), (sg, 1), cfg.gate_dtype),
        beta: T.StridedTensor((ntok, Hv), (sb, 1), cfg.gate_dtype),
        a_log: T.Tensor((Hv,), cfg.param_dtype),
        dt_bias: T.Tensor((Hv,), cfg.param_dtype),
        cu_seqlens: T.Tensor((ncu,), "int32"),
        tmat: T.Tensor((nchunk, Hv, C, C), dt),
        pmat: T.Tensor((nchunk, Hv, C, C), dt),
        vecs: T.Tensor((nchunk, Hv, 4, C), f32),
        seq_len: T.int32,
        q_stride8: sq,
        k_stride8: sk,
        g_stride: sg,
        beta_stride: sb,
    ):
        with T.Kernel(nchunk, heads, threads=128) as (bc, bh):
            T.annotate_min_blocks_per_sm(min_blocks)
            tx = T.get_thread_binding()
            span = T.alloc_local((3,), "int32")
            _locate_chunk(cfg, cu_seqlens, ncu, seq_len, bc, span)
            if span[2] == 1:
                body(q, k, None, g, beta, a_log, dt_bias, (tmat,), pmat, vecs, bc, bh, span[0], span[1], tx)

    return chunk_prep


def _per_head_program(cfg: PrepConfig):
    """One CTA per (chunk, value head); (I + M)^-1 = I - M (I - M (I - M)) by Horner's rule."""
    dt, f32 = cfg.dtype, "float32"
    Hk, Hv, D, C = cfg.key_heads, cfg.value_heads, HEAD_DIM, CHUNK
    group = Hv // Hk
    scale = float(cfg.scale)

    @T.macro
    def per_head_body(q, k, v, g, beta, a_log, dt_bias, outs, pmat, vecs, bc, bh, bos, eos, tx):
        tmat = outs[0]
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

    return _kernel(cfg, Hv, per_head_body, 1)


def _grouped_program(cfg: PrepConfig):
    """One CTA per (chunk, key head) computes every value head of the group (see `program`)."""
    dt, f32, f16 = cfg.dtype, "float32", "float16"
    Hk, Hv, D, C = cfg.key_heads, cfg.value_heads, HEAD_DIM, CHUNK
    G = Hv // Hk
    scale = float(cfg.scale)
    # Gate rows per thread (G x 64 gates over 128 threads) and q/k rows per thread (16 lanes a row).
    gate_steps = -(-G * C // 128)
    row_steps = C // 8

    @T.macro
    def load_inputs(q, k, g, beta, a_log, dt_bias, bos, eos, hk, tx, k_s, q_s, g_s, b_s, rk_s, rq_s):
        """Every global load first (q, k, gates and their parameters), then gates and L2 norms from registers."""
        xk = T.alloc_local((row_steps, 8), dt)
        xq = T.alloc_local((row_steps, 8), dt)
        xg = T.alloc_local((gate_steps,), f32)
        xb = T.alloc_local((gate_steps,), f32)
        xdt = T.alloc_local((gate_steps,), f32)
        xa = T.alloc_local((gate_steps,), f32)
        ssk = T.alloc_local((1,), f32)
        ssq = T.alloc_local((1,), f32)
        c0 = (tx % 16) * 8
        for i in T.unroll(row_steps):
            valid = bos + i * 8 + tx // 16 < eos
            for j in T.vectorized(8):
                xk[i, j] = T.if_then_else(valid, k[bos + i * 8 + tx // 16, hk, c0 + j], T.cast(0, dt))
            for j in T.vectorized(8):
                xq[i, j] = T.if_then_else(valid, q[bos + i * 8 + tx // 16, hk, c0 + j], T.cast(0, dt))
        for t in T.unroll(gate_steps):
            e = t * 128 + tx
            valid = T.if_then_else(e < G * C, bos + e % C < eos, False)
            xg[t] = T.if_then_else(valid, T.cast(g[bos + e % C, hk * G + e // C], f32), 0.0)
            xb[t] = T.if_then_else(valid, T.cast(beta[bos + e % C, hk * G + e // C], f32), 0.0)
            if cfg.raw_gates:
                xdt[t] = T.if_then_else(e < G * C, T.cast(dt_bias[hk * G + e // C], f32), 0.0)
                xa[t] = T.if_then_else(e < G * C, T.cast(a_log[hk * G + e // C], f32), 0.0)
        for t in T.unroll(gate_steps):
            e = t * 128 + tx
            if e < G * C:
                valid = bos + e % C < eos
                if cfg.raw_gates:
                    x = xg[t] + xdt[t]
                    softplus = T.if_then_else(x > 20.0, x, T.log(1.0 + T.exp(x)))
                    gate = -T.exp(xa[t]) * softplus
                    g_s[e // C, e % C] = T.if_then_else(valid, gate, 0.0)
                    b_s[e // C, e % C] = T.if_then_else(valid, T.sigmoid(xb[t]), 0.0)
                else:
                    g_s[e // C, e % C] = xg[t]
                    b_s[e // C, e % C] = xb[t]
        for i in T.unroll(row_steps):
            for j in T.vectorized(8):
                k_s[i * 8 + tx // 16, c0 + j] = xk[i, j]
            for j in T.vectorized(8):
                q_s[i * 8 + tx // 16, c0 + j] = xq[i, j]
            if cfg.l2norm:
                ssk[0] = 0.0
                ssq[0] = 0.0
                for j in T.unroll(8):
                    ssk[0] = ssk[0] + T.cast(xk[i, j], f32) * T.cast(xk[i, j], f32)
                    ssq[0] = ssq[0] + T.cast(xq[i, j], f32) * T.cast(xq[i, j], f32)
                # The 16 lanes holding one row reduce by xor shuffles (offsets < 16 stay in the group).
                for s in T.unroll(4):
                    ssk[0] = ssk[0] + T.shfl_xor(ssk[0], 8 >> s)
                    ssq[0] = ssq[0] + T.shfl_xor(ssq[0], 8 >> s)
                if tx % 16 == 0:
                    rk_s[i * 8 + tx // 16] = T.rsqrt(ssk[0] + 1e-6)
                    rq_s[i * 8 + tx // 16] = T.rsqrt(ssq[0] + 1e-6)
            elif tx % 16 == 0:
                rk_s[i * 8 + tx // 16] = 1.0
                rq_s[i * 8 + tx // 16] = 1.0

    @T.macro
    def scores(qk, gam_s, rk_s, rq_s, pmat, bc, hk):
        """P of every value head from one QK^T (the gates differ, the scores do not), stored from registers."""
        for v in T.serial(G):
            for r, c in T.Parallel(C, C):
                decay = T.exp2(T.min(gam_s[v, r] - gam_s[v, c], 0.0) * LOG2E)
                pval = scale * qk[r, c] * rq_s[r] * rk_s[c] * decay
                pmat[bc, hk * G + v, r, c] = T.cast(T.if_then_else(c <= r, pval, 0.0), dt)

    @T.macro
    def inverse(kk_src, gam_s, b_s, rk_s, v, tx, blocks_s, lo_s, d_s, m_s, z_s, acc, acc2, xs):
        """acc2 = X = (I + L)^-1 of the group's v-th value head (T = X diag(beta))."""
        for r, c in T.Parallel(C, C):
            decay = T.exp2(T.min(gam_s[v, r] - gam_s[v, c], 0.0) * LOG2E)
            lval = T.if_then_else(c < r, b_s[v, r] * kk_src[r, c] * rk_s[r] * rk_s[c] * decay, 0.0)
            lo_s[r, c] = T.cast(T.if_then_else(r // 16 > c // 16, lval, 0.0), f16)
            d_s[r, c] = T.cast(0, f16)
            if r // 16 == c // 16:
                blocks_s[r // 16, r % 16, c % 16] = lval
        # D: the four 16x16 unit-lower diagonal blocks inverted, one column per thread.
        if tx < C:
            for i in T.unroll(16):
                xs[i] = T.if_then_else(i == tx % 16, 1.0, 0.0)
                for j in T.unroll(16):
                    if j < i:
                        xs[i] = xs[i] - blocks_s[tx // 16, i, j] * xs[j]
            for i in T.unroll(16):
                d_s[tx // 16 * 16 + i, tx // 16 * 16 + tx % 16] = T.cast(xs[i], f16)
        # M = L_off D (M^4 = 0); (I + L)^-1 = D (I - M)(I + M^2) = Y + Y M^2 with Y = D (I - M).
        # Each write phase reads only fragments: one barrier after each GEMM, none inside.
        # m_s holds M, then M^2; z_s holds I - M, then Y (four buffers keep four CTAs on an SM).
        T.gemm(lo_s, d_s, acc, clear_accum=True)
        for r, c in T.Parallel(C, C):
            m_s[r, c] = T.cast(acc[r, c], f16)
            z_s[r, c] = T.cast(T.if_then_else(r == c, 1.0, 0.0) - acc[r, c], f16)
        T.gemm(m_s, m_s, acc, clear_accum=True)
        T.gemm(d_s, z_s, acc2, clear_accum=True)
        for r, c in T.Parallel(C, C):
            m_s[r, c] = T.cast(acc[r, c], f16)
            z_s[r, c] = T.cast(acc2[r, c], f16)
        T.gemm(z_s, m_s, acc2)

    @T.macro
    def store_t(acc2, b_s, v, tmat, bc, h):
        """tmat[bc, h] = T = X diag(beta), stored from registers."""
        for r, c in T.Parallel(C, C):
            tmat[bc, h, r, c] = T.cast(acc2[r, c] * b_s[v, c], dt)

    @T.macro
    def load_values(v_src, h, bos, eos, tx, v_s):
        """v_s = the chunk's value rows of head h, zero past the sequence end (16-byte loads)."""
        c0 = (tx % 16) * 8
        for i in T.unroll(row_steps):
            valid = bos + i * 8 + tx // 16 < eos
            for j in T.vectorized(8):
                v_s[i * 8 + tx // 16, c0 + j] = T.if_then_else(
                    valid, v_src[bos + i * 8 + tx // 16, h, c0 + j], T.cast(0, dt))

    @T.macro
    def store_wy(acc2, acc, gam_s, b_s, rk_s, v, k_s, v_s, ta_s, tb_s, wk, u0, bc, h):
        """wk[bc, h] = T diag(a) K and u0[bc, h] = T V (a = exp(gamma) rk folds the key norm), from registers,
        64 columns at a time through acc (a [64, 128] fragment would spill at 128 registers)."""
        for r, c in T.Parallel(C, C):
            tb = acc2[r, c] * b_s[v, c]
            ta_s[r, c] = T.cast(tb * T.exp2(gam_s[v, c] * LOG2E) * rk_s[c], dt)
            tb_s[r, c] = T.cast(tb, dt)
        for half in T.unroll(D // C):
            T.gemm(ta_s, k_s[0:C, half * C:half * C + C], acc, clear_accum=True)
            for r, c in T.Parallel(C, C):
                wk[bc, h, r, half * C + c] = T.cast(acc[r, c], dt)
        for half in T.unroll(D // C):
            T.gemm(tb_s, v_s[0:C, half * C:half * C + C], acc, clear_accum=True)
            for r, c in T.Parallel(C, C):
                u0[bc, h, r, half * C + c] = T.cast(acc[r, c], dt)

    @T.macro
    def value_head(kk_src, v, h, gam_s, b_s, rk_s, tx, inner, k_s, v_src, wy, outs, bc, bos, eos):
        """The group's v-th value head h: its inverse, then tmat (form "t") or wk and u0 (form "wy")."""
        if cfg.form == "wy":
            load_values(v_src, h, bos, eos, tx, wy[0])
        inverse(kk_src, gam_s, b_s, rk_s, v, tx, *inner)
        if cfg.form == "wy":
            store_wy(inner[6], inner[5], gam_s, b_s, rk_s, v, k_s, *wy, *outs, bc, h)
        else:
            store_t(inner[6], b_s, v, *outs, bc, h)

    @T.macro
    def grouped_body(q, k, v_src, g, beta, a_log, dt_bias, outs, pmat, vecs, bc, hk, bos, eos, tx):
        k_s = T.alloc_shared((C, D), dt)
        q_s = T.alloc_shared((C, D), dt)
        g_s = T.alloc_shared((G, C), f32)
        b_s = T.alloc_shared((G, C), f32)
        gam_s = T.alloc_shared((G, C), f32)
        rk_s = T.alloc_shared((C,), f32)
        rq_s = T.alloc_shared((C,), f32)
        # Diagonal 16x16 blocks of L, rows padded to 17 so the two blocks a warp reads use different banks.
        blocks_s = T.alloc_shared((4, 16, 17), f32)
        lo_s = T.alloc_shared((C, C), f16)
        d_s = T.alloc_shared((C, C), f16)
        m_s = T.alloc_shared((C, C), f16)
        z_s = T.alloc_shared((C, C), f16)
        qk = T.alloc_fragment((C, C), f32)
        kk = T.alloc_fragment((C, C), f32)
        acc = T.alloc_fragment((C, C), f32)
        acc2 = T.alloc_fragment((C, C), f32)
        xs = T.alloc_local((16,), f32)

        load_inputs(q, k, g, beta, a_log, dt_bias, bos, eos, hk, tx, k_s, q_s, g_s, b_s, rk_s, rq_s)
        T.cumsum(src=g_s, dst=gam_s, dim=1)
        T.gemm(q_s, k_s, qk, transpose_B=True, clear_accum=True)
        scores(qk, gam_s, rk_s, rq_s, pmat, bc, hk)
        T.gemm(k_s, k_s, kk, transpose_B=True, clear_accum=True)
        inner = (blocks_s, lo_s, d_s, m_s, z_s, acc, acc2, xs)
        wy = ()
        if cfg.form == "wy":
            if G == 1:
                wy = (T.alloc_shared((C, D), dt), T.alloc_shared((C, C), dt), T.alloc_shared((C, C), dt))
            else:
                # The allocator shares no buffer used inside the value-head loop, so 16 KB more would not
                # fit sm_86/89: the value tile takes q's buffer (q is dead after Q K^T), T diag(a) and T
                # take lo_s and d_s (dead once Y is formed), viewed as the input dtype.
                wy = (q_s, T.view(lo_s, dtype=dt), T.view(d_s, dtype=dt))
        head = (gam_s, b_s, rk_s, tx, inner, k_s, v_src, wy, outs, bc, bos, eos)
        if G == 1:
            value_head(kk, 0, hk, *head)
        else:
            # K K^T waits in shared memory while the group's value heads take turns with the registers.
            kk_s = T.alloc_shared((C, C), f32)
            T.copy(kk, kk_s)
            for v in T.serial(G):
                value_head(kk_s, v, hk * G + v, *head)
        for v, r in T.Parallel(G, C):
            valid = bos + r < eos
            e = T.exp2(gam_s[v, r] * LOG2E)
            vecs[bc, hk * G + v, 0, r] = T.if_then_else(valid, e * rk_s[r], 0.0)
            vecs[bc, hk * G + v, 1, r] = T.if_then_else(valid, scale * e * rq_s[r], 0.0)
            d_decay = T.exp2((gam_s[v, C - 1] - gam_s[v, r]) * LOG2E)
            vecs[bc, hk * G + v, 2, r] = T.if_then_else(valid, d_decay * rk_s[r], 0.0)
            vecs[bc, hk * G + v, 3, r] = T.exp2(gam_s[v, C - 1] * LOG2E)

    return _kernel(cfg, Hk, grouped_body, WY_MIN_BLOCKS if cfg.form == "wy" else GROUPED_MIN_BLOCKS)
