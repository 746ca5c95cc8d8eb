"""Render a conversation with the chat template, tokenize it, and find its message boundaries.

A message boundary is a token position where the rendering of the first i messages (no generation
prompt) ends, *if* that rendering is a prefix of the whole prompt in text and in tokens. Only there
does the model state equal the state any longer conversation with those messages starts from, so
only there are checkpoints taken. Templates that rewrite older turns (Qwen3.5 drops old thinking)
simply have fewer boundaries.

Only the template's own structure may produce special tokens (<|im_start|>, <|im_end|>, ...): one
written inside a conversation (a fetched web page in a tool result) is encoded as plain text, or it
could open a turn of its own. Before rendering, each such string in the messages and tools is swapped
for a marker that passes through the template unchanged; after it, the markers are put back and their
spans encoded as text (`Tokenizer.encode(as_text=...)`). Non-special added tokens (<tool_call>,
<think>) stay as they are: the model's own format writes them in content.
"""

from __future__ import annotations

import json
import logging
import re
from array import array
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from qla_agent.errors import ChatTemplateError
from qla_agent.runtime.chat_template import ChatTemplate
from qla_agent.runtime.checkpoints import token_array
from qla_agent.runtime.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

Messages = Sequence[Mapping[str, Any]]
Tools = Sequence[Mapping[str, Any]] | None
Spans = tuple[tuple[int, int], ...]
# Marker stems start with a letter found nowhere else in them, so no two occurrences overlap and a
# stem absent from the conversation appears in a rendering only where a marker was put.
_MARKER_STEM = "Qlaliteral"
_MARKER_DIGITS = 3


@dataclass(frozen=True, slots=True)
class Boundary:
    """After `n_tokens` tokens of a prompt, the first `n_messages` messages are complete."""

    n_tokens: int
    n_messages: int


@dataclass(frozen=True, slots=True)
class Prompt:
    """A rendered conversation and its tokens."""

    text: str
    tokens: array
    # Char spans of `text` whose special tokens were encoded as plain text (written in the conversation).
    as_text: Spans = ()

    def __len__(self) -> int:
        return len(self.tokens)


