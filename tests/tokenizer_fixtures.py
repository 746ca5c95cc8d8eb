"""Tiny byte-level BPE tokenizers with Qwen's special tokens, written as checkpoint files for tests."""

import json
from functools import cache
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

TEMPLATES_DIR = Path(__file__).parent / "data" / "templates"

# Qwen2/3's pre-tokenizer split (the Qwen3.5 one differs only in letter/mark classes).
QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# (content, special): Qwen marks the ChatML tokens special and the markup tokens not.
QWEN_ADDED_TOKENS = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
)
FAMILY_TEMPLATES = {
    "qwen3_5": "qwen3_5.jinja",
    "qwen3_5_moe": "qwen3_5.jinja",
    "qwen3_next": "qwen3_next_hermes.jinja",
}
_CORPUS = (
    "Hello world! The quick brown fox jumps over the lazy dog. What is the weather in Paris today?\n"
    "def main():\n    return {\"city\": \"Paris\", \"days\": 2}\n"
    "You are a helpful assistant. Call the function get_weather with the city parameter.\n"
    "天气很好，我们去公园吧。東京の天気は晴れです。Привет, мир! Ça va très bien. 🙂🚀 naïve café\n"
)


@cache
def build_tokenizer_json() -> str:
    """Train a small byte-level BPE (Qwen's pipeline) and return its tokenizer.json text."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    tok.add_tokens([AddedToken(text, special=special, normalized=False) for text, special in QWEN_ADDED_TOKENS])
    return tok.to_str()


def write_tokenizer_files(path: Path, family: str = "qwen3_5") -> Path:
    """Write tokenizer.json, tokenizer_config.json and chat_template.jinja for `family` into `path`."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer_json = build_tokenizer_json()
    (path / "tokenizer.json").write_text(tokenizer_json, encoding="utf-8")
    vocab = Tokenizer.from_str(tokenizer_json).get_vocab(with_added_tokens=True)
    added = {
        str(vocab[text]): {
            "content": text,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": special,
        }
        for text, special in QWEN_ADDED_TOKENS
    }
    config = {
        "tokenizer_class": "Qwen2Tokenizer",
        "added_tokens_decoder": added,
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "model_max_length": 262144,
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": False,
    }
    (path / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    template = (TEMPLATES_DIR / FAMILY_TEMPLATES[family]).read_text(encoding="utf-8")
    (path / "chat_template.jinja").write_text(template, encoding="utf-8")
    return path
