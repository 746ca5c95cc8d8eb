"""Qwen3.5 / Qwen3.6 GDN projections: split in_proj_qkv, in_proj_z, in_proj_b, in_proj_a."""

from __future__ import annotations

from qla_agent.runtime.config import ModelConfig
from qla_agent.runtime.weights.placement import Placement


def gdn_projections(config: ModelConfig, src: str, dst: str) -> dict[str, Placement]:
    """Checkpoint names under `src` (e.g. 'model.layers.0.linear_attn.') -> row blocks of `{dst}in_proj.weight`."""
    c, hidden = config, config.hidden_size
    blocks = [("in_proj_qkv", c.conv_dim), ("in_proj_z", c.linear_value_dim),
              ("in_proj_b", c.linear_num_value_heads), ("in_proj_a", c.linear_num_value_heads)]
    out: dict[str, Placement] = {}
    start = 0
    for name, rows in blocks:
        out[f"{src}{name}.weight"] = Placement(f"{dst}in_proj.weight", (rows, hidden), (slice(start, start + rows),))
        start += rows
    return out