@dataclass(frozen=True, slots=True)
class Literals:
    """Swaps the special-token strings written in a conversation for markers, and back after rendering."""

    pattern: re.Pattern[str] | None
    specials: tuple[str, ...]
    stem: str

    @classmethod
    def of(
        cls, tokenizer: Tokenizer, messages: Messages, tools: Tools, template_kwargs: Mapping[str, Any]
    ) -> "Literals":
        """Markers for this conversation: a stem found nowhere in it (nor in the template kwargs)."""
        pattern = tokenizer.special_pattern
        specials = tuple(sorted({m.group() for m in _strings_matches(pattern, (messages, tools))})) if pattern else ()
        if not specials:
            return cls(pattern=None, specials=(), stem=_MARKER_STEM)
        seen = json.dumps([messages, tools, template_kwargs], ensure_ascii=False, default=str)
        stem = _MARKER_STEM
        while stem in seen:
            stem += "x"
        return cls(pattern=pattern, specials=specials, stem=stem)

    def hide(self, value: Any) -> Any:
        """A copy of `value` (messages or tools) with each special-token string replaced by its marker."""
        if self.pattern is None:
            return value
        if isinstance(value, str):
            return self.pattern.sub(lambda m: f"{self.stem}{self.specials.index(m.group()):0{_MARKER_DIGITS}d}", value)
        if isinstance(value, Mapping):
            return {self.hide(k): self.hide(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.hide(v) for v in value]
        return value

    def reveal(self, marked: str) -> tuple[str, Spans]:
        """The rendering with the markers put back, and the char spans of the special tokens they stood for."""
        if self.pattern is None:
            return marked, ()
        parts: list[str] = []
        spans: list[tuple[int, int]] = []
        length = done = 0
        for m in re.finditer(re.escape(self.stem) + r"(\d{%d})" % _MARKER_DIGITS, marked):
            parts.append(marked[done : m.start()])
            length += m.start() - done
            special = self.specials[int(m.group(1))]
            parts.append(special)
            spans.append((length, length + len(special)))
            length += len(special)
            done = m.end()
        parts.append(marked[done:])
        return "".join(parts), tuple(spans)


def _strings_matches(pattern: re.Pattern[str], value: Any) -> Iterator[re.Match[str]]:
    """Every match of `pattern` in the strings (dict keys included) nested in `value`."""
    if isinstance(value, str):
        yield from pattern.finditer(value)
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from _strings_matches(pattern, k)
            yield from _strings_matches(pattern, v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings_matches(pattern, v)


@dataclass(frozen=True, slots=True)
class Renderer:
    """The chat template and tokenizer of one model, used together."""

    template: ChatTemplate
    tokenizer: Tokenizer

    def render(
        self, messages: Messages, *, tools: Tools, template_kwargs: Mapping[str, Any],
        add_generation_prompt: bool = True, suffix: str = "",
    ) -> Prompt:
        """Render and tokenize a conversation, `suffix` appended (ChatTemplateError if the template refuses it).

        The text is tokenized as a whole, so a suffix (the start of the answer) tokenizes as it would
        in the conversation's later rendering; its special tokens are text, as in that rendering.
        """
        literals = Literals.of(self.tokenizer, messages, tools, template_kwargs)
        text, spans = self._render(literals, messages, tools, template_kwargs, add_generation_prompt)
        pattern = self.tokenizer.special_pattern
        if suffix and pattern is not None:
            spans += tuple((len(text) + m.start(), len(text) + m.end()) for m in pattern.finditer(suffix))
        text += suffix
        return Prompt(text=text, tokens=token_array(self.tokenizer.encode(text, as_text=spans)), as_text=spans)

    def _render(
        self, literals: Literals, messages: Messages, tools: Tools, template_kwargs: Mapping[str, Any],
        add_generation_prompt: bool,
    ) -> tuple[str, Spans]:
        """The template's text for the conversation and the spans of special tokens written in it."""
        marked = self.template.render(literals.hide(messages), tools=literals.hide(tools),
                                      add_generation_prompt=add_generation_prompt, **template_kwargs)
        return literals.reveal(marked)

    def boundaries(
        self, prompt: Prompt, messages: Messages, *, tools: Tools, template_kwargs: Mapping[str, Any], above: int = 0
    ) -> tuple[Boundary, ...]:
        """Message boundaries of `prompt` (rendered from `messages`) at token `above` or later, ascending.

        Walks from the last message back and stops below `above`. Each candidate's text is encoded
        only up to the boundary after it (tokens[n:next] must equal it), so the cost follows the new
        messages, not the whole history. Resuming compares tokens exactly, so a boundary only decides
        where checkpoints are taken, never what they are used for.
        """
        min_chars = len(self.tokenizer.decode(prompt.tokens[:above])) if above else 0
        literals = Literals.of(self.tokenizer, messages, tools, template_kwargs)
        found: list[Boundary] = []
        # The latest verified split: (chars, tokens); the end of the prompt is one.
        later = (len(prompt.text), len(prompt.tokens))
        for i in range(len(messages), 0, -1):
            try:
                prefix, spans = self._render(literals, messages[:i], tools, template_kwargs, False)
            except ChatTemplateError:
                # Templates refuse some prefixes (e.g. no user message yet): no boundary there.
                continue
            chars = len(prefix)
            if 0 < chars <= later[0] and prompt.text.startswith(prefix) and _spans_below(prompt, chars) == spans:
                inside = tuple((lo - chars, hi - chars) for lo, hi in prompt.as_text if chars <= lo and hi <= later[0])
                piece = self.tokenizer.encode(prompt.text[chars : later[0]], as_text=inside)
                n = later[1] - len(piece)
                if n >= 0 and prompt.tokens[n : later[1]].tolist() == piece:
                    later = (chars, n)
                    if n >= above:
                        found.append(Boundary(n_tokens=n, n_messages=i))
                    if n <= above:
                        break
            if chars < min_chars:
                break
        return tuple(reversed(found))


def _spans_below(prompt: Prompt, chars: int) -> Spans | None:
    """The prompt's as-text spans before char `chars`, or None if one straddles it."""
    if any(lo < chars < hi for lo, hi in prompt.as_text):
        return None
    return tuple((lo, hi) for lo, hi in prompt.as_text if hi <= chars)
