"""A checkpoint's tokenizer (tokenizer.json via `tokenizers`), its stop tokens, and streaming detokenization."""

import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as _Backend

from qla_agent.errors import CheckpointError, TokenizerError

logger = logging.getLogger(__name__)

# The named special tokens transformers passes to chat templates (`special_tokens_map`), in its order.
NAMED_SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
# ChatML turn ends, used as stop tokens only when a folder names no eos token at all.
CHATML_END_TOKENS = ("<|im_end|>", "<|endoftext|>")
_REPLACEMENT_CHAR = "\ufffd"


def read_json(path: Path) -> dict[str, Any]:
    """Read a JSON object file; a missing file gives {}."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {path}: {e}; fix or delete the file") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} holds a {type(data).__name__}, expected a JSON object")
    return data


def _token_content(value: Any) -> str | None:
    """The text of a token as tokenizer_config.json writes it: a string or an AddedToken dict."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def special_tokens_map(tokenizer_config: Mapping[str, Any]) -> dict[str, str]:
    """The named special tokens of a tokenizer_config.json, as transformers' `special_tokens_map` gives them."""
    named: dict[str, str] = {}
    for key in NAMED_SPECIAL_TOKENS:
        content = _token_content(tokenizer_config.get(key))
        if content is not None:
            named[key] = content
    # transformers also treats any other `*_token` string and a dict of extra tokens as named tokens
    for key, value in tokenizer_config.items():
        if key.endswith("_token") and key not in named and isinstance(value, str):
            named[key] = value
    extra = tokenizer_config.get("extra_special_tokens")
    if isinstance(extra, Mapping):
        for key, value in extra.items():
            content = _token_content(value)
            if content is not None:
                named[key] = content
    return named


def _config_eos_ids(config: Mapping[str, Any]) -> list[int]:
    """eos_token_id of a config.json / generation_config.json (int or list, maybe inside text_config)."""
    found: list[int] = []
    for section in (config, config.get("text_config")):
        if not isinstance(section, Mapping):
            continue
        value = section.get("eos_token_id")
        values = value if isinstance(value, list) else [value]
        found += [v for v in values if isinstance(v, int) and not isinstance(v, bool)]
    return found


