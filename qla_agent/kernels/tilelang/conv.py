"""TileLang causal depthwise conv1d + SiLU: the prefill over T tokens and the one-token update on a pool.

Math and conventions as `reference_conv` (W taps, weight[:, W-1] on the current token, the state the
last W-1 inputs, oldest first). Both kernels compute in fp32 and take x with strided rows, so a slice
of the fused input projection needs no copy.

Prefill: grid (C / block_c, T / block_t, B). A thread owns `vec` consecutive channels (vector_bytes of
x) and a run of `run` tokens: it loads the run and the W-1 tokens before it into registers as vectors
(every load issued before the first use), slides the W-tap window over them and stores each token's
outputs as one vector. Taps before a sequence's first token read that sequence's conv_state
(0 without one): the run's first W-1 taps when it starts within W-1 tokens of a sequence start, and,
for packed sequences only, the taps after a sequence start inside the run. A sequence's last token
writes its final state from the window, so the values are exact copies of inputs. With cu_seqlens
(B = 1) a thread finds the sequence of its first token by a binary search of the offsets on the device.

The prefill is latency-bound in its SiLU: an IEEE fp32 division is a branchy sequence that ptxas
does not interleave with the next one. So the denominators of all the thread's channels are computed
first (independent, interleaved) and divided by a fast reciprocal (`fast_silu`, CUDA only), and the
default tile keeps a thread at 4 channels (8-byte vectors of bf16) and 64 registers
(__launch_bounds__(256, 4)), 32 warps per SM to hide the latency (16-byte vectors: 120 registers, 16
warps). Tiles with the same SiLU division compute the same values, bit for bit.

Update: grid (C / block_c, N). Thread c reads its channel's W-1 state values and the new input,
writes y and the shifted state (in place: each thread touches only its own channel).
"""

from dataclasses import dataclass

import tilelang.language as T
import torch

from qla_agent.kernels.tilelang import build
from qla_agent.kernels.tilelang.build import VECTOR_BYTES

LOG2E = 1.4426950408889634


