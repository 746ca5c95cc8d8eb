"""TileLang causal depthwise conv1d + SiLU: the prefill over T tokens and the one-token update on a pool.

Math and conventions as `reference_conv` (W taps, weight[:, W-1] on the current token, the state the
last W-1 inputs, oldest first). Both kernels compute in fp32 and read x through a flat view with
row strides, so a slice of the fused input projection needs no copy.

Prefill: grid (C / block_c, T / block_t, B). A CTA stages its tokens plus the W-1 before them in
shared memory (fp32) and, per token, its sequence and that sequence's bounds (B rows, or a walk of
cu_seqlens on the device for packed sequences, B = 1). A tap before its sequence's first token reads
that sequence's conv_state (0 without one). Each sequence's last token writes its final state from
the same taps, so the values are exact copies of inputs.

Update: grid (C / block_c, N). Thread c reads its channel's W-1 state values and the new input,
writes y and the shifted state (in place: each thread touches only its own channel).
"""

from dataclasses import dataclass

import tilelang.language as T
import torch

from qla_agent.kernels.tilelang import build


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
    block_t: int = 32
    block_c: int = 256


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


def _silu(acc):
    return acc / (1.0 + T.exp(-acc))


def conv_program(cfg: ConvConfig):
    """The prefill prim_func: grid (C / block_c, T / block_t, B), block_c threads."""
    f32, C, W, BT, BC = "float32", cfg.channels, cfg.width, cfg.block_t, cfg.block_c
    H = W - 1
    nb, nt, lx, ns, ncu = (T.dynamic(name) for name in ("nb", "nt", "lx", "ns", "ncu"))

    def tap(x_s, seq_s, conv_state, row, pos, i, c, ch):
        """The input at packed position pos (staged at `row`); before the sequence's first token, its
        state (or 0). Builds an expression at trace time."""
        bos = seq_s[1, i]
        if cfg.has_state:
            return T.if_then_else(pos >= bos, x_s[row, c], T.cast(conv_state[seq_s[0, i], ch, H + pos - bos], f32))
        return T.if_then_else(pos >= bos, x_s[row, c], 0.0)

    @T.prim_func
    def causal_conv(
        x: T.Tensor((lx,), cfg.dtype),
        weight: T.Tensor((C, W), cfg.weight_dtype),
        conv_state: T.Tensor((ns, C, H), cfg.state_dtype),
        cu_seqlens: T.Tensor((ncu,), "int32"),
        y: T.Tensor((nb, nt, C), cfg.dtype),
        final_state: T.Tensor((ns, C, H), cfg.state_dtype),
        sxb: T.int32,
        sxt: T.int32,
    ):
        with T.Kernel(T.ceildiv(C, BC), T.ceildiv(nt, BT), nb, threads=BC) as (bc, bt, bb):
            w_s = T.alloc_shared((W, BC), f32, scope="shared")
            # Per staged token: its sequence, that sequence's first and one-past-last packed position.
            seq_s = T.alloc_shared((3, BT), "int32", scope="shared")
            x_s = T.alloc_shared((BT + H, BC), f32)
            acc = T.alloc_local((1,), f32)
            base = bt * BT - H
            for j, c in T.Parallel(W, BC):
                w_s[j, c] = T.if_then_else(bc * BC + c < C, T.cast(weight[bc * BC + c, j], f32), 0.0)
            for i in T.Parallel(BT):
                if cfg.varlen:
                    seq_s[0, i] = 0
                    seq_s[1, i] = 0
                    seq_s[2, i] = 0
                    for n in T.serial(ncu - 1):
                        if cu_seqlens[n] <= bt * BT + i and bt * BT + i < cu_seqlens[n + 1]:
                            seq_s[0, i] = n
                            seq_s[1, i] = cu_seqlens[n]
                            seq_s[2, i] = cu_seqlens[n + 1]
                else:
                    seq_s[0, i] = bb
                    seq_s[1, i] = 0
                    seq_s[2, i] = nt
            for i, c in T.Parallel(BT + H, BC):
                ch = bc * BC + c
                if ch < C and base + i >= 0 and base + i < nt:
                    x_s[i, c] = T.cast(x[bb * sxb + (base + i) * sxt + ch], f32)
                else:
                    x_s[i, c] = 0.0
            for i, c in T.Parallel(BT, BC):
                ch = bc * BC + c
                t = bt * BT + i
                if t < nt and ch < C:
                    acc[0] = 0.0
                    for j in T.unroll(W):
                        acc[0] += w_s[j, c] * tap(x_s, seq_s, conv_state, i + j, t - H + j, i, c, ch)
                    y[bb, t, ch] = T.cast(_silu(acc[0]), cfg.dtype)
                    if t == seq_s[2, i] - 1:
                        for j in T.unroll(H):
                            final_state[seq_s[0, i], ch, j] = T.cast(
                                tap(x_s, seq_s, conv_state, i + 1 + j, t - H + 1 + j, i, c, ch), cfg.state_dtype
                            )

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


def causal_conv1d(
    x: torch.Tensor, weight: torch.Tensor, *, conv_state: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal conv + SiLU on CUDA; arguments and results as `qla_agent.kernels.causal_conv1d`.

    x [B,T,C] (rows may be strided); weight [C,W]; conv_state [N,C,W-1] or None; cu_seqlens [N+1]
    (B = 1) or None -> y [B,T,C] in x.dtype, final_conv_state [N,C,W-1] in conv_state's dtype
    (x's without one). cu_seqlens is read on the device only.
    """
    batch, seqlen, channels = x.shape
    width = weight.shape[1]
    num_seqs = batch if cu_seqlens is None else cu_seqlens.shape[0] - 1
    state_dtype = x.dtype if conv_state is None else conv_state.dtype
    tl = build.TORCH_TO_TL
    cfg = ConvConfig(
        channels=channels, width=width, dtype=tl[x.dtype], weight_dtype=tl[weight.dtype], state_dtype=tl[state_dtype],
        has_state=conv_state is not None, varlen=cu_seqlens is not None,
    )
    arch, _ = build.device_facts(x.device)
    kernel = build.compiled(conv_program, cfg, arch)
    flat, (sxb, sxt) = build.flat_view(x, 1)
    if conv_state is None:
        conv_state = build.placeholder((num_seqs, channels, width - 1), state_dtype, x.device)
    if cu_seqlens is None:
        cu = build.placeholder((2,), torch.int32, x.device)
    else:
        cu = cu_seqlens if cu_seqlens.dtype == torch.int32 else cu_seqlens.to(torch.int32)
    y = torch.empty((batch, seqlen, channels), dtype=x.dtype, device=x.device)
    final = torch.empty((num_seqs, channels, width - 1), dtype=state_dtype, device=x.device)
    kernel(flat, weight.contiguous(), conv_state.contiguous(), cu.contiguous(), y, final, sxb, sxt)
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
    kernel = build.compiled(update_program, cfg, arch)
    y = torch.empty((count, channels), dtype=x.dtype, device=x.device)
    if count == 0:
        return y
    flat, (sx,) = build.flat_view(x, 1)
    if slots is None:
        slots = build.placeholder((1,), torch.int32, x.device)
    kernel(flat, weight.contiguous(), conv_state, slots.contiguous(), y, sx)
    return y
