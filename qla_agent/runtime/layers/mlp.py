"""Feed-forward blocks: dense SwiGLU MLP and the sparse MoE with a sigmoid-gated shared expert."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qla_agent import kernels
from qla_agent.runtime.config import ModelConfig


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)) with gate and up as one GEMM: gate_up_proj [2I, H] holds the
    checkpoint's gate_proj rows then its up_proj rows; down_proj [H, I]."""

    def __init__(self, hidden: int, intermediate: int, *, dtype: torch.dtype | None = None, device=None) -> None:
        super().__init__()
        self.gate_up_proj = nn.Linear(hidden, 2 * intermediate, bias=False, dtype=dtype, device=device)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False, dtype=dtype, device=device)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(kernels.silu_and_mul(self.gate_up_proj(x)))


class Experts(nn.Module):
    """Routed experts, fused: gate_up_proj [E, 2I, H] (rows [0, I) gate, [I, 2I) up), down_proj [E, H, I]."""

    def __init__(self, n: int, hidden: int, intermediate: int, *, dtype: torch.dtype | None = None, device=None) -> None:
        super().__init__()
        self.gate_up_proj = nn.Parameter(torch.empty(n, 2 * intermediate, hidden, dtype=dtype, device=device))
        self.down_proj = nn.Parameter(torch.empty(n, hidden, intermediate, dtype=dtype, device=device))

    def forward(self, x: Tensor, top_idx: Tensor, top_w: Tensor) -> Tensor:
        """x [T, H], top_idx [T, k] expert ids, top_w [T, k] in x.dtype -> weighted sum [T, H]."""
        out = torch.zeros_like(x)
        k = top_idx.shape[1]
        # Group the (token, slot) pairs by expert with one stable sort: per expert the pairs come in
        # row-major order, as torch.where(top_idx == e) gives them, and one host read covers every expert
        # (a where per expert would sync once per expert).
        flat = top_idx.flatten()
        order = flat.argsort(stable=True)
        experts, counts = flat[order].unique_consecutive(return_counts=True)
        experts, counts = torch.stack([experts, counts]).tolist()
        for e, pairs in zip(experts, order.split(counts)):
            tokens, which = pairs // k, pairs % k
            hidden = kernels.silu_and_mul(F.linear(x[tokens], self.gate_up_proj[e]))
            y = F.linear(hidden, self.down_proj[e]) * top_w[tokens, which, None]
            # A token picks an expert at most once, so `tokens` has no repeats (index_add_ is slow on CPU).
            out[tokens] += y
        return out


class SparseMoE(nn.Module):
    """Softmax router (fp32) -> top-k (renormalised when norm_topk_prob) routed SwiGLU experts, plus
    shared_expert(x) * sigmoid(shared_expert_gate(x)). gate.weight [E, H]; shared_expert_gate [1, H]."""

    def __init__(self, config: ModelConfig, *, dtype: torch.dtype | None = None, device=None) -> None:
        super().__init__()
        c = config
        self.top_k, self.norm_topk_prob = c.num_experts_per_tok, c.norm_topk_prob
        self.gate = nn.Linear(c.hidden_size, c.num_experts, bias=False, dtype=dtype, device=device)
        self.experts = Experts(c.num_experts, c.hidden_size, c.moe_intermediate_size, dtype=dtype, device=device)
        self.shared_expert = SwiGLU(c.hidden_size, c.shared_expert_intermediate_size, dtype=dtype, device=device)
        self.shared_expert_gate = nn.Linear(c.hidden_size, 1, bias=False, dtype=dtype, device=device)

    def forward(self, x: Tensor) -> Tensor:
        """x [T, H] -> [T, H]."""
        probs = torch.softmax(self.gate(x), dim=-1, dtype=torch.float32)
        top_w, top_idx = torch.topk(probs, self.top_k, dim=-1)
        if self.norm_topk_prob:
            top_w = top_w / top_w.sum(dim=-1, keepdim=True)
        routed = self.experts(x, top_idx, top_w.to(x.dtype))
        return routed + torch.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)


def make_ffn(config: ModelConfig, layer: int, *, dtype: torch.dtype | None = None, device=None) -> nn.Module:
    """The FFN of decoder layer `layer`: SparseMoE or a dense SwiGLU of intermediate_size."""
    if config.is_moe_layer(layer):
        return SparseMoE(config, dtype=dtype, device=device)
    return SwiGLU(config.hidden_size, config.intermediate_size, dtype=dtype, device=device)
