"""Tiny random checkpoints of every hybrid Qwen family, written by transformers' own classes.

`write_tiny_checkpoint(tmp_path, "qwen3_5_moe")` gives a complete model folder (config.json,
safetensors, tokenizer files, chat template) that `load_model` and the engine can run, and that
`load_hf_reference` loads with transformers as the test oracle. Weights are fp32 and seeded; norms,
A_log and dt_bias are perturbed away from their init so layout bugs change the logits.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import transformers
from safetensors import safe_open
from safetensors.torch import save_file
from tokenizers import Tokenizer

from tests.tokenizer_fixtures import build_tokenizer_json, write_tokenizer_files

FAMILIES = ("qwen3_next", "qwen3_5", "qwen3_5_moe")

# Three GDN layers then one attention layer; Hv = 2 * Hk so grouped value heads are exercised.
TINY_DIMS = dict(
    vocab_size=416, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
    head_dim=32, linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16,
    linear_value_head_dim=16, linear_conv_kernel_dim=4, max_position_embeddings=1024, rms_norm_eps=1e-6,
)
MOE_DIMS = dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=48)
TINY_VISION = dict(depth=1, hidden_size=32, intermediate_size=32, num_heads=2, out_hidden_size=64)


def _token_ids() -> dict[str, int]:
    return Tokenizer.from_str(build_tokenizer_json()).get_vocab(with_added_tokens=True)


def tiny_hf_config(family: str, *, vlm: bool = False, tie: bool = False, **overrides):
    """transformers config of a tiny `family` model; `vlm` wraps Qwen3.5 text in the VLM config."""
    ids = _token_ids()
    eos, pad = ids["<|im_end|>"], ids["<|endoftext|>"]
    text = dict(TINY_DIMS, tie_word_embeddings=tie, pad_token_id=pad)
    if family != "qwen3_5":
        text.update(MOE_DIMS)
    if family in ("qwen3_next", "qwen3_5"):
        text["intermediate_size"] = 96
    text.update(overrides)
    if family == "qwen3_next":
        if vlm:
            raise ValueError("qwen3_next has no VLM layout")
        return transformers.Qwen3NextConfig(**text, eos_token_id=eos)
    if not vlm:
        cls = transformers.Qwen3_5TextConfig if family == "qwen3_5" else transformers.Qwen3_5MoeTextConfig
        return cls(**text, eos_token_id=eos)
    cls = transformers.Qwen3_5Config if family == "qwen3_5" else transformers.Qwen3_5MoeConfig
    # Like the released configs: text eos <|endoftext|>, top-level eos <|im_end|>.
    return cls(text_config=dict(text, eos_token_id=pad), vision_config=TINY_VISION, tie_word_embeddings=tie,
               eos_token_id=eos)


def _perturb(model: torch.nn.Module, seed: int) -> None:
    """Seeded re-init so every parameter (norms, A_log, dt_bias included) matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if name.endswith("A_log"):
                value = torch.rand(p.shape, generator=gen) * math.log(16.0)
            elif name.endswith("dt_bias"):
                value = 0.5 * noise
            elif name.endswith("linear_attn.norm.weight"):
                value = 1.0 + 0.2 * noise
            elif "norm" in name:
                value = 0.2 * noise
            elif "conv1d" in name:
                value = 0.5 * noise
            elif p.dim() >= 2:
                value = noise / math.sqrt(p.shape[-1])
            else:
                value = 0.1 * noise
            p.copy_(value)


def build_hf_model(family: str, *, vlm: bool = False, tie: bool = False, seed: int = 0, **overrides):
    """A tiny fp32 transformers model of `family` in eval mode, seeded."""
    config = tiny_hf_config(family, vlm=vlm, tie=tie, **overrides)
    torch.manual_seed(seed)
    if family == "qwen3_next":
        cls = transformers.Qwen3NextForCausalLM
    elif family == "qwen3_5":
        cls = transformers.Qwen3_5ForConditionalGeneration if vlm else transformers.Qwen3_5ForCausalLM
    else:
        cls = transformers.Qwen3_5MoeForConditionalGeneration if vlm else transformers.Qwen3_5MoeForCausalLM
    model = cls(config).to(torch.float32).eval()
    _perturb(model, seed)
    return model


def _read_all(path: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for file in sorted(path.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            tensors.update((k, f.get_tensor(k)) for k in f.keys())
        file.unlink()
    index = path / "model.safetensors.index.json"
    if index.exists():
        index.unlink()
    return tensors


def fuse_experts(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-expert `experts.{e}.{gate,up,down}_proj.weight` -> Qwen3.5-MoE's fused `experts.gate_up_proj`
    [E, 2I, H] and `experts.down_proj` [E, H, I] (the released checkpoints' layout)."""
    out = {k: v for k, v in tensors.items() if ".experts." not in k}
    prefixes = sorted({k.split("experts.")[0] for k in tensors if ".experts." in k})
    for p in prefixes:
        n = len({k for k in tensors if k.startswith(p + "experts.") and k.endswith("gate_proj.weight")})
        gate_up = [torch.cat([tensors[f"{p}experts.{e}.gate_proj.weight"], tensors[f"{p}experts.{e}.up_proj.weight"]])
                   for e in range(n)]
        out[f"{p}experts.gate_up_proj"] = torch.stack(gate_up)
        out[f"{p}experts.down_proj"] = torch.stack([tensors[f"{p}experts.{e}.down_proj.weight"] for e in range(n)])
    return out


def write_tensors(path: Path, tensors: dict[str, torch.Tensor], *, shards: int = 1) -> None:
    """Write `tensors` as model.safetensors, or as `shards` files plus model.safetensors.index.json."""
    names = sorted(tensors)
    meta = {"format": "pt"}
    if shards == 1:
        save_file({k: tensors[k].contiguous() for k in names}, str(path / "model.safetensors"), metadata=meta)
        return
    weight_map: dict[str, str] = {}
    for i in range(shards):
        file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = names[i::shards]
        save_file({k: tensors[k].contiguous() for k in part}, str(path / file), metadata=meta)
        weight_map.update((k, file) for k in part)
    total = sum(t.nbytes for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")


def write_tiny_checkpoint(
    path: Path | str,
    family: str = "qwen3_5",
    *,
    vlm: bool = False,
    tie: bool = False,
    seed: int = 0,
    fused_experts: bool | None = None,
    shards: int = 1,
    tokenizer: bool = True,
    **overrides,
) -> Path:
    """Save a tiny `family` checkpoint into `path` and return it.

    fused_experts (default: True for qwen3_5_moe, as released) rewrites per-expert tensors fused;
    shards > 1 splits the tensors over several files with an index; tokenizer writes the tokenizer files
    and the family's chat template.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model = build_hf_model(family, vlm=vlm, tie=tie, seed=seed, **overrides)
    model.save_pretrained(path)
    if fused_experts is None:
        fused_experts = family == "qwen3_5_moe"
    if fused_experts or shards > 1:
        tensors = _read_all(path)
        write_tensors(path, fuse_experts(tensors) if fused_experts else tensors, shards=shards)
    if tokenizer:
        write_tokenizer_files(path, family)
    return path


def load_hf_reference(path: Path | str):
    """Load a checkpoint folder with the transformers class that wrote it (fp32, eval): the test oracle."""
    config = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    cls = getattr(transformers, config["architectures"][0])
    return cls.from_pretrained(str(path), dtype=torch.float32).eval()
