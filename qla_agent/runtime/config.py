"""ModelConfig: the text-model hyperparameters of a hybrid Qwen checkpoint, parsed from config.json."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qla_agent.errors import CheckpointError

logger = logging.getLogger(__name__)

# config.json `model_type` -> family; VLM types keep the text part in `text_config`.
FAMILIES: dict[str, str] = {
    "qwen3_next": "qwen3_next",
    "qwen3_5": "qwen3_5",
    "qwen3_5_text": "qwen3_5",
    "qwen3_5_moe": "qwen3_5_moe",
    "qwen3_5_moe_text": "qwen3_5_moe",
}
VLM_TYPES = frozenset({"qwen3_5", "qwen3_5_moe"})
LAYER_TYPES = frozenset({"linear_attention", "full_attention"})

# Keys without a sensible default: every real checkpoint has them.
_REQUIRED = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads")


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """Hyperparameters of the text decoder (shared by Qwen3-Next, Qwen3.5/3.6 dense and MoE)."""

    model_type: str
    family: str
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    layer_types: tuple[str, ...]
    linear_num_key_heads: int
    linear_num_value_heads: int
    linear_key_head_dim: int
    linear_value_head_dim: int
    linear_conv_kernel_dim: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rotary_dim: int
    rope_theta: float
    rms_norm_eps: float
    intermediate_size: int
    num_experts: int
    num_experts_per_tok: int
    moe_intermediate_size: int
    shared_expert_intermediate_size: int
    norm_topk_prob: bool
    decoder_sparse_step: int
    mlp_only_layers: tuple[int, ...]
    tie_word_embeddings: bool
    max_position_embeddings: int
    eos_token_ids: tuple[int, ...]
    bos_token_id: int | None = None
    pad_token_id: int | None = None
    dtype: str | None = None
    # quantization_config.quant_method (e.g. "fp8"), None for plain bf16/fp16/fp32 weights.
    quantization: str | None = None

    @property
    def linear_key_dim(self) -> int:
        """Width of all GDN key (or query) heads together."""
        return self.linear_num_key_heads * self.linear_key_head_dim

    @property
    def linear_value_dim(self) -> int:
        """Width of all GDN value heads together."""
        return self.linear_num_value_heads * self.linear_value_head_dim

    @property
    def conv_dim(self) -> int:
        """Channels of the GDN causal conv: [q | k | v]."""
        return 2 * self.linear_key_dim + self.linear_value_dim

    @property
    def gdn_layers(self) -> tuple[int, ...]:
        """Indices of the Gated DeltaNet layers."""
        return tuple(i for i, t in enumerate(self.layer_types) if t == "linear_attention")

    @property
    def attention_layers(self) -> tuple[int, ...]:
        """Indices of the gated full-attention layers."""
        return tuple(i for i, t in enumerate(self.layer_types) if t == "full_attention")

    def is_moe_layer(self, layer: int) -> bool:
        """Whether layer `layer` uses the sparse MoE block (else the dense SwiGLU MLP)."""
        return (
            self.num_experts > 0
            and layer not in self.mlp_only_layers
            and (layer + 1) % self.decoder_sparse_step == 0
        )

    @classmethod
    def from_dict(cls, raw: dict[str, Any], *, generation: dict[str, Any] | None = None) -> ModelConfig:
        """Parse a config.json dict (VLM configs unwrap `text_config`)."""
        return _parse(raw, generation or {})

    @classmethod
    def from_dir(cls, path: str | Path) -> ModelConfig:
        """Read `<path>/config.json` (and `generation_config.json` for eos ids when present)."""
        path = Path(path)
        cfg_file = path / "config.json"
        if not cfg_file.is_file():
            raise CheckpointError(f"no config.json in {path}: is this a model folder?")
        raw = _read_json(cfg_file)
        gen_file = path / "generation_config.json"
        generation = _read_json(gen_file) if gen_file.is_file() else {}
        return _parse(raw, generation)


def _read_json(file: Path) -> dict[str, Any]:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {file}: {e}") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{file} holds a {type(data).__name__}, expected a JSON object")
    return data


def _ids(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, int):
        return [value]
    return [int(v) for v in value]


def _eos_ids(*sources: dict[str, Any]) -> tuple[int, ...]:
    out: list[int] = []
    for src in sources:
        for i in _ids(src.get("eos_token_id")):
            if i not in out:
                out.append(i)
    return tuple(out)


def _layer_types(text: dict[str, Any], n_layers: int) -> tuple[str, ...]:
    types = text.get("layer_types")
    if types is None:
        interval = int(text.get("full_attention_interval", 4))
        types = ["full_attention" if (i + 1) % interval == 0 else "linear_attention" for i in range(n_layers)]
    types = tuple(types)
    if len(types) != n_layers:
        raise CheckpointError(f"layer_types has {len(types)} entries but num_hidden_layers is {n_layers}")
    bad = sorted(set(types) - LAYER_TYPES)
    if bad:
        raise CheckpointError(f"unknown layer types {bad} in config.json; supported: {sorted(LAYER_TYPES)}")
    return types


def _rope(text: dict[str, Any], head_dim: int) -> tuple[int, float]:
    rope = dict(text.get("rope_parameters") or text.get("rope_scaling") or {})
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise CheckpointError(f"rope_type {rope_type!r} is not supported; only 'default' RoPE is implemented")
    theta = float(rope.get("rope_theta", text.get("rope_theta", 10000.0)))
    factor = float(rope.get("partial_rotary_factor", text.get("partial_rotary_factor", 0.25)))
    rotary_dim = int(head_dim * factor)
    if rotary_dim % 2 or not 0 < rotary_dim <= head_dim:
        raise CheckpointError(f"partial_rotary_factor {factor} gives rotary dim {rotary_dim} for head_dim {head_dim}")
    return rotary_dim, theta


def _moe_fields(text: dict[str, Any], family: str, num_experts: int) -> dict[str, Any]:
    moe = bool(num_experts)
    next_ = family == "qwen3_next"
    return dict(
        num_experts=num_experts,
        num_experts_per_tok=int(text.get("num_experts_per_tok", 0)) if moe else 0,
        moe_intermediate_size=int(text.get("moe_intermediate_size", 0)) if moe else 0,
        shared_expert_intermediate_size=int(text.get("shared_expert_intermediate_size", 0)) if moe else 0,
        # Qwen3.5-MoE always renormalises the top-k weights; Qwen3-Next reads norm_topk_prob.
        norm_topk_prob=bool(text.get("norm_topk_prob", True)) if next_ else True,
        decoder_sparse_step=int(text.get("decoder_sparse_step", 1)) if next_ else 1,
        mlp_only_layers=tuple(int(i) for i in (text.get("mlp_only_layers") or ())) if next_ else (),
    )


def _parse(raw: dict[str, Any], generation: dict[str, Any]) -> ModelConfig:
    model_type = raw.get("model_type")
    if model_type not in FAMILIES:
        raise CheckpointError(
            f"unsupported model_type {model_type!r} in config.json; supported: {', '.join(FAMILIES)}"
        )
    family = FAMILIES[model_type]
    text = raw
    if model_type in VLM_TYPES:
        text = raw.get("text_config")
        if not isinstance(text, dict):
            raise CheckpointError(f"config.json of model_type {model_type!r} has no text_config object")
    missing = [k for k in _REQUIRED if k not in text]
    if missing:
        raise CheckpointError(f"config.json ({model_type}) lacks required keys {missing}")
    act = text.get("hidden_act", "silu")
    if act != "silu":
        raise CheckpointError(f"hidden_act {act!r} is not supported; these models use 'silu'")
    n_layers = int(text["num_hidden_layers"])
    head_dim = int(text.get("head_dim", 256))
    rotary_dim, theta = _rope(text, head_dim)
    num_experts = int(text.get("num_experts", 0)) if family != "qwen3_5" else 0
    intermediate = int(text.get("intermediate_size", 0))
    if num_experts == 0 and intermediate <= 0:
        raise CheckpointError(f"config.json ({model_type}) has neither num_experts nor intermediate_size")
    tie = raw.get("tie_word_embeddings", text.get("tie_word_embeddings", False))
    config = ModelConfig(
        model_type=model_type,
        family=family,
        vocab_size=int(text["vocab_size"]),
        hidden_size=int(text["hidden_size"]),
        num_hidden_layers=n_layers,
        layer_types=_layer_types(text, n_layers),
        linear_num_key_heads=int(text.get("linear_num_key_heads", 16)),
        linear_num_value_heads=int(text.get("linear_num_value_heads", 32)),
        linear_key_head_dim=int(text.get("linear_key_head_dim", 128)),
        linear_value_head_dim=int(text.get("linear_value_head_dim", 128)),
        linear_conv_kernel_dim=int(text.get("linear_conv_kernel_dim", 4)),
        num_attention_heads=int(text["num_attention_heads"]),
        num_key_value_heads=int(text["num_key_value_heads"]),
        head_dim=head_dim,
        rotary_dim=rotary_dim,
        rope_theta=theta,
        rms_norm_eps=float(text.get("rms_norm_eps", 1e-6)),
        intermediate_size=intermediate,
        **_moe_fields(text, family, num_experts),
        tie_word_embeddings=bool(tie),
        max_position_embeddings=int(text.get("max_position_embeddings", 32768)),
        eos_token_ids=_eos_ids(raw, text, generation),
        bos_token_id=text.get("bos_token_id", raw.get("bos_token_id")),
        pad_token_id=text.get("pad_token_id", raw.get("pad_token_id")),
        dtype=raw.get("dtype", raw.get("torch_dtype", text.get("dtype", text.get("torch_dtype")))),
        quantization=(raw.get("quantization_config") or text.get("quantization_config") or {}).get("quant_method"),
    )
    _check_heads(config)
    return config


def _check_heads(c: ModelConfig) -> None:
    if c.linear_num_value_heads % c.linear_num_key_heads:
        raise CheckpointError(
            f"linear_num_value_heads {c.linear_num_value_heads} is not a multiple of "
            f"linear_num_key_heads {c.linear_num_key_heads}"
        )
    if c.num_attention_heads % c.num_key_value_heads:
        raise CheckpointError(
            f"num_attention_heads {c.num_attention_heads} is not a multiple of "
            f"num_key_value_heads {c.num_key_value_heads}"
        )
    if c.num_experts and not 0 < c.num_experts_per_tok <= c.num_experts:
        raise CheckpointError(f"num_experts_per_tok {c.num_experts_per_tok} must be in 1..{c.num_experts}")
