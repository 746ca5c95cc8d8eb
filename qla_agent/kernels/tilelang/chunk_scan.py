"""Sequential stage of the GDN prefill: the state recurrence over chunks and the output.

One CTA per (sequence, value head, slice of `block_v` state columns); it walks the sequence's chunks
in order with the fp32 state slice S [128, block_v] in registers. With T, P and the vectors from
`chunk_prep` (see there), per chunk of 64 tokens:

    W = V - diag(a) (K S)                  a = exp(gamma) rk
    U = T W                                the delta values (FLA's v_new)
    O = diag(o) (Q S) + P U                o = scale exp(gamma) rq
    S = lambda S + K^T diag(d) U           d = exp(gamma_C - gamma) rk, lambda = exp(gamma_C)

K S, Q S and K^T (dU) run on tensor cores with S rounded to the input dtype (as FLA does with h).
Rows past the end of the sequence carry a = o = d = 0 and zero columns of T and P, so the garbage
loaded there never reaches S or a stored output. q, k and v are read through their token strides
(`chunk_prep.strided_rows`).
"""

from dataclasses import dataclass

import tilelang.language as T

from qla_agent.kernels.tilelang.build import HEAD_DIM
from qla_agent.kernels.tilelang.chunk_prep import CHUNK, strided_rows


@dataclass(frozen=True, slots=True)
class ScanConfig:
    """One specialisation of the sequential stage."""

    key_heads: int
    value_heads: int
    dtype: str  # q/k/v/o dtype: "bfloat16" | "float16"
    has_initial_state: bool
    store_final_state: bool
    varlen: bool
    block_v: int = 64
    threads: int = 128
    num_stages: int = 1
    # A second K tile for the state update: the first one's last use is then at the top of a chunk,
    # so its prefetch for the next chunk overlaps this chunk's work (pays off only with block_v = 16).
    split_k: bool = False


