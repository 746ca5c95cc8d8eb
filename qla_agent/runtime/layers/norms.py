"""RMSNorms of the hybrid Qwen models: zero-centred (weight stores w - 1) and the GDN output's gated one."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _rms(x: Tensor, eps: float) -> Tensor:
    """x * rsqrt(mean(x²) + eps) in fp32."""
    x = x.float()
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


class ZeroCenteredRMSNorm(nn.Module):
    """y = rms(x) * (1 + w), computed in fp32, cast back to x.dtype. x [..., dim]."""

    def __init__(self, dim: int, eps: float, *, dtype: torch.dtype | None = None, device=None) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim, dtype=dtype, device=device))

    def forward(self, x: Tensor) -> Tensor:
        return (_rms(x, self.eps) * (1.0 + self.weight.float())).to(x.dtype)


class GatedRMSNorm(nn.Module):
    """y = (rms(x) * w) * silu(z) per head (plain weight, no +1). x, z [..., dim]."""

    def __init__(self, dim: int, eps: float, *, dtype: torch.dtype | None = None, device=None) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, dtype=dtype, device=device))

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        # Matches transformers' rounding: normalise in fp32, scale in x.dtype, gate in fp32.
        y = self.weight * _rms(x, self.eps).to(x.dtype)
        return (y * F.silu(z.float())).to(x.dtype)
