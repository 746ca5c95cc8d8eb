"""Writes the embedded default model: a tiny Qwen3.5-architecture checkpoint with a byte-level tokenizer.

Run once by a developer (needs transformers); the output folder is committed:

    python scripts/make_default_model.py qla_agent/configs/default

The weights are random (seeded): the model exercises the whole runtime with the real architecture
(GDN head dims 128, so the TileLang kernels run on it) at a size that fits in the repository.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from tokenizers import AddedToken

# Qwen3.5's special tokens in id order (model_spec.md §4.1); the flag says whether decode skips it.
SPECIAL_TOKENS: list[tuple[str, bool]] = [
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
    ("<|object_ref_start|>", True), ("<|object_ref_end|>", True), ("<|box_start|>", True),
    ("<|box_end|>", True), ("<|quad_start|>", True), ("<|quad_end|>", True),
    ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
    ("<|image_pad|>", True), ("<|video_pad|>", True),
    ("<tool_call>", False), ("</tool_call>", False),
    ("<|fim_prefix|>", False), ("<|fim_middle|>", False), ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False), ("<|repo_name|>", False), ("<|file_sep|>", False),
    ("<tool_response>", False), ("</tool_response>", False), ("<think>", False), ("</think>", False),
]


_THINKING_ON_BY_DEFAULT = """    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\\n\\n</think>\\n\\n' }}
    {%- else %}
        {{- '<think>\\n' }}
    {%- endif %}"""
_THINKING_OFF_BY_DEFAULT = """    {%- if enable_thinking is defined and enable_thinking is true %}
        {{- '<think>\\n' }}
    {%- else %}
        {{- '<think>\\n\\n</think>\\n\\n' }}
    {%- endif %}"""


def byte_level_tokenizer() -> Tokenizer:
    """A byte-level BPE with no merges: one token per byte (ids 0-255), then the specials."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    byte_to_char = {b: c for b, c in zip(range(256), sorted(alphabet, key=_byte_of))}
    vocab = {byte_to_char[b]: b for b in range(256)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_tokens([AddedToken(t, special=s, normalized=False) for t, s in SPECIAL_TOKENS])
    return tok


def _byte_of(char: str) -> int:
    """Inverse of GPT-2's bytes_to_unicode: the byte that a ByteLevel alphabet character stands for."""
    code = ord(char)
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    if code in printable:
        return code
    others = [b for b in range(256) if b not in printable]
    return others[code - 256]


def write_default_model(out: Path, template: Path) -> None:
    from transformers import Qwen3_5ForCausalLM, Qwen3_5TextConfig

    out.mkdir(parents=True, exist_ok=True)
    tok = byte_level_tokenizer()
    tok.save(str(out / "tokenizer.json"))
    ids = {t: tok.token_to_id(t) for t, _ in SPECIAL_TOKENS}
    config = Qwen3_5TextConfig(
        vocab_size=320, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
        num_attention_heads=2, num_key_value_heads=1, head_dim=64,
        linear_num_key_heads=1, linear_num_value_heads=2, linear_key_head_dim=128,
        linear_value_head_dim=128, linear_conv_kernel_dim=4, max_position_embeddings=32768,
        tie_word_embeddings=True, eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
        bos_token_id=None,
    )
    torch.manual_seed(0)
    model = Qwen3_5ForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    # Like the small Qwen3.5 checkpoints (0.8B-9B), thinking is off unless the request turns it on.
    text = template.read_text().replace(_THINKING_ON_BY_DEFAULT, _THINKING_OFF_BY_DEFAULT)
    if text == template.read_text():
        raise SystemExit(f"{template} has no generation prompt to switch thinking off by default")
    (out / "chat_template.jinja").write_text(text)
    tokenizer_config = {
        "tokenizer_class": "Qwen2TokenizerFast",
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "model_max_length": config.max_position_embeddings,
        "added_tokens_decoder": {
            str(ids[t]): {"content": t, "special": s} for t, s in SPECIAL_TOKENS
        },
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    generation = {"eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]], "pad_token_id": ids["<|endoftext|>"]}
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--template", type=Path, default=Path("tests/data/templates/qwen3_5.jinja"))
    args = parser.parse_args()
    write_default_model(args.out, args.template)


if __name__ == "__main__":
    main()