def program(cfg: ScanConfig):
    """The prim_func for `cfg`: grid (128 / block_v, value heads, sequences)."""
    dt, f32 = cfg.dtype, "float32"
    Hk, Hv, D, C, BV = cfg.key_heads, cfg.value_heads, HEAD_DIM, CHUNK, cfg.block_v
    group = Hv // Hk
    ntok = T.dynamic("ntok")
    nchunk = T.dynamic("nchunk")
    ncu = T.dynamic("ncu")
    nh0 = T.dynamic("nh0")
    nht = T.dynamic("nht")
    sq, sk, sv = (T.dynamic(name, "int32") for name in ("sq8", "sk8", "sv8"))

    # Buffers of a chunk step, allocated once per CTA: (dtype, or "fragment" / "local" for fp32 registers; shape).
    step_buffers = (
        (dt, (C, D)), (dt, (C, D)), (dt, (C, D) if cfg.split_k else (1, 8)), (dt, (C, BV)), (dt, (C, C)),
        (dt, (C, C)), (f32, (4, C)), (dt, (D, BV)), (dt, (C, BV)), (dt, (C, BV)), (dt, (C, BV)), (dt, (C, BV)),
        ("fragment", (C, BV)), ("fragment", (C, BV)), ("fragment", (C, BV)), ("local", (1,)),
    )
    @T.macro
    def chunk_step(q, k, v, tmat, pmat, vecs, o, S, bos, eos, chunk, bh, hk, v0, smem):
        q_s, k_s, k2_s, v_s, t_s, p_s, vec_s, s_s, w_s, u_s, ud_s, o_s, ks, qs, uf, lam = smem
        T.copy(q[bos:bos + C, hk, 0:D], q_s)
        T.copy(k[bos:bos + C, hk, 0:D], k_s)
        if cfg.split_k:
            T.copy(k[bos:bos + C, hk, 0:D], k2_s)
        T.copy(v[bos:bos + C, bh, v0:v0 + BV], v_s)
        T.copy(tmat[chunk, bh, 0:C, 0:C], t_s)
        T.copy(pmat[chunk, bh, 0:C, 0:C], p_s)
        T.copy(vecs[chunk, bh, 0:4, 0:C], vec_s)
        T.copy(S, s_s)
        T.gemm(k_s, s_s, ks, clear_accum=True)
        T.gemm(q_s, s_s, qs, clear_accum=True)
        for r, x in T.Parallel(C, BV):
            w_s[r, x] = T.cast(T.cast(v_s[r, x], f32) - vec_s[0, r] * ks[r, x], dt)
            qs[r, x] = qs[r, x] * vec_s[1, r]
        lam[0] = vec_s[3, 0]
        T.gemm(t_s, w_s, uf, clear_accum=True)
        for r, x in T.Parallel(C, BV):
            u_s[r, x] = T.cast(uf[r, x], dt)
            ud_s[r, x] = T.cast(uf[r, x] * vec_s[2, r], dt)
        T.gemm(p_s, u_s, qs)
        for kk, x in T.Parallel(D, BV):
            S[kk, x] = S[kk, x] * lam[0]
        if cfg.split_k:
            T.gemm(k2_s, ud_s, S, transpose_A=True)
        else:
            T.gemm(k_s, ud_s, S, transpose_A=True)
        T.copy(qs, o_s)
        for r, x in T.Parallel(C, BV):
            if bos + r < eos:
                o[bos + r, bh, v0 + x] = o_s[r, x]

    @T.macro
    def walk(inputs, h0, cu_seqlens, o, ht, seq_len, n_seqs):
        """The whole CTA: find the sequence, hold S in registers and run `chunk_step` over its chunks."""
        with T.Kernel(D // BV, Hv, n_seqs, threads=cfg.threads) as (bv, bh, bn):
            # (first token, end, first chunk) of sequence bn
            span = T.alloc_local((3,), "int32")
            if cfg.varlen:
                span[0] = cu_seqlens[bn]
                span[1] = cu_seqlens[bn + 1]
                span[2] = 0
                for i in T.serial(bn):
                    span[2] = span[2] + T.ceildiv(cu_seqlens[i + 1] - cu_seqlens[i], C)
            else:
                span[0] = bn * seq_len
                span[1] = span[0] + seq_len
                span[2] = bn * T.ceildiv(seq_len, C)
            smem = tuple(
                T.alloc_local(shape, f32) if kind == "local" else
                T.alloc_fragment(shape, f32) if kind == "fragment" else
                T.alloc_shared(shape, kind) for kind, shape in step_buffers
            )
            S = T.alloc_fragment((D, BV), f32)
            if cfg.has_initial_state:
                T.copy(h0[bn, bh, 0:D, bv * BV:bv * BV + BV], S)
            else:
                T.clear(S)
            for j in T.Pipelined(T.ceildiv(span[1] - span[0], C), num_stages=cfg.num_stages):
                chunk_step(*inputs, o, S, span[0] + j * C, span[1], span[2] + j, bh, bh // group, bv * BV, smem)
            if cfg.store_final_state:
                T.copy(S, ht[bn, bh, 0:D, bv * BV:bv * BV + BV])

    @T.prim_func
    def chunk_scan(
        q: strided_rows((ntok, Hk, D), sq, dt),
        k: strided_rows((ntok, Hk, D), sk, dt),
        v: strided_rows((ntok, Hv, D), sv, dt),
        tmat: T.Tensor((nchunk, Hv, C, C), dt),
        pmat: T.Tensor((nchunk, Hv, C, C), dt),
        vecs: T.Tensor((nchunk, Hv, 4, C), f32),
        h0: T.Tensor((nh0, Hv, D, D), f32),
        cu_seqlens: T.Tensor((ncu,), "int32"),
        o: T.Tensor((ntok, Hv, D), dt),
        ht: T.Tensor((nht, Hv, D, D), f32),
        seq_len: T.int32,
        n_seqs: T.int32,
        q_stride8: sq,
        k_stride8: sk,
        v_stride8: sv,
    ):
        walk((q, k, v, tmat, pmat, vecs), h0, cu_seqlens, o, ht, seq_len, n_seqs)

    return chunk_scan
