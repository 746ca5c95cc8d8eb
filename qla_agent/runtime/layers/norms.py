"""RMSNorms of the hybrid Qwen models: zero-centred (weight stores w - 1) and the GDN output's gated one.

The math (fp32 inside, transformers' rounding) is `qla_agent.kernels.reference_norms`; these modules hold
the weights and call the fused kernels.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from qla_agent import kernels


class ZeroCenteredRMSNorm(nn.Module):
    """y = rms(x) * (1 + w), computed in fp32, cast back to x.dtype. x [..., dim]."""

    def __init__(self, dim: int, eps: float, *, dtype: torch.dtype | None = None, device=None) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim, dtype=dtype, device=device))

    def forward(self, x: Tensor) -> Tensor:
        return kernels.rms_norm(x, self.weight, eps=self.eps)

    def add(self, x: Tensor, residual: Tensor) -> tuple[Tensor, Tensor]:
        """(norm(s), s) with s = x + residual in x.dtype: the residual add fused into the norm."""
        return kernels.add_rms_norm(x, residual, self.weight, eps=self.eps)


class GatedRMSNorm(nn.Module):
    """y = (rms(x) * w) * silu(z) per head (plain weight, no +1). x, z [..., dim]."""

    def __init__(self, dim: int, eps: float, *, dtype: torch.dtype | None = None, device=None) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, dtype=dtype, device=device))

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        return kernels.gated_rms_norm(x, z, self.weight, eps=self.eps)
