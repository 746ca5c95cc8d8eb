"""Checkpoint tensor names -> model parameters, for every supported checkpoint layout.

Layouts differ in the prefix (`model.` vs Qwen3.5's VLM `model.language_model.`), the GDN projections
(`qwen3_next` fused vs `qwen3_5` split, see the modules named after them) and the MoE experts
(per-expert tensors vs fused `gate_up_proj`/`down_proj`). The layout is read off the tensor names.
"""

from __future__ import annotations

from collections.abc import Collection

from qla_agent.runtime.config import ModelConfig
from qla_agent.runtime.weights import qwen3_5, qwen3_next
from qla_agent.runtime.weights.placement import Placement

__all__ = ["IGNORED_PREFIXES", "Placement", "plan"]

# Multi-token-prediction head and vision tower: not part of the text decoder.
IGNORED_PREFIXES = ("mtp.", "model.visual.", "model.mtp.")
VLM_PREFIX = "model.language_model."


def _prefix(names: Collection[str]) -> str:
    return VLM_PREFIX if any(n.startswith(VLM_PREFIX) for n in names) else "model."


def _gdn(config: ModelConfig, src: str, dst: str, names: Collection[str]) -> dict[str, Placement]:
    fused = f"{src}in_proj_qkvz.weight" in names
    split = f"{src}in_proj_qkv.weight" in names
    module = qwen3_next if fused or (config.family == "qwen3_next" and not split) else qwen3_5
    c = config
    out = module.gdn_projections(c, src, dst)
    out[f"{src}conv1d.weight"] = Placement(f"{dst}conv_weight", (c.conv_dim, 1, c.linear_conv_kernel_dim))
    out[f"{src}A_log"] = Placement(f"{dst}A_log", (c.linear_num_value_heads,))
    out[f"{src}dt_bias"] = Placement(f"{dst}dt_bias", (c.linear_num_value_heads,))
    out[f"{src}norm.weight"] = Placement(f"{dst}norm.weight", (c.linear_value_head_dim,))
    out[f"{src}out_proj.weight"] = Placement(f"{dst}out_proj.weight", (c.hidden_size, c.linear_value_dim))
    return out


def _attention(config: ModelConfig, src: str, dst: str) -> dict[str, Placement]:
    """q_proj, k_proj and v_proj become consecutive row blocks of the model's qkv_proj (one GEMM)."""
    c = config
    nh, nkv, d, h = c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.hidden_size
    out = {}
    start = 0
    for name, rows in (("q_proj", 2 * nh * d), ("k_proj", nkv * d), ("v_proj", nkv * d)):
        out[f"{src}{name}.weight"] = Placement(f"{dst}qkv_proj.weight", (rows, h), (slice(start, start + rows),))
        start += rows
    shapes = {"o_proj.weight": (h, nh * d), "q_norm.weight": (d,), "k_norm.weight": (d,)}
    out.update({f"{src}{name}": Placement(f"{dst}{name}", shape) for name, shape in shapes.items()})
    return out


def _swiglu(src: str, dst: str, hidden: int, inter: int) -> dict[str, Placement]:
    """gate_proj and up_proj become the two halves of the model's fused gate_up_proj (one GEMM)."""
    return {
        f"{src}gate_proj.weight": Placement(f"{dst}gate_up_proj.weight", (inter, hidden), (slice(0, inter),)),
        f"{src}up_proj.weight": Placement(f"{dst}gate_up_proj.weight", (inter, hidden), (slice(inter, 2 * inter),)),
        f"{src}down_proj.weight": Placement(f"{dst}down_proj.weight", (hidden, inter)),
    }


def _moe(config: ModelConfig, src: str, dst: str, names: Collection[str]) -> dict[str, Placement]:
    c = config
    n, h, inter = c.num_experts, c.hidden_size, c.moe_intermediate_size
    out = {
        f"{src}gate.weight": Placement(f"{dst}gate.weight", (n, h)),
        f"{src}shared_expert_gate.weight": Placement(f"{dst}shared_expert_gate.weight", (1, h)),
        **_swiglu(f"{src}shared_expert.", f"{dst}shared_expert.", h, c.shared_expert_intermediate_size),
    }
    gate_up, down = f"{dst}experts.gate_up_proj", f"{dst}experts.down_proj"
    if f"{src}experts.gate_up_proj" in names:
        out[f"{src}experts.gate_up_proj"] = Placement(gate_up, (n, 2 * inter, h))
        out[f"{src}experts.down_proj"] = Placement(down, (n, h, inter))
        return out
    for e in range(n):
        s = f"{src}experts.{e}."
        out[f"{s}gate_proj.weight"] = Placement(gate_up, (inter, h), (e, slice(0, inter)))
        out[f"{s}up_proj.weight"] = Placement(gate_up, (inter, h), (e, slice(inter, 2 * inter)))
        out[f"{s}down_proj.weight"] = Placement(down, (h, inter), (e,))
    return out


def plan(config: ModelConfig, names: Collection[str]) -> dict[str, Placement]:
    """Every checkpoint tensor the model needs -> its placement, for the layout `names` is in."""
    c, p = config, _prefix(names)
    out = {
        f"{p}embed_tokens.weight": Placement("embed_tokens.weight", (c.vocab_size, c.hidden_size)),
        f"{p}norm.weight": Placement("norm.weight", (c.hidden_size,)),
    }
    if not c.tie_word_embeddings:
        out["lm_head.weight"] = Placement("lm_head.weight", (c.vocab_size, c.hidden_size))
    for i, kind in enumerate(c.layer_types):
        src, dst = f"{p}layers.{i}.", f"layers.{i}."
        out[f"{src}input_layernorm.weight"] = Placement(f"{dst}input_layernorm.weight", (c.hidden_size,))
        out[f"{src}post_attention_layernorm.weight"] = Placement(f"{dst}post_attention_layernorm.weight", (c.hidden_size,))
        if kind == "linear_attention":
            out.update(_gdn(c, f"{src}linear_attn.", f"{dst}linear_attn.", names))
        else:
            out.update(_attention(c, f"{src}self_attn.", f"{dst}self_attn."))
        if c.is_moe_layer(i):
            out.update(_moe(c, f"{src}mlp.", f"{dst}mlp.", names))
        else:
            out.update(_swiglu(f"{src}mlp.", f"{dst}mlp.", c.hidden_size, c.intermediate_size))
    return out
