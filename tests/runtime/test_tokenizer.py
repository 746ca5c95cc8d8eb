"""Tokenizer loading, encode/decode against transformers, and streaming detokenization."""

import json
import random
from pathlib import Path

import pytest
import transformers

from qla_agent.errors import CheckpointError, TokenizerError
from qla_agent.runtime.tokenizer import IncrementalDetokenizer, Tokenizer
from tests.tokenizer_fixtures import QWEN_ADDED_TOKENS, write_tokenizer_files

TEXTS = [
    "Hello world!",
    "  leading spaces, trailing\n\n\t tabs  ",
    "天气很好，我们去公园吧。東京の天気は晴れです。",
    "emoji 🙂🚀👩‍👩‍👧 and flags 🇫🇷 mixed with 数字 123456",
    "Привет, мир! Ça va très bien — naïve café ∑∫√",
    "rare CJK 𠜎𠜱𠝹 and symbols ☃ ♞ ⚙︎",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n4<|im_end|>",
    "<tool_call>\n<function=f>\n<parameter=x>\n1\n</parameter>\n</function>\n</tool_call><|endoftext|>",
]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    return write_tokenizer_files(tmp_path_factory.mktemp("tok"), "qwen3_5")


@pytest.fixture(scope="module")
def tok(tok_dir) -> Tokenizer:
    return Tokenizer.from_dir(tok_dir)


@pytest.fixture(scope="module")
def ref(tok_dir):
    return transformers.AutoTokenizer.from_pretrained(str(tok_dir))


@pytest.mark.parametrize("text", TEXTS, ids=range(len(TEXTS)))
def test_encode_decode_match_transformers(tok, ref, text):
    out = tok.encode(text)
    assert out == ref.encode(text, add_special_tokens=False)
    assert tok.decode(out) == ref.decode(out) == text
    assert tok.decode(out, skip_special_tokens=True) == ref.decode(out, skip_special_tokens=True)


def test_special_tokens_are_single_tokens(tok):
    for text, _ in QWEN_ADDED_TOKENS:
        token_id = tok.token_id(text)
        assert token_id is not None
        assert tok.encode(f"a{text}b")[1:-1] == [token_id]
        assert tok.token_text(token_id) == text
    ids = tok.encode("<|im_start|>assistant\n<think>\nhi</think><|im_end|>")
    assert ids[0] == tok.token_id("<|im_start|>") and ids[-1] == tok.token_id("<|im_end|>")
    assert tok.token_id("<not a token>") is None
    # Only the ChatML tokens are special; markup tokens survive skip_special_tokens, as in Qwen's tokenizers.
    assert tok.decode(ids, skip_special_tokens=True) == "assistant\n<think>\nhi</think>"


def test_vocab_size_and_default_eos(tok, ref):
    assert tok.vocab_size == len(ref)
    assert tok.eos_token_ids == {tok.token_id("<|im_end|>")}
    assert tok.special_tokens_map == ref.special_tokens_map


def test_eos_ids_from_all_config_files(tmp_path):
    path = write_tokenizer_files(tmp_path, "qwen3_5")
    probe = Tokenizer.from_dir(path)
    im_end, endoftext = probe.token_id("<|im_end|>"), probe.token_id("<|endoftext|>")
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": [im_end, endoftext]}))
    (path / "config.json").write_text(json.dumps({"text_config": {"eos_token_id": 5}}))
    assert Tokenizer.from_dir(path).eos_token_ids == {im_end, endoftext, 5}


def test_chatml_fallback_when_no_eos_named(tmp_path):
    path = write_tokenizer_files(tmp_path, "qwen3_5")
    (path / "tokenizer_config.json").unlink()
    tok = Tokenizer.from_dir(path)
    assert tok.eos_token_ids == {tok.token_id("<|im_end|>"), tok.token_id("<|endoftext|>")}
    assert tok.special_tokens_map == {}


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(CheckpointError, match="tokenizer.json is missing"):
        Tokenizer.from_dir(tmp_path)
    path = write_tokenizer_files(tmp_path, "qwen3_5")
    config = json.loads((path / "tokenizer_config.json").read_text())
    (path / "tokenizer_config.json").write_text(json.dumps({**config, "eos_token": "<|eot|>"}))
    with pytest.raises(TokenizerError, match="'<|eot|>'"):
        Tokenizer.from_dir(path)
    (path / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="tokenizer_config.json"):
        Tokenizer.from_dir(path)
    (path / "tokenizer_config.json").write_text("{}")
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": 10**6}))
    with pytest.raises(TokenizerError, match="1000000"):
        Tokenizer.from_dir(path)


