"""TileLang causal depthwise conv1d + SiLU: the prefill over T tokens and the one-token update on a pool.

Math and conventions as `reference_conv` (W taps, weight[:, W-1] on the current token, the state the
last W-1 inputs, oldest first). Both kernels compute in fp32 and read x through a flat view with
row strides, so a slice of the fused input projection needs no copy.

Prefill: grid (C / block_c, T / block_t, B). A CTA stages its tokens plus the W-1 before them in
shared memory (fp32), taking the ones before the sequence start from conv_state (zeros without
one), then computes its outputs from shared memory. The CTA holding the last token writes the final
state from the same staging rows, so the values are exact copies. Packed varlen (cu_seqlens) is not
implemented here: it falls back to the reference.

Update: grid (C / block_c, N). Thread c reads its channel's W-1 state values and the new input,
writes y and the shifted state (in place: each thread touches only its own channel).
"""

from dataclasses import dataclass

import tilelang.language as T
import torch

from qla_agent.kernels.tilelang import build


@dataclass(frozen=True, slots=True)
class ConvConfig:
    """One specialisation of the prefill conv (B and T are runtime values)."""

    channels: int
    width: int
    dtype: str  # x and y
    weight_dtype: str
    state_dtype: str  # conv_state and the final state
    has_state: bool
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
    nb, nt, lx, ns = T.dynamic("nb"), T.dynamic("nt"), T.dynamic("lx"), T.dynamic("ns")

    @T.prim_func
    def causal_conv(
        x: T.Tensor((lx,), cfg.dtype),
        weight: T.Tensor((C, W), cfg.weight_dtype),
        conv_state: T.Tensor((ns, C, H), cfg.state_dtype),
        y: T.Tensor((nb, nt, C), cfg.dtype),
        final_state: T.Tensor((nb, C, H), cfg.state_dtype),
        sxb: T.int32,
        sxt: T.int32,
    ):
        with T.Kernel(T.ceildiv(C, BC), T.ceildiv(nt, BT), nb, threads=BC) as (bc, bt, bb):
            w_s = T.alloc_shared((W, BC), f32, scope="shared")
            x_s = T.alloc_shared((BT + H, BC), f32)
            acc = T.alloc_local((1,), f32)
            t0 = bt * BT - H
            for j, c in T.Parallel(W, BC):
                w_s[j, c] = T.if_then_else(bc * BC + c < C, T.cast(weight[bc * BC + c, j], f32), 0.0)
            for i, c in T.Parallel(BT + H, BC):
                ch = bc * BC + c
                if ch < C and t0 + i >= 0 and t0 + i < nt:
                    x_s[i, c] = T.cast(x[bb * sxb + (t0 + i) * sxt + ch], f32)
                elif cfg.has_state and ch < C and t0 + i < 0:
                    x_s[i, c] = T.cast(conv_state[bb, ch, H + t0 + i], f32)
                else:
                    x_s[i, c] = 0.0
            for i, c in T.Parallel(BT, BC):
                if bt * BT + i < nt and bc * BC + c < C:
                    acc[0] = 0.0
                    for j in T.unroll(W):
                        acc[0] += x_s[i + j, c] * w_s[j, c]
                    y[bb, bt * BT + i, bc * BC + c] = T.cast(_silu(acc[0]), cfg.dtype)
            if bt == T.ceildiv(nt, BT) - 1:
                for j, c in T.Parallel(H, BC):
                    if bc * BC + c < C:
                        final_state[bb, bc * BC + c, j] = T.cast(x_s[nt - bt * BT + j, c], cfg.state_dtype)

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
    """Causal conv + SiLU on CUDA; arguments and results as `qla_agent.kernels.causal_conv1d` (no cu_seqlens).

    x [B,T,C] (rows may be strided); weight [C,W]; conv_state [B,C,W-1] or None
    -> y [B,T,C] in x.dtype, final_conv_state [B,C,W-1] in conv_state's dtype (x's without one).
    """
    assert cu_seqlens is None, "packed varlen conv runs on the reference (see supports)"
    batch, seqlen, channels = x.shape
    width = weight.shape[1]
    state_dtype = x.dtype if conv_state is None else conv_state.dtype
    tl = build.TORCH_TO_TL
    cfg = ConvConfig(
        channels=channels, width=width, dtype=tl[x.dtype], weight_dtype=tl[weight.dtype], state_dtype=tl[state_dtype],
        has_state=conv_state is not None,
    )
    arch, _ = build.device_facts(x.device)
    kernel = build.compiled(conv_program, cfg, arch)
    flat, (sxb, sxt) = build.flat_view(x, 1)
    if conv_state is None:
        conv_state = build.placeholder((1, channels, width - 1), state_dtype, x.device)
    y = torch.empty((batch, seqlen, channels), dtype=x.dtype, device=x.device)
    final = torch.empty((batch, channels, width - 1), dtype=state_dtype, device=x.device)
    kernel(flat, weight.contiguous(), conv_state.contiguous(), y, final, sxb, sxt)
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
