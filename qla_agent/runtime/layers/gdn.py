"""Gated DeltaNet token mixer: fused input projection, causal conv, gated delta rule, gated norm."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qla_agent import kernels
from qla_agent.runtime.config import ModelConfig
from qla_agent.runtime.layers.norms import GatedRMSNorm


class GatedDeltaNet(nn.Module):
    """One GDN layer. Parameters (internal layout, both checkpoint layouts map onto it):

    in_proj.weight [conv_dim + nv*dv + 2*nv, H]: rows [q | k | v | z | b | a] (q, k, v head-major);
    conv_weight [conv_dim, W]; A_log, dt_bias [nv] fp32; norm.weight [dv]; out_proj.weight [H, nv*dv].
    """

    def __init__(self, config: ModelConfig, *, dtype: torch.dtype | None = None, device=None) -> None:
        super().__init__()
        c = config
        self.nk, self.nv = c.linear_num_key_heads, c.linear_num_value_heads
        self.dk, self.dv = c.linear_key_head_dim, c.linear_value_head_dim
        self.key_dim, self.value_dim, self.conv_dim = c.linear_key_dim, c.linear_value_dim, c.conv_dim
        self.scale = self.dk**-0.5
        rows = self.conv_dim + self.value_dim + 2 * self.nv
        self.in_proj = nn.Linear(c.hidden_size, rows, bias=False, dtype=dtype, device=device)
        self.conv_weight = nn.Parameter(torch.empty(self.conv_dim, c.linear_conv_kernel_dim, dtype=dtype, device=device))
        # Gate parameters stay fp32 whatever the model dtype: the gates are computed in fp32.
        self.A_log = nn.Parameter(torch.empty(self.nv, dtype=torch.float32, device=device))
        self.dt_bias = nn.Parameter(torch.ones(self.nv, dtype=torch.float32, device=device))
        self.norm = GatedRMSNorm(self.dv, c.rms_norm_eps, dtype=dtype, device=device)
        self.out_proj = nn.Linear(self.value_dim, c.hidden_size, bias=False, dtype=dtype, device=device)

    def _project(self, x: Tensor, *, separate: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """x [T, H] -> qkv [T, conv_dim], z [T, nv, dv], b [T, nv], a [T, nv].

        separate: one GEMM per output group (row slices of in_proj), so qkv and z come out contiguous
        for the conv and the gated norm (prefill); otherwise one GEMM and strided views (decode, where
        the launch count matters more than the layout).
        """
        sizes = [self.conv_dim, self.value_dim, 2 * self.nv]
        if separate:
            qkv, z, ba = (F.linear(x, w) for w in self.in_proj.weight.split(sizes))
        else:
            qkv, z, ba = self.in_proj(x).split(sizes, dim=-1)
        b, a = ba.chunk(2, dim=-1)
        return qkv, z.unflatten(-1, (self.nv, self.dv)), b, a

    def _heads(self, u: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Conv output u [T, conv_dim] -> q, k [T, nk, dk], v [T, nv, dv]."""
        q, k, v = u.split([self.key_dim, self.key_dim, self.value_dim], dim=-1)
        return q.unflatten(-1, (self.nk, self.dk)), k.unflatten(-1, (self.nk, self.dk)), v.unflatten(-1, (self.nv, self.dv))

    def _output(self, o: Tensor, z: Tensor) -> Tensor:
        """o, z [T, nv, dv] -> [T, H]."""
        return self.out_proj(self.norm(o, z).flatten(-2))

    def prefill(self, x: Tensor, recurrent: Tensor, conv: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x [T, H] with the states before it, recurrent [nv, dk, dv] fp32 and conv [conv_dim, W-1]
        -> ([T, H], the states after it): new tensors, the inputs are left as they were (no copy back)."""
        qkv, z, b, a = self._project(x, separate=True)
        u, conv_out = kernels.causal_conv1d(qkv[None], self.conv_weight, conv_state=conv[None])
        q, k, v = self._heads(u[0])
        o, final = kernels.gdn_prefill(
            q[None], k[None], v[None], a[None], b[None],
            scale=self.scale, initial_state=recurrent[None], output_final_state=True,
            use_qk_l2norm=True, A_log=self.A_log, dt_bias=self.dt_bias,
        )
        return self._output(o[0], z), final[0], conv_out[0]

    def decode(self, x: Tensor, recurrent_pool: Tensor, conv_pool: Tensor, slots: Tensor) -> Tensor:
        """One token for each of N sessions: x [N, H] -> [N, H].

        recurrent_pool [S, nv, dk, dv] fp32 and conv_pool [S, conv_dim, W-1] are updated in place at rows
        `slots` [N].
        """
        qkv, z, b, a = self._project(x, separate=False)
        u = kernels.causal_conv1d_update(qkv, self.conv_weight, conv_pool, slots)
        q, k, v = self._heads(u)
        o = kernels.gdn_decode(
            q, k, v, a, b, recurrent_pool, slots,
            scale=self.scale, use_qk_l2norm=True, A_log=self.A_log, dt_bias=self.dt_bias,
        )
        return self._output(o, z)
