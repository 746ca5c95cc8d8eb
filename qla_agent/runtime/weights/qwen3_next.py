"""Qwen3-Next GDN projections: fused in_proj_qkvz / in_proj_ba, interleaved per key-head group.

Per key head g (r = nv / nk value heads each) the fused rows are `[q(dk) k(dk) v(r*dv) z(r*dv)]` and
`[b(r) a(r)]`; the internal in_proj wants `[all q | all k | all v | all z | all b | all a]`, so loading
is a row permutation.
"""

from __future__ import annotations

import torch
from torch import Tensor

from qla_agent.runtime.config import ModelConfig
from qla_agent.runtime.weights.placement import Placement


def _group_major(n_groups: int, parts: list[int]) -> Tensor:
    """Source row order that gathers part p of every group together: [part0 of g0, g1, ..., part1 of g0, ...]."""
    rows = torch.arange(n_groups * sum(parts)).view(n_groups, sum(parts))
    return torch.cat([block.reshape(-1) for block in rows.split(parts, dim=1)])


def qkvz_rows(config: ModelConfig) -> Tensor:
    """Permutation taking in_proj_qkvz rows to the [q | k | v | z] order."""
    c = config
    r = c.linear_num_value_heads // c.linear_num_key_heads
    dk, dv = c.linear_key_head_dim, c.linear_value_head_dim
    return _group_major(c.linear_num_key_heads, [dk, dk, r * dv, r * dv])


def ba_rows(config: ModelConfig) -> Tensor:
    """Permutation taking in_proj_ba rows to the [b | a] order."""
    r = config.linear_num_value_heads // config.linear_num_key_heads
    return _group_major(config.linear_num_key_heads, [r, r])


def gdn_projections(config: ModelConfig, src: str, dst: str) -> dict[str, Placement]:
    """Checkpoint names under `src` (e.g. 'model.layers.0.linear_attn.') -> row blocks of `{dst}in_proj.weight`."""
    c, hidden = config, config.hidden_size
    qkvz = c.conv_dim + c.linear_value_dim
    ba = 2 * c.linear_num_value_heads
    return {
        f"{src}in_proj_qkvz.weight": Placement(f"{dst}in_proj.weight", (qkvz, hidden), (slice(0, qkvz),), qkvz_rows(c)),
        f"{src}in_proj_ba.weight": Placement(f"{dst}in_proj.weight", (ba, hidden), (slice(qkvz, qkvz + ba),), ba_rows(c)),
    }