def _stream(tok: Tokenizer, ids: list[int], rng: random.Random, *, skip_special: bool = False) -> list[str]:
    """Push ids in random chunks (0 to 4 ids each); return the deltas including the final flush."""
    detok = IncrementalDetokenizer(tok, skip_special_tokens=skip_special)
    deltas, i = [], 0
    while i < len(ids):
        n = rng.randint(0, 4)
        deltas.append(detok.push(ids[i : i + n] if n != 1 else ids[i]))
        i += n
    deltas.append(detok.flush())
    assert detok.token_ids == ids
    return deltas


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("text", TEXTS, ids=range(len(TEXTS)))
def test_stream_equals_full_decode(tok, text, seed):
    rng = random.Random(seed)
    ids = tok.encode(text)
    for skip_special in (False, True):
        deltas = _stream(tok, ids, rng, skip_special=skip_special)
        ref = tok.decode(ids, skip_special_tokens=skip_special)
        assert "".join(deltas) == ref
        # Valid UTF-8 in, so no delta ever shows a replacement character for a half-sent character.
        assert not any("\ufffd" in d for d in deltas)


def test_character_split_across_tokens_is_held_back(tok):
    rocket = tok.encode("🚀")
    assert len(rocket) >= 2, "the fixture must split this emoji over several byte tokens"
    detok = IncrementalDetokenizer(tok)
    assert detok.push(tok.encode("go ")) == "go "
    assert [detok.push(i) for i in rocket[:-1]] == [""] * (len(rocket) - 1)
    assert detok.push(rocket[-1]) == "🚀"
    assert detok.flush() == ""


@pytest.mark.parametrize("seed", range(8))
def test_stream_of_random_ids_equals_full_decode(tok, seed):
    """Arbitrary ids (invalid UTF-8, lone continuation bytes, specials) still join to the full decode."""
    rng = random.Random(seed)
    ids = [rng.randrange(tok.vocab_size) for _ in range(rng.randint(1, 60))]
    assert "".join(_stream(tok, ids, rng)) == tok.decode(ids)


def test_flush_writes_an_unfinished_character(tok):
    rocket = tok.encode("🚀")
    detok = IncrementalDetokenizer(tok)
    assert detok.push(rocket[:-1]) == ""
    assert detok.flush() == tok.decode(rocket[:-1]) == "\ufffd"


def test_stream_keeps_context_for_metaspace_decoders():
    """SentencePiece-style decoders drop a leading space at the start of a decode; deltas must not."""
    from tokenizers import Tokenizer as Backend
    from tokenizers import decoders, models, pre_tokenizers

    backend = Backend(models.WordLevel({"▁Hello": 0, "▁world": 1, "!": 2, "▁again": 3}, unk_token="!"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    tok = Tokenizer(backend, eos_token_ids=[2])
    assert tok.encode("Hello world again") == [0, 1, 3]
    ids = [0, 1, 3, 2]
    assert tok.decode(ids) == "Hello world again!"
    detok = IncrementalDetokenizer(tok)
    deltas = [detok.push(i) for i in ids] + [detok.flush()]
    assert deltas == ["Hello", " world", " again", "!", ""]
    assert "".join(deltas) == tok.decode(ids)


def test_encode_adds_no_post_processor_tokens(tmp_path):
    """Rendered chats are encoded as they are (apply_chat_template passes add_special_tokens=False)."""
    path = write_tokenizer_files(tmp_path, "qwen3_5")
    data = json.loads((path / "tokenizer.json").read_text())
    start = Tokenizer.from_dir(path).token_id("<|endoftext|>")
    data["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<|endoftext|>": {"id": "<|endoftext|>", "ids": [start], "tokens": ["<|endoftext|>"]}},
    }
    (path / "tokenizer.json").write_text(json.dumps(data))
    tok = Tokenizer.from_dir(path)
    from tokenizers import Tokenizer as Backend

    assert Backend.from_file(str(path / "tokenizer.json")).encode("hi").ids[0] == start
    assert start not in tok.encode("hi")