class Tokenizer:
    """A checkpoint's tokenizer: encode/decode through tokenizer.json, plus the ids that end a turn."""

    __slots__ = ("_backend", "_text_backend", "_special_ids", "special_pattern", "eos_token_ids",
                 "special_tokens_map", "vocab_size")

    def __init__(
        self,
        backend: _Backend,
        *,
        eos_token_ids: Iterable[int],
        special_tokens_map: Mapping[str, str] | None = None,
    ) -> None:
        self._backend = backend
        vocab = backend.get_vocab(with_added_tokens=True)
        # One more than the largest id: the logits rows a sampler may pick from.
        self.vocab_size: int = max(vocab.values()) + 1
        self.eos_token_ids: frozenset[int] = frozenset(eos_token_ids)
        bad = sorted(i for i in self.eos_token_ids if not 0 <= i < self.vocab_size)
        if bad:
            raise TokenizerError(f"eos token ids {bad} are outside the vocabulary of {self.vocab_size} tokens")
        self.special_tokens_map: dict[str, str] = dict(special_tokens_map or {})
        # Added tokens marked special (ChatML's <|im_start|> ...); non-special ones (<tool_call>) are markup.
        self._special_ids: dict[str, int] = {
            t.content: i for i, t in backend.get_added_tokens_decoder().items() if t.special
        }
        # Longest first, so a match is the leftmost-longest one, as the backend's own matching picks.
        longest_first = sorted(self._special_ids, key=len, reverse=True)
        self.special_pattern: re.Pattern[str] | None = (
            re.compile("|".join(map(re.escape, longest_first))) if longest_first else None
        )
        # A copy that reads special tokens as plain text (flag on a copy: encode may run on several threads).
        self._text_backend = _Backend.from_str(backend.to_str())
        self._text_backend.encode_special_tokens = True

    @classmethod
    def from_dir(cls, path: str | Path) -> "Tokenizer":
        """Load tokenizer.json and the stop tokens named by tokenizer_config / generation_config / config."""
        path = Path(path)
        tokenizer_file = path / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise CheckpointError(f"{tokenizer_file} is missing; the folder must hold a Hugging Face tokenizer.json")
        try:
            backend = _Backend.from_file(str(tokenizer_file))
        except Exception as e:
            raise CheckpointError(f"cannot load {tokenizer_file}: {e}") from e
        tokenizer_config = read_json(path / "tokenizer_config.json")
        named = special_tokens_map(tokenizer_config)
        eos_ids = _config_eos_ids(read_json(path / "generation_config.json"))
        eos_ids += _config_eos_ids(read_json(path / "config.json"))
        if "eos_token" in named:
            eos_id = backend.token_to_id(named["eos_token"])
            if eos_id is None:
                raise TokenizerError(f"eos_token {named['eos_token']!r} of {path} is not in tokenizer.json")
            eos_ids.append(eos_id)
        if not eos_ids:
            eos_ids = [i for t in CHATML_END_TOKENS if (i := backend.token_to_id(t)) is not None]
            logger.warning("%s names no eos token; stopping on %s", path, eos_ids)
        if not eos_ids:
            raise TokenizerError(f"{path} names no eos token; add eos_token to tokenizer_config.json")
        return cls(backend, eos_token_ids=eos_ids, special_tokens_map=named)

    def encode(self, text: str, *, as_text: Sequence[tuple[int, int]] = ()) -> list[int]:
        """Token ids of `text`; special and added tokens written in the text become single tokens.

        Special tokens inside the char spans `as_text` (sorted, disjoint [start, end)) are encoded as
        plain text instead. Only the special tokens outside them cut the text; each piece between two
        cuts is encoded in one go, so text around a span merges as it would anywhere else.
        """
        if not as_text or self.special_pattern is None:
            return self._backend.encode(text, add_special_tokens=False).ids
        ids: list[int] = []
        piece_start = search_from = 0
        for lo, hi in [*as_text, (len(text), len(text))]:
            assert search_from <= lo <= hi <= len(text), f"bad as_text span {(lo, hi)} in {len(text)} chars"
            for match in self.special_pattern.finditer(text, search_from, lo):
                ids += self._encode_as_text(text[piece_start : match.start()])
                ids.append(self._special_ids[match.group()])
                piece_start = match.end()
            search_from = hi
        return ids + self._encode_as_text(text[piece_start:])

    def _encode_as_text(self, text: str) -> list[int]:
        return self._text_backend.encode(text, add_special_tokens=False).ids if text else []

    def decode(self, ids: Iterable[int], *, skip_special_tokens: bool = False) -> str:
        """Text of `ids` (special tokens kept unless `skip_special_tokens`)."""
        return self._backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_id(self, token: str) -> int | None:
        """Id of a token given by its text (e.g. "<|im_end|>"), or None if the vocabulary lacks it."""
        return self._backend.token_to_id(token)

    def token_text(self, token_id: int) -> str | None:
        """The vocabulary entry of an id (byte-level form for BPE pieces), or None if out of range."""
        return self._backend.id_to_token(token_id)


class IncrementalDetokenizer:
    """Turns a stream of token ids into text deltas that join to exactly `tokenizer.decode(all ids)`.

    A delta never ends inside a UTF-8 character: byte-level tokens holding part of a character are held
    back until the character is complete (or until `flush`, which writes what is left as U+FFFD).
    """

    __slots__ = ("_tokenizer", "_skip_special", "_ids", "_prefix", "_read", "_prefix_text")

    def __init__(self, tokenizer: Tokenizer, *, skip_special_tokens: bool = False) -> None:
        self._tokenizer = tokenizer
        self._skip_special = skip_special_tokens
        self._ids: list[int] = []
        # ids[_prefix:_read] is the last emitted chunk (decoded as context); ids[_read:] is pending.
        self._prefix = 0
        self._read = 0
        self._prefix_text = ""

    @property
    def token_ids(self) -> list[int]:
        """Every id pushed so far."""
        return list(self._ids)

    def push(self, token_ids: int | Iterable[int]) -> str:
        """Add one or more ids; return the new text that is complete so far ("" if none)."""
        if isinstance(token_ids, int):
            self._ids.append(token_ids)
        else:
            self._ids.extend(token_ids)
        return self._advance(final=False)

    def flush(self) -> str:
        """Return all text still held back (incomplete bytes decode as U+FFFD); call once at the end."""
        return self._advance(final=True)

    def _advance(self, *, final: bool) -> str:
        if self._read == len(self._ids):
            return ""
        text = self._tokenizer.decode(self._ids[self._prefix :], skip_special_tokens=self._skip_special)
        # A trailing U+FFFD is usually a character cut between tokens; wait for its remaining bytes.
        if not final and (len(text) <= len(self._prefix_text) or text.endswith(_REPLACEMENT_CHAR)):
            return ""
        delta = text[len(self._prefix_text) :]
        self._prefix, self._read = self._read, len(self._ids)
        self._prefix_text = self._tokenizer.decode(
            self._ids[self._prefix : self._read], skip_special_tokens=self._skip_special
        )
        return delta
