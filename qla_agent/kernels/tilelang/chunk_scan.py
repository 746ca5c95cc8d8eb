"""Sequential stage of the GDN prefill: the state recurrence over chunks and the output.

One CTA per (sequence or partition of one, value head, slice of `block_v` state columns); it walks its
chunks in order with the fp32 state slice S [128, block_v] in registers. With T, P and the vectors from
`chunk_prep` (see there), per chunk of 64 tokens:

    W = V - diag(a) (K S)                  a = exp(gamma) rk
    U = T W                                the delta values (FLA's v_new)
    O = diag(o) (Q S) + P U                o = scale exp(gamma) rq
    S = lambda S + K^T diag(d) U           d = exp(gamma_C - gamma) rk, lambda = exp(gamma_C)

K S, Q S and K^T (dU) run on tensor cores with S rounded to the input dtype (as FLA does with h).

Two layouts of the same step (`ScanConfig.value_rows`):
- columns (the first design): S [128, block_v], every GEMM spread over all warps, its operands and
  results passing through shared memory, a CTA barrier between one GEMM and the next.
- value rows: the transposed recurrence on S^T [block_v, 128], each warp owning 16 whole rows
  (value columns) of it. Every product then has the warp's rows as its M dimension (X^T = S^T K^T,
  U^T = W^T T^T, O^T = (S^T Q^T) diag(o) + U^T P^T, S^T = lambda S^T + (U^T diag(d)) K), so each
  result stays in the warp's registers and feeds the next product as its A operand (an mma.sync
  accumulator is laid out as the A operand of the next one): only the loaded tiles K, Q, V, T, P
  live in shared memory, and the warps share them read-only.
Rows past the end of the sequence carry a = o = d = 0 and zero columns of T and P, so the garbage
loaded there never reaches S or a stored output (TileLang's copies fill rows past the end of a batch
row with zeros). q, k and v [B, T, H, 128] are read in place through their batch and token strides
(`chunk_prep.strided_heads`), o [B, T, Hv, 128] is written compact; a CTA's tokens are its batch row's
(dense: the sequence's, varlen: row 0 from its cu_seqlens offset). T and P come in one buffer
(`chunk_prep`: tpmat [chunks, Hv, 2, 64, 64]).

Short calls (`ScanConfig.prep`, the launcher's path for appends): the value-rows step computes the chunk's
T, P and vectors itself, with chunk_prep's stages for the CTA's value head (`chunk_prep.prep_steps`),
straight into the shared tiles it reads, so the prefill is this one launch with no buffers in between.
Longer appends (`ScanConfig.grid_prep`): one cooperative launch runs chunk_prep's body on every CTA
(`chunk_prep.chunk_item`), a grid barrier, then this walk on the first 2 x Hv x N CTAs (`walk_cta`).

Context parallelism (dense inputs): each sequence is cut into `parts` partitions of `part_chunks`
chunks, run as independent CTAs. Their starting states come from the warm-up program
(`ScanConfig.warmup`): the recurrence without outputs over the last chunks before the partition,
from a zero state, going back only until the chunks' decays multiply to below exp(WARMUP_LOG_DECAY).
The state that came before weighs at most that factor in the partition's start (each step
alpha (I - beta k k^T) has norm <= alpha with unit k and 0 <= beta <= 2), so dropping it is below
bf16 resolution. Heads that never decay that much walk back to the sequence start and its initial
state: exact, just not faster.
"""

import functools
from dataclasses import dataclass

import tilelang.language as T

from qla_agent.kernels.tilelang.build import HEAD_DIM
from qla_agent.kernels.tilelang.chunk_prep import (
    BLOCK_STRIDE, CHUNK, EX2_PRELUDE, PrepConfig, chunk_body, chunk_item, chunk_vectors, prep_steps, strided_heads,
)