@dataclass(frozen=True, slots=True)
class ConvConfig:
    """One specialisation of the prefill conv (B, T and the number of sequences are runtime values)."""

    channels: int
    width: int
    dtype: str  # x and y
    weight_dtype: str
    state_dtype: str  # conv_state and the final state
    has_state: bool
    varlen: bool = False  # packed sequences (B = 1) delimited by cu_seqlens
    block_t: int = 32  # tokens per CTA
    block_c: int = 256  # channels per CTA
    run: int = 8  # tokens per thread
    vector_bytes: int = VECTOR_BYTES // 2  # bytes of x a thread loads per token
    # __launch_bounds__ minimum CTAs per SM: ptxas caps registers at 64K / (threads * min_blocks).
    min_blocks: int = 4
    # Each token's SiLU denominators of all the thread's channels before their divisions (the divisions'
    # branchy IEEE sequences then start with their inputs ready); False: channel by channel.
    split_silu: bool = True
    # SiLU(acc) = acc * rcp.approx(1 + exp(-acc)) instead of an IEEE division (CUDA only: TileLang's C
    # backend has no fast reciprocal). Within ~2 ulp of fp32 before the rounding to the output dtype.
    fast_silu: bool = True

    @property
    def vec(self) -> int:
        """Channels per thread: vector_bytes of x, halved until it divides C (x rows are read as vectors)."""
        vec = self.vector_bytes // (4 if self.dtype == "float32" else 2)
        while self.channels % vec:
            vec //= 2
        return vec

    @property
    def threads(self) -> int:
        return (self.block_c // self.vec) * (self.block_t // self.run)


@dataclass(frozen=True, slots=True)
class ConvUpdateConfig:
    """One specialisation of the one-token update (N and the pool size are runtime values)."""

    channels: int
    width: int
    dtype: str
    weight_dtype: str
    state_dtype: str
    slot_dtype: str
    has_slots: bool  # else token n updates pool row n
    block_c: int = 256


def _sigmoid_denominator(acc):
    """1 + exp(-acc), so that SiLU(acc) = acc / _sigmoid_denominator(acc)."""
    return 1.0 + T.exp2(acc * -LOG2E)


def _silu(acc):
    return acc / _sigmoid_denominator(acc)


def conv_program(cfg: ConvConfig):
    """The prefill prim_func: grid (C / block_c, T / block_t, B), cfg.threads threads.

    x is [rows, vec] (the flat input in vectors; token t of row b starts at element b * sxb + t * sxt,
    strides that are multiples of vec), weight [C * W / vec, vec] (the [C, W] weight in vectors)."""
    f32, C, W, V, L = "float32", cfg.channels, cfg.width, cfg.vec, cfg.run
    H, G, R = W - 1, cfg.block_c // cfg.vec, cfg.block_t // cfg.run
    assert C % V == 0 and cfg.block_c % V == 0 and cfg.block_t % L == 0 and L >= H, cfg
    nb, nt, rows, ns, ncu = (T.dynamic(name) for name in ("nb", "nt", "rows", "ns", "ncu"))

    def state_value(conv_state, seq, ch, j):
        """Column j of seq's conv_state (0 without one), fp32. Builds an expression at trace time."""
        return T.cast(conv_state[seq, ch, j], f32) if cfg.has_state else T.float32(0)

    @T.macro
    def find_sequence(cu_seqlens, steps, t0, bb, seq, hi, bos, eos):
        """seq, bos, eos <- the sequence holding token t0 and its first and one-past-last tokens."""
        if cfg.varlen:
            seq[0] = 0
            hi[0] = ncu - 2
            for _ in T.serial(steps):
                if cu_seqlens[(seq[0] + hi[0] + 1) // 2] <= t0:
                    seq[0] = (seq[0] + hi[0] + 1) // 2
                else:
                    hi[0] = (seq[0] + hi[0] + 1) // 2 - 1
            bos[0] = cu_seqlens[seq[0]]
            eos[0] = cu_seqlens[seq[0] + 1]
        else:
            seq[0] = bb
            bos[0] = 0
            eos[0] = nt

    @T.prim_func
    def causal_conv(
        x: T.Tensor((rows, V), cfg.dtype),
        weight: T.Tensor((C * W // V, V), cfg.weight_dtype),
        conv_state: T.Tensor((ns, C, H), cfg.state_dtype),
        cu_seqlens: T.Tensor((ncu,), "int32"),
        y: T.Tensor((nb, nt, C), cfg.dtype),
        final_state: T.Tensor((ns, C, H), cfg.state_dtype),
        sxb: T.int32,
        sxt: T.int32,
        search_steps: T.int32,
    ):
        with T.Kernel(T.ceildiv(C, cfg.block_c), T.ceildiv(nt, cfg.block_t), nb, threads=G * R) as (bc, bt, bb):
            # Raw inputs of the run (slot m holds token t0 - H + m), the fp32 window, weights, outputs.
            xr = T.alloc_local((L + H, V), cfg.dtype)
            win = T.alloc_local((L + H, V), f32)
            wr = T.alloc_local((W * V,), cfg.weight_dtype)
            yr = T.alloc_local((V,), cfg.dtype)
            acc = T.alloc_local((V,), f32)
            den = T.alloc_local((V,), f32)
            seq, hi, bos, eos = (T.alloc_local((1,), "int32") for _ in range(4))
            if cfg.min_blocks > 1:
                T.annotate_min_blocks_per_sm(cfg.min_blocks)
            for r, g in T.Parallel(R, G):
                vc = bc * G + g
                t0 = bt * cfg.block_t + r * L
                if vc * V < C and t0 < nt:
                    for m in T.unroll(L + H):
                        for k in T.vectorized(V):
                            xr[m, k] = T.if_then_else(
                                t0 - H + m >= 0 and t0 - H + m < nt, x[(bb * sxb + (t0 - H + m) * sxt) // V + vc, k], 0
                            )
                    for q in T.unroll(W):
                        for k in T.vectorized(V):
                            wr[q * V + k] = weight[vc * W + q, k]
                    find_sequence(cu_seqlens, search_steps, t0, bb, seq, hi, bos, eos)
                    for m in T.unroll(H):
                        for k in T.unroll(V):
                            win[m, k] = T.if_then_else(
                                t0 - H + m >= bos[0], T.cast(xr[m, k], f32),
                                state_value(conv_state, seq[0], vc * V + k, t0 + m - bos[0]),
                            )
                    for i in T.unroll(L):
                        for k in T.unroll(V):
                            win[i + H, k] = T.cast(xr[i + H, k], f32)
                        if cfg.varlen and i > 0:
                            # A sequence starts at this token: its taps before it come from its own state.
                            if t0 + i == eos[0] and t0 + i < nt:
                                seq[0] = seq[0] + 1
                                eos[0] = cu_seqlens[seq[0] + 1]
                                for j in T.unroll(H):
                                    for k in T.unroll(V):
                                        win[i + j, k] = state_value(conv_state, seq[0], vc * V + k, j)
                        for k in T.unroll(V):
                            acc[k] = 0.0
                            for j in T.unroll(W):
                                acc[k] += T.cast(wr[k * W + j], f32) * win[i + j, k]
                            if cfg.split_silu:
                                den[k] = _sigmoid_denominator(acc[k])
                            else:
                                yr[k] = T.cast(_silu(acc[k]), cfg.dtype)
                        if cfg.split_silu:
                            for k in T.unroll(V):
                                silu = acc[k] * T.fast_rcp(den[k]) if cfg.fast_silu else acc[k] / den[k]
                                yr[k] = T.cast(silu, cfg.dtype)
                        if t0 + i < nt:
                            for k in T.vectorized(V):
                                y[bb, t0 + i, vc * V + k] = yr[k]
                        if t0 + i == eos[0] - 1:
                            for k in T.unroll(V):
                                for j in T.unroll(H):
                                    final_state[seq[0], vc * V + k, j] = T.cast(win[i + 1 + j, k], cfg.state_dtype)

    return causal_conv


def update_program(cfg: ConvUpdateConfig):
    """The one-token update prim_func: grid (C / block_c, N), block_c threads."""
    f32, C, W, BC = "float32", cfg.channels, cfg.width, cfg.block_c
    H = W - 1
    n, lx, npool, nslot = T.dynamic("n"), T.dynamic("lx"), T.dynamic("npool"), T.dynamic("nslot")

    @T.prim_func
    def conv_update(
        x: T.Tensor((lx,), cfg.dtype),
        weight: T.Tensor((C, W), cfg.weight_dtype),
        conv_state: T.Tensor((npool, C, H), cfg.state_dtype),
        slots: T.Tensor((nslot,), cfg.slot_dtype),
        y: T.Tensor((n, C), cfg.dtype),
        sx: T.int32,
    ):
        with T.Kernel(T.ceildiv(C, BC), n, threads=BC) as (bc, bn):
            win = T.alloc_local((W,), f32)
            acc = T.alloc_local((1,), f32)
            for c in T.Parallel(BC):
                ch = bc * BC + c
                if ch < C:
                    row = slots[bn] if cfg.has_slots else bn
                    for j in T.unroll(H):
                        win[j] = T.cast(conv_state[row, ch, j], f32)
                    win[H] = T.cast(x[bn * sx + ch], f32)
                    acc[0] = 0.0
                    for j in T.unroll(W):
                        acc[0] += win[j] * T.cast(weight[ch, j], f32)
                    y[bn, ch] = T.cast(_silu(acc[0]), cfg.dtype)
                    for j in T.unroll(H):
                        conv_state[row, ch, j] = T.cast(win[j + 1], cfg.state_dtype)

    return conv_update


def _vectors(x: torch.Tensor, vec: int) -> tuple[torch.Tensor, int, int]:
    """(x as [rows, vec] vectors, batch and token strides in elements, multiples of vec) for x [B, T, C]
    with C % vec == 0.

    A view when x's used strides are multiples of vec and its data is vector-aligned (the model's
    slice of its projection); a contiguous copy otherwise.
    """
    flat, strides = build.flat_view(x, 1)
    strides = [0 if size == 1 else stride for size, stride in zip(x.shape, strides)]
    if any(s % vec for s in strides) or flat.data_ptr() % (vec * x.element_size()):
        flat, strides = build.flat_view(x.contiguous(), 1)
    return flat.view(-1, vec), *strides


def causal_conv1d(
    x: torch.Tensor, weight: torch.Tensor, *, conv_state: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None, tiles: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal conv + SiLU on CUDA; arguments and results as `qla_agent.kernels.causal_conv1d`.

    x [B,T,C] (rows may be strided); weight [C,W]; conv_state [N,C,W-1] or None; cu_seqlens [N+1]
    (B = 1) or None -> y [B,T,C] in x.dtype, final_conv_state [N,C,W-1] in conv_state's dtype
    (x's without one). cu_seqlens is read on the device only. tiles: ConvConfig tile fields to
    override (benchmarks).
    """
    batch, seqlen, channels = x.shape
    width = weight.shape[1]
    num_seqs = batch if cu_seqlens is None else cu_seqlens.shape[0] - 1
    state_dtype = x.dtype if conv_state is None else conv_state.dtype
    tl = build.TORCH_TO_TL
    cfg = ConvConfig(
        channels=channels, width=width, dtype=tl[x.dtype], weight_dtype=tl[weight.dtype], state_dtype=tl[state_dtype],
        has_state=conv_state is not None, varlen=cu_seqlens is not None, **(tiles or {}),
    )
    arch, _ = build.device_facts(x.device)
    kernel = build.launcher(conv_program, cfg, arch)
    xv, sxb, sxt = _vectors(x, cfg.vec)
    wv = weight.contiguous()
    if wv.data_ptr() % (cfg.vec * wv.element_size()):
        wv = wv.clone()
    if conv_state is None:
        conv_state = build.placeholder((num_seqs, channels, width - 1), state_dtype, x.device)
    if cu_seqlens is None:
        cu = build.placeholder((2,), torch.int32, x.device)
    else:
        cu = cu_seqlens if cu_seqlens.dtype == torch.int32 else cu_seqlens.to(torch.int32)
    y = torch.empty((batch, seqlen, channels), dtype=x.dtype, device=x.device)
    final = torch.empty((num_seqs, channels, width - 1), dtype=state_dtype, device=x.device)
    kernel(
        xv, wv.view(-1, cfg.vec), conv_state.contiguous(), cu.contiguous(), y, final, sxb, sxt, num_seqs.bit_length()
    )
    return y, final


def causal_conv1d_update(
    x: torch.Tensor, weight: torch.Tensor, conv_state: torch.Tensor, slots: torch.Tensor | None = None,
) -> torch.Tensor:
    """One token per sequence on CUDA: x [N,C] (rows may be strided); conv_state pool [S,C,W-1],
    contiguous, updated in place at rows slots (rows 0..N-1 if None) -> y [N,C] in x.dtype."""
    count, channels = x.shape
    tl = build.TORCH_TO_TL
    cfg = ConvUpdateConfig(
        channels=channels, width=weight.shape[1], dtype=tl[x.dtype], weight_dtype=tl[weight.dtype],
        state_dtype=tl[conv_state.dtype], slot_dtype=tl[torch.int32 if slots is None else slots.dtype],
        has_slots=slots is not None,
    )
    arch, _ = build.device_facts(x.device)
    kernel = build.launcher(update_program, cfg, arch)
    y = torch.empty((count, channels), dtype=x.dtype, device=x.device)
    if count == 0:
        return y
    flat, (sx,) = build.flat_view(x, 1)
    if slots is None:
        slots = build.placeholder((1,), torch.int32, x.device)
    kernel(flat, weight.contiguous(), conv_state, slots.contiguous(), y, sx)
    return y
