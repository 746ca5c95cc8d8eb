"""RMSNorm (alone or with RoPE), gated RMSNorm, SiLU-mul and sigmoid-gate-mul reference: the executable
spec of the model's row-wise elementwise ops.

Plain torch, any device, any float dtype. The rounding structure is that of the Qwen hybrid models in
transformers (and `qla_agent.runtime.layers.norms`), which every fast kernel must reproduce:

    x, residual, z  [..., D]   rows normalised independently (D = hidden size, or a head's width)
    weight          [D]        zero-centred norms store w - 1 and scale by (1 + w)
    gate, up        [..., I]
    x, gate         [..., D]   sigmoid_gate_mul: x an attention output head, gate its gate columns
    x               [T, heads, D], cos, sin [T, 1, R]   rms_norm_rope: attention q/k heads, R = rotary_dim

    rms(x)          = xf * rsqrt(mean(xf^2) + eps),  xf = x in fp32 (fp64 when x is fp64)
    rms_norm        = (rms(x) * (1 + w in fp32)).to(x.dtype)          zero_centered (w in fp32 when plain)
    add_rms_norm    : s = (x + residual).to(x.dtype)                  the sum rounded to x.dtype, as the
                      y = rms_norm(s)                                 model adds residuals in its dtype
    gated_rms_norm  = ((w * rms(x).to(x.dtype)) * silu(z in fp32)).to(x.dtype)
                      (w * ... is computed in torch's promotion of w's and x's dtypes and rounded there)
    silu_mul        = silu(gate) * up                                 silu in fp32 rounded to gate.dtype,
                                                                      then the product rounded again
    sigmoid_gate_mul = x * sigmoid(gate)                              sigmoid in fp32 rounded to gate.dtype,
                                                                      then the product rounded again
    rms_norm_rope   : n = rms_norm(x) (zero_centered, rounded to x.dtype), then neox RoPE on dims [0, R):
                      n[:R] = n[:R] * cos + cat(-n[R/2:R], n[:R/2]) * sin, dims [R, D) pass through;
                      each product and the sum is one torch op in x.dtype (fp32 inside, rounded to
                      x.dtype), as transformers' apply_rotary_pos_emb on the normed q and k

mean(xf^2) is the fp32 sum of squares times 1/D in fp32 (torch's mean); a kernel may sum in another
order, so its outputs agree with these to the last bit of the output dtype only where the fp32 results
round alike (tests bound the difference by one unit in the last place). The sum s is exact.
"""

import torch
import torch.nn.functional as F

from qla_agent.kernels.checks_norms import (
    check_gated_rms_norm, check_rms_norm, check_rms_norm_rope, check_sigmoid_gate_mul, check_silu_mul,
)


def _rms(x: torch.Tensor, eps: float) -> torch.Tensor:
    """x * rsqrt(mean(x^2) + eps) in fp32 (fp64 for fp64 x)."""
    x = x.to(torch.promote_types(x.dtype, torch.float32))
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def _scale(weight: torch.Tensor, dtype: torch.dtype, zero_centered: bool) -> torch.Tensor:
    weight = weight.to(dtype)
    return 1.0 + weight if zero_centered else weight


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, zero_centered: bool) -> torch.Tensor:
    normed = _rms(x, eps)
    return (normed * _scale(weight, normed.dtype, zero_centered)).to(x.dtype)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, *, eps: float, zero_centered: bool = True) -> torch.Tensor:
    """x [..., D], weight [D] -> y [..., D] in x.dtype."""
    check_rms_norm(x, weight, eps=eps)
    return _rms_norm(x, weight, eps, zero_centered)


def rms_norm_rope(
    x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *, eps: float
) -> torch.Tensor:
    """x [T, heads, D], weight [D] (zero-centred), cos, sin [T, 1, R] -> y [T, heads, D] in x.dtype."""
    check_rms_norm_rope(x, weight, cos, sin, eps=eps)
    y = _rms_norm(x, weight, eps, True)
    rotary_dim = cos.shape[-1]
    half = rotary_dim // 2
    rotated = torch.cat([-y[..., half:rotary_dim], y[..., :half]], dim=-1)
    y[..., :rotary_dim] = y[..., :rotary_dim] * cos + rotated * sin
    return y


def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, *, eps: float, zero_centered: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """x, residual [..., D], weight [D] -> (y, s) [..., D] in x.dtype: s = x + residual, y = rms_norm(s)."""
    check_rms_norm(x, weight, eps=eps, residual=residual)
    total = (x + residual).to(x.dtype)
    return _rms_norm(total, weight, eps, zero_centered), total


def gated_rms_norm(x: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, *, eps: float) -> torch.Tensor:
    """x, z [..., D], weight [D] (plain, no +1) -> y [..., D] in x.dtype."""
    check_gated_rms_norm(x, z, weight, eps=eps)
    scaled = weight * _rms(x, eps).to(x.dtype)
    gate = z.to(torch.promote_types(z.dtype, torch.float32))
    return (scaled * F.silu(gate)).to(x.dtype)


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """gate, up [..., I] -> silu(gate) * up [..., I] in torch's promotion of their dtypes."""
    check_silu_mul(gate, up)
    return F.silu(gate) * up


def sigmoid_gate_mul(x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """x, gate [..., D] -> x * sigmoid(gate) [..., D] in torch's promotion of their dtypes."""
    check_sigmoid_gate_mul(x, gate)
    return x * torch.sigmoid(gate)