# A warm-up window ends once its chunks' decays multiply to below e^-10 (4.5e-5, ~90x under bf16's 2^-8).
WARMUP_LOG_DECAY = -10.0
# Value rows read V and write O transposed in shared memory (lanes of a warp step along tokens): rows
# padded by 8 elements (16 bytes) put a warp's tokens 4 banks apart instead of on the same bank.
ROW_PAD = 8
# A chunk's decay factor is clamped to this before its log (exp(gamma_C) may underflow to 0).
MIN_CHUNK_DECAY = 1e-30
# The value-rows step's buffers besides the q and k tiles (`_step_buffers`), as `row_update` unpacks them.
ROW_UPDATE_BUFFERS = ("v_s", "t_s", "p_s", "vec_s", "o_s", "s_b", "x", "w", "uf", "u", "ud", "y", "lam")


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
    # Column layout: a second K tile for the state update: the first one's last use is then at the top of
    # a chunk, so its prefetch for the next chunk overlaps this chunk's work (pays off only with block_v = 16).
    split_k: bool = False
    # The warm-up of context parallelism: partition starting states, no outputs (dense inputs only).
    warmup: bool = False
    # S^T in registers, 16 value columns per warp (see the module docstring); needs block_v = 16 x warps.
    value_rows: bool = False
    # Hopper (sm_90a) only: the value-rows GEMMs as wgmma, A from registers, B read by the warpgroup
    # from shared memory once (mma.sync reads it once per warp); `build` then leaves WGMMA on.
    wgmma: bool = False
    # Short calls: each CTA preps its own chunks (chunk_prep's stages for its value head; T, P and the
    # vectors straight into shared memory) before the step, so the whole prefill is this one launch with
    # no T / P / vector buffers: the prep's launch and allocations cost more host time than an append's
    # device time. The prep is then done once per 64-column slice instead of once per key head.
    prep: PrepConfig | None = None
    # Longer appends, one launch without the serial prep: every CTA first preps (chunk, key head) items as
    # chunk_prep does (its body, items strided over the grid, T, P and the vectors to their buffers), all
    # wait at a grid barrier (a cooperative launch: the grid must be resident at once), then the first
    # 2 x Hv x N CTAs run the value-rows walk (`program`'s chunk_fused).
    grid_prep: PrepConfig | None = None

    def __post_init__(self):
        if self.value_rows and self.split_k:
            raise ValueError("value_rows has no second K tile (it measured slower: benchmarks/NOTES.md, session 6)")
        if self.wgmma and not (self.value_rows and self.threads % 128 == 0):
            raise ValueError("wgmma needs value_rows (A operands in registers) on whole warpgroups (128 threads)")
        if self.prep is not None and not (self.value_rows and self.threads == 128 and not self.warmup):
            raise ValueError("a self-prepping scan (prep) runs the value-rows step on 128 threads, without warm-up")
        if self.grid_prep is not None and not (
            self.value_rows and self.block_v == 64 and self.threads == 128 and self.prep is None and not self.warmup
        ):
            raise ValueError("grid_prep runs the value-rows walk on 64 columns and 128 threads after its own prep")
        if self.value_rows and self.block_v != 16 * (self.threads // 32):
            raise ValueError(
                f"value_rows gives each of the {self.threads // 32} warps 16 state columns: block_v must be "
                f"{16 * (self.threads // 32)}, got {self.block_v}"
            )


def _step_buffers(cfg: ScanConfig) -> dict:
    """Name -> (scope "shared" / "fragment" / "local", dtype, shape) of a chunk step's buffers, in the
    order its step macro unpacks them; None for those the warm-up does not use."""
    dt, f32, C, D, BV = cfg.dtype, "float32", CHUNK, HEAD_DIM, cfg.block_v
    if cfg.value_rows:
        # Loaded tiles in shared memory; the warp's rows of every intermediate in registers.
        specs = dict(
            q_s=("shared", dt, (C, D)), k_s=("shared", dt, (C, D)), v_s=("shared", dt, (C, BV + ROW_PAD)),
            t_s=("shared", dt, (C, C)), p_s=("shared", dt, (C, C)), vec_s=("shared", f32, (4, C)),
            o_s=("shared", dt, (C, BV + ROW_PAD)), s_b=("fragment", dt, (BV, D)), x=("fragment", f32, (BV, C)),
            w=("fragment", dt, (BV, C)), uf=("fragment", f32, (BV, C)), u=("fragment", dt, (BV, C)),
            ud=("fragment", dt, (BV, C)), y=("fragment", f32, (BV, C)), lam=("local", f32, (1,)),
        )
        unused = ("q_s", "p_s", "o_s", "u", "y")
    else:
        shared = lambda dtype, shape: ("shared", dtype, shape)  # noqa: E731
        specs = dict(
            q_s=shared(dt, (C, D)), k_s=shared(dt, (C, D)), k2_s=shared(dt, (C, D) if cfg.split_k else (1, 8)),
            v_s=shared(dt, (C, BV)), t_s=shared(dt, (C, C)), p_s=shared(dt, (C, C)), vec_s=shared(f32, (4, C)),
            s_s=shared(dt, (D, BV)), w_s=shared(dt, (C, BV)), u_s=shared(dt, (C, BV)), ud_s=shared(dt, (C, BV)),
            o_s=shared(dt, (C, BV)), ks=("fragment", f32, (C, BV)), qs=("fragment", f32, (C, BV)),
            uf=("fragment", f32, (C, BV)), lam=("local", f32, (1,)),
        )
        unused = ("q_s", "p_s", "u_s", "o_s", "qs")
    if cfg.warmup:
        specs.update(dict.fromkeys(unused))
    if cfg.prep is not None:  # q and k are staged by the prep (`chunk_prep.prep_steps`)
        specs.update(q_s=None, k_s=None)
    return specs


def program(cfg: ScanConfig):
    """The prim_func for `cfg`: grid (128 / block_v, value heads, sequences or partitions)."""
    dt, f32 = cfg.dtype, "float32"
    Hk, Hv, D, C, BV = cfg.key_heads, cfg.value_heads, HEAD_DIM, CHUNK, cfg.block_v
    group = Hv // Hk
    outputs = not cfg.warmup
    ROWS = T.GemmWarpPolicy.FullRow  # value_rows: warps split M (the value columns) only
    batch = T.dynamic("batch")
    seqlen = T.dynamic("seqlen")
    nchunk = T.dynamic("nchunk")
    ncu = T.dynamic("ncu")
    nh0 = T.dynamic("nh0")
    nht = T.dynamic("nht")
    names = ("sqb8", "sqt8", "skb8", "skt8", "svb8", "svt8")
    sqb, sqt, skb, skt, svb, svt = (T.dynamic(name, "int32") for name in names)

    @T.macro
    def column_step(q, k, v, tpmat, vecs, o, S, batch_row, bos, eos, chunk, bh, hk, v0, b):
        # Plain names: TileLang's parser does not take a subscripted dict entry as an assignment target.
        q_s, k_s, k2_s, v_s, t_s, p_s, vec_s, s_s, w_s, u_s, ud_s, o_s, ks, qs, uf, lam = b.values()
        if outputs:
            T.copy(q[batch_row, bos:bos + C, hk, 0:D], q_s)
        T.copy(k[batch_row, bos:bos + C, hk, 0:D], k_s)
        if cfg.split_k:
            T.copy(k[batch_row, bos:bos + C, hk, 0:D], k2_s)
        T.copy(v[batch_row, bos:bos + C, bh, v0:v0 + BV], v_s)
        T.copy(tpmat[chunk, bh, 0, 0:C, 0:C], t_s)
        if outputs:
            T.copy(tpmat[chunk, bh, 1, 0:C, 0:C], p_s)
        T.copy(vecs[chunk, bh, 0:4, 0:C], vec_s)
        T.copy(S, s_s)
        T.gemm(k_s, s_s, ks, clear_accum=True)
        if outputs:
            T.gemm(q_s, s_s, qs, clear_accum=True)
            for r, x in T.Parallel(C, BV):
                w_s[r, x] = T.cast(T.cast(v_s[r, x], f32) - vec_s[0, r] * ks[r, x], dt)
                qs[r, x] = qs[r, x] * vec_s[1, r]
        else:
            for r, x in T.Parallel(C, BV):
                w_s[r, x] = T.cast(T.cast(v_s[r, x], f32) - vec_s[0, r] * ks[r, x], dt)
        lam[0] = vec_s[3, 0]
        T.gemm(t_s, w_s, uf, clear_accum=True)
        if outputs:
            for r, x in T.Parallel(C, BV):
                u_s[r, x] = T.cast(uf[r, x], dt)
                ud_s[r, x] = T.cast(uf[r, x] * vec_s[2, r], dt)
            T.gemm(p_s, u_s, qs)
        else:
            for r, x in T.Parallel(C, BV):
                ud_s[r, x] = T.cast(uf[r, x] * vec_s[2, r], dt)
        for kk, x in T.Parallel(D, BV):
            S[kk, x] = S[kk, x] * lam[0]
        T.gemm(k2_s if cfg.split_k else k_s, ud_s, S, transpose_A=True)
        if outputs:
            T.copy(qs, o_s)
            for r, x in T.Parallel(C, BV):
                if bos + r < eos:
                    o[batch_row, bos + r, bh, v0 + x] = o_s[r, x]

    @T.macro
    def row_update(q_s, k_s, o, S, batch_row, bos, eos, bh, v0, b):
        """The value-rows step on the chunk's tiles in shared memory (q_s, k_s and b's v_s, t_s, p_s, vec_s).
        S is S^T [block_v, 128]; every fragment here has the warps' value columns as rows."""
        v_s, t_s, p_s, vec_s, o_s, s_b, x, w, uf, u, ud, y, lam = (b[name] for name in ROW_UPDATE_BUFFERS)
        lam[0] = vec_s[3, 0]
        T.copy(S, s_b)
        T.gemm(s_b, k_s, x, transpose_B=True, clear_accum=True, policy=ROWS)  # X^T = S^T K^T
        for r, c in T.Parallel(BV, C):
            w[r, c] = T.cast(T.cast(v_s[c, r], f32) - vec_s[0, c] * x[r, c], dt)
        T.gemm(w, t_s, uf, transpose_B=True, clear_accum=True, policy=ROWS)  # U^T = W^T T^T
        if outputs:
            for r, c in T.Parallel(BV, C):
                u[r, c] = T.cast(uf[r, c], dt)
                ud[r, c] = T.cast(uf[r, c] * vec_s[2, c], dt)
            # O^T after U^T: S^T's bf16 copy is cast again rather than held (its 32 registers per thread).
            T.copy(S, s_b)
            T.gemm(s_b, q_s, y, transpose_B=True, clear_accum=True, policy=ROWS)
            for r, c in T.Parallel(BV, C):
                y[r, c] = y[r, c] * vec_s[1, c]
            T.gemm(u, p_s, y, transpose_B=True, policy=ROWS)
        else:
            for r, c in T.Parallel(BV, C):
                ud[r, c] = T.cast(uf[r, c] * vec_s[2, c], dt)
        for r, kk in T.Parallel(BV, D):
            S[r, kk] = S[r, kk] * lam[0]
        T.gemm(ud, k_s, S, policy=ROWS)  # S^T += (U^T diag(d)) K
        if outputs:
            for r, c in T.Parallel(BV, C):
                o_s[c, r] = T.cast(y[r, c], dt)
            for c, r in T.Parallel(C, BV):
                if bos + c < eos:
                    o[batch_row, bos + c, bh, v0 + r] = o_s[c, r]

    @T.macro
    def row_step(q, k, v, tpmat, vecs, o, S, batch_row, bos, eos, chunk, bh, hk, v0, b):
        q_s, k_s, v_s, t_s, p_s, vec_s = b["q_s"], b["k_s"], b["v_s"], b["t_s"], b["p_s"], b["vec_s"]
        if outputs:
            T.copy(q[batch_row, bos:bos + C, hk, 0:D], q_s)
        T.copy(k[batch_row, bos:bos + C, hk, 0:D], k_s)
        T.copy(v[batch_row, bos:bos + C, bh, v0:v0 + BV], v_s[0:C, 0:BV])
        T.copy(tpmat[chunk, bh, 0, 0:C, 0:C], t_s)
        if outputs:
            T.copy(tpmat[chunk, bh, 1, 0:C, 0:C], p_s)
        T.copy(vecs[chunk, bh, 0:4, 0:C], vec_s)
        row_update(q_s, k_s, o, S, batch_row, bos, eos, bh, v0, b)

    # The prep's stages for one value head per CTA, and the exp2 they call (a self-prepping scan only).
    steps = None if cfg.prep is None else prep_steps(cfg.prep, 1)
    prelude = {} if cfg.prep is None else dict(prelude=EX2_PRELUDE)

    @T.macro
    def prepped_row_step(q, k, v, g, beta, a_log, dt_bias, o, S, batch_row, bos, eos, chunk, bh, hk, v0, b):
        """`row_step` with the chunk's T, P and vectors computed here for value head bh (`chunk_prep`'s
        stages for a group of one) instead of loaded."""
        v_s, t_s, p_s, vec_s = b["v_s"], b["t_s"], b["p_s"], b["vec_s"]
        tx = T.get_thread_binding()
        k_s, q_s, gam_s, b_s, rk_s, rq_s = steps["staged_inputs"](
            q, k, g, beta, a_log, dt_bias, batch_row, bos, eos, hk, bh, tx
        )
        T.copy(v[batch_row, bos:bos + C, bh, v0:v0 + BV], v_s[0:C, 0:BV])
        blocks_s = T.alloc_shared((4, BLOCK_STRIDE), f32)
        lo_s = T.alloc_shared((C, C), "float16")
        d_s = T.alloc_shared((C, C), "float16")
        qk = T.alloc_fragment((C, C), f32)
        kk = T.alloc_fragment((C, C), f32)
        pf = T.alloc_fragment((C, C), dt)
        acc = T.alloc_fragment((C, C), f32)
        acc2 = T.alloc_fragment((C, C), f32)
        af = T.alloc_fragment((C, C), "float16")
        b_col = T.alloc_fragment((C,), f32)
        xs = T.alloc_local((16,), f32)
        T.gemm(q_s, k_s, qk, transpose_B=True, clear_accum=True)
        T.gemm(k_s, k_s, kk, transpose_B=True, clear_accum=True)
        steps["normed_scores"](qk, kk, rk_s, rq_s)
        steps["decayed"](qk, kk, gam_s, b_s, 0, pf, lo_s, blocks_s)
        T.copy(pf, p_s)
        T.clear(d_s)
        steps["diagonal_inverse"](blocks_s, d_s, tx, xs)
        steps["inverse"](lo_s, d_s, acc, acc2, af)
        for c in T.Parallel(C):
            b_col[c] = -b_s[0, c]
        for r, c in T.Parallel(C, C):
            t_s[r, c] = T.cast(acc2[r, c] * b_col[c], dt)
        for r in T.Parallel(C):
            a, o_scale, d, lam = chunk_vectors(cfg.prep, gam_s, rk_s, rq_s, 0, r, bos + r < eos)
            vec_s[0, r] = a
            vec_s[1, r] = o_scale
            vec_s[2, r] = d
            vec_s[3, r] = lam
        row_update(q_s, k_s, o, S, batch_row, bos, eos, bh, v0, b)

    chunk_step = prepped_row_step if cfg.prep is not None else row_step if cfg.value_rows else column_step
    # A self-prepping scan's chunks are not pipelined: the next chunk's q and k, prefetched into registers,
    # would stay live through the prep (1.6 KB of spills per thread).
    chunk_loop = T.serial if cfg.prep is not None else functools.partial(T.Pipelined, num_stages=cfg.num_stages)

    def allocate():
        """The chunk step's buffers, once per CTA, and the state slice (S, or S^T with value_rows)."""
        alloc = dict(shared=T.alloc_shared, fragment=T.alloc_fragment, local=T.alloc_local)
        b = {
            name: None if spec is None else alloc[spec[0]](spec[2], spec[1])
            for name, spec in _step_buffers(cfg).items()
        }
        return b, T.alloc_fragment((BV, D) if cfg.value_rows else (D, BV), f32)

    @T.macro
    def load_state(src, n, h, S, v0):
        """S (or S^T) from src[n, h] [128, 128], the state columns v0 : v0 + block_v."""
        if cfg.value_rows:
            for x, kk in T.Parallel(BV, D):
                S[x, kk] = src[n, h, kk, v0 + x]
        else:
            T.copy(src[n, h, 0:D, v0:v0 + BV], S)

    @T.macro
    def store_state(S, dst, n, h, v0):
        """The inverse of `load_state`."""
        if cfg.value_rows:
            for x, kk in T.Parallel(BV, D):
                dst[n, h, kk, v0 + x] = S[x, kk]
        else:
            T.copy(S, dst[n, h, 0:D, v0:v0 + BV])

    @T.macro
    def walk_cta(inputs, h0, cu_seqlens, o, ht, seq_len, parts, part_chunks, bv, bh, bn):
        """The CTA of state slice bv, head bh, sequence or partition bn: hold S in registers, run `chunk_step`
        over its chunks.

        Dense partition p of sequence s (bn = s x parts + p) starts from h0[bn] and stores its state only
        if it is the sequence's last; varlen sequences are whole (parts = 1)."""
        # (first token, end, first chunk) of the CTA's token run, in its batch row: the sequence's
        # (dense), row 0 (varlen: the sequences are packed in it)
        span = T.alloc_local((3,), "int32")
        # Variables, computed once: as expressions their divisions were inlined into every access.
        seq = T.alloc_var("int32")
        part = T.alloc_var("int32")
        batch_row = T.alloc_var("int32")
        seq = bn // parts
        part = bn % parts
        batch_row = 0 if cfg.varlen else seq
        if cfg.varlen:
            span[0] = cu_seqlens[bn]
            span[1] = cu_seqlens[bn + 1]
            span[2] = 0
            for i in T.serial(bn):
                span[2] = span[2] + T.ceildiv(cu_seqlens[i + 1] - cu_seqlens[i], C)
        else:
            span[0] = part * part_chunks * C
            span[1] = T.min(span[0] + part_chunks * C, seq_len)
            span[2] = seq * T.ceildiv(seq_len, C) + part * part_chunks
        b, S = allocate()
        if cfg.has_initial_state:
            load_state(h0, bn, bh, S, bv * BV)
        else:
            T.clear(S)
        for j in chunk_loop(T.ceildiv(span[1] - span[0], C)):
            chunk_step(
                *inputs, o, S, batch_row, span[0] + j * C, span[1], span[2] + j, bh, bh // group, bv * BV, b
            )
        if cfg.store_final_state and part == parts - 1:
            store_state(S, ht, seq, bh, bv * BV)

    @T.macro
    def walk(inputs, h0, cu_seqlens, o, ht, seq_len, n_seqs, parts, part_chunks):
        """One CTA per (sequence or partition, head, slice): `walk_cta`."""
        with T.Kernel(D // BV, Hv, n_seqs, threads=cfg.threads, **prelude) as (bv, bh, bn):
            walk_cta(inputs, h0, cu_seqlens, o, ht, seq_len, parts, part_chunks, bv, bh, bn)

    @T.macro
    def warm_up(k, v, tpmat, vecs, h0, starts, seq_len, n_parts, parts, part_chunks):
        """One CTA per (partition, head, slice): the state at the partition's start, into starts[partition]."""
        with T.Kernel(D // BV, Hv, n_parts, threads=cfg.threads) as (bv, bh, bn):
            # Variables, computed once (as expressions their divisions would be inlined into every access).
            seq = T.alloc_var("int32")
            end = T.alloc_var("int32")
            first_chunk = T.alloc_var("int32")
            seq = bn // parts
            end = bn % parts * part_chunks  # the partition's first chunk: the window ends there
            first_chunk = seq * T.ceildiv(seq_len, C)
            # Walk back from the window's end while the decay so far stays above the bound: the window
            # starts at the first chunk that takes it below, or at the sequence start (then from h0).
            start = T.alloc_var("int32")
            found = T.alloc_var("int32")
            log_decay = T.alloc_var(f32)
            start = 0
            found = 0
            log_decay = 0.0
            for i in T.serial(end):
                if found == 0:
                    lam = vecs[first_chunk + end - 1 - i, bh, 3, 0]
                    log_decay = log_decay + T.log(T.max(lam, MIN_CHUNK_DECAY))
                    if log_decay <= WARMUP_LOG_DECAY:
                        found = 1
                        start = end - 1 - i
            b, S = allocate()
            T.clear(S)
            if cfg.has_initial_state:
                if start == 0:
                    load_state(h0, seq, bh, S, bv * BV)
            for j in T.Pipelined(end - start, num_stages=cfg.num_stages):
                bos = (start + j) * C
                chunk_step(
                    None, k, v, tpmat, vecs, None, S, seq, bos, bos + C, first_chunk + start + j, bh, bh // group,
                    bv * BV, b,
                )
            store_state(S, starts, bn, bh, bv * BV)

    if cfg.warmup:

        @T.prim_func
        def chunk_warmup(
            k: strided_heads((batch, seqlen, Hk, D), skb, skt, dt),
            v: strided_heads((batch, seqlen, Hv, D), svb, svt, dt),
            tpmat: T.Tensor((nchunk, Hv, 2, C, C), dt),
            vecs: T.Tensor((nchunk, Hv, 4, C), f32),
            h0: T.Tensor((nh0, Hv, D, D), f32),
            starts: T.Tensor((nht, Hv, D, D), f32),
            seq_len: T.int32,
            n_parts: T.int32,
            parts: T.int32,
            part_chunks: T.int32,
            k_batch8: skb,
            k_token8: skt,
            v_batch8: svb,
            v_token8: svt,
        ):
            warm_up(k, v, tpmat, vecs, h0, starts, seq_len, n_parts, parts, part_chunks)

        return chunk_warmup

    # The one-launch kernels' gate inputs: g and beta [B, T, Hv] with any batch and token strides, A_log and
    # dt_bias [Hv] (dtypes from the prep config).
    one_launch_prep = cfg.prep or cfg.grid_prep
    sgb, sgt, sbb, sbt = (T.dynamic(name, "int32") for name in ("sgb", "sgt", "sbb", "sbt"))

    def gates(strides):
        return T.StridedTensor((batch, seqlen, Hv), (*strides, 1), one_launch_prep.gate_dtype)

    def gate_params():
        return T.Tensor((Hv,), one_launch_prep.param_dtype)

    if cfg.grid_prep is not None:
        prep_cfg = cfg.grid_prep
        prep_body = chunk_body(prep_cfg)

        @T.prim_func
        def chunk_fused(
            q: strided_heads((batch, seqlen, Hk, D), sqb, sqt, dt),
            k: strided_heads((batch, seqlen, Hk, D), skb, skt, dt),
            v: strided_heads((batch, seqlen, Hv, D), svb, svt, dt),
            g: gates((sgb, sgt)),
            beta: gates((sbb, sbt)),
            a_log: gate_params(),
            dt_bias: gate_params(),
            cu_seqlens: T.Tensor((ncu,), "int32"),
            tpmat: T.Tensor((nchunk, Hv, 2, C, C), dt),
            vecs: T.Tensor((nchunk, Hv, 4, C), f32),
            h0: T.Tensor((nh0, Hv, D, D), f32),
            o: T.Tensor((batch, seqlen, Hv, D), dt),
            ht: T.Tensor((nht, Hv, D, D), f32),
            seq_len: T.int32,
            n_seqs: T.int32,
            grid: T.int32,
            q_batch8: sqb,
            q_token8: sqt,
            k_batch8: skb,
            k_token8: skt,
            v_batch8: svb,
            v_token8: svt,
            g_batch: sgb,
            g_token: sgt,
            beta_batch: sbb,
            beta_token: sbt,
        ):
            with T.Kernel(grid, threads=128, prelude=EX2_PRELUDE) as bx:
                for i in T.serial(T.ceildiv(nchunk * Hk - bx, grid)):
                    item = bx + i * grid
                    chunk_item(
                        prep_cfg, prep_body, q, k, g, beta, a_log, dt_bias, cu_seqlens, tpmat, vecs, seq_len, ncu,
                        item // Hk, item % Hk,
                    )
                T.sync_grid()
                if bx < 2 * Hv * n_seqs:
                    walk_cta(
                        (q, k, v, tpmat, vecs), h0, cu_seqlens, o, ht, seq_len, 1, T.ceildiv(seq_len, C), bx % 2,
                        bx // 2 % Hv, bx // (2 * Hv),
                    )

        return chunk_fused

    if cfg.prep is not None:

        @T.prim_func
        def chunk_scan_prepped(
            q: strided_heads((batch, seqlen, Hk, D), sqb, sqt, dt),
            k: strided_heads((batch, seqlen, Hk, D), skb, skt, dt),
            v: strided_heads((batch, seqlen, Hv, D), svb, svt, dt),
            g: gates((sgb, sgt)),
            beta: gates((sbb, sbt)),
            a_log: gate_params(),
            dt_bias: gate_params(),
            h0: T.Tensor((nh0, Hv, D, D), f32),
            cu_seqlens: T.Tensor((ncu,), "int32"),
            o: T.Tensor((batch, seqlen, Hv, D), dt),
            ht: T.Tensor((nht, Hv, D, D), f32),
            seq_len: T.int32,
            n_seqs: T.int32,
            q_batch8: sqb,
            q_token8: sqt,
            k_batch8: skb,
            k_token8: skt,
            v_batch8: svb,
            v_token8: svt,
            g_batch: sgb,
            g_token: sgt,
            beta_batch: sbb,
            beta_token: sbt,
        ):
            walk((q, k, v, g, beta, a_log, dt_bias), h0, cu_seqlens, o, ht, seq_len, n_seqs, 1, T.ceildiv(seq_len, C))

        return chunk_scan_prepped

    @T.prim_func
    def chunk_scan(
        q: strided_heads((batch, seqlen, Hk, D), sqb, sqt, dt),
        k: strided_heads((batch, seqlen, Hk, D), skb, skt, dt),
        v: strided_heads((batch, seqlen, Hv, D), svb, svt, dt),
        tpmat: T.Tensor((nchunk, Hv, 2, C, C), dt),
        vecs: T.Tensor((nchunk, Hv, 4, C), f32),
        h0: T.Tensor((nh0, Hv, D, D), f32),
        cu_seqlens: T.Tensor((ncu,), "int32"),
        o: T.Tensor((batch, seqlen, Hv, D), dt),
        ht: T.Tensor((nht, Hv, D, D), f32),
        seq_len: T.int32,
        n_seqs: T.int32,
        parts: T.int32,
        part_chunks: T.int32,
        q_batch8: sqb,
        q_token8: sqt,
        k_batch8: skb,
        k_token8: skt,
        v_batch8: svb,
        v_token8: svt,
    ):
        walk((q, k, v, tpmat, vecs), h0, cu_seqlens, o, ht, seq_len, n_seqs, parts, part_chunks)

    return chunk_scan
