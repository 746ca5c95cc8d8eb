"""Render a conversation with the chat template, tokenize it, and find its message boundaries.

A message boundary is a token position where the rendering of the first i messages (no generation
prompt) ends, *if* that rendering is a prefix of the whole prompt in text and in tokens. Only there
does the model state equal the state any longer conversation with those messages starts from, so
only there are checkpoints taken. Templates that rewrite older turns (Qwen3.5 drops old thinking)
simply have fewer boundaries.
"""

from __future__ import annotations

import logging
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from qla_agent.errors import ChatTemplateError
from qla_agent.runtime.chat_template import ChatTemplate
from qla_agent.runtime.checkpoints import token_array
from qla_agent.runtime.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

Messages = Sequence[Mapping[str, Any]]
Tools = Sequence[Mapping[str, Any]] | None


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

    def __len__(self) -> int:
        return len(self.tokens)


@dataclass(frozen=True, slots=True)
class Renderer:
    """The chat template and tokenizer of one model, used together."""

    template: ChatTemplate
    tokenizer: Tokenizer

    def render(
        self, messages: Messages, *, tools: Tools, template_kwargs: Mapping[str, Any], add_generation_prompt: bool = True
    ) -> Prompt:
        """Render and tokenize a conversation (ChatTemplateError if the template refuses it)."""
        text = self.template.render(messages, tools=tools, add_generation_prompt=add_generation_prompt, **template_kwargs)
        return Prompt(text=text, tokens=token_array(self.tokenizer.encode(text)))

    def boundaries(
        self, prompt: Prompt, messages: Messages, *, tools: Tools, template_kwargs: Mapping[str, Any], above: int = 0
    ) -> tuple[Boundary, ...]:
        """Message boundaries of `prompt` (rendered from `messages`) at token `above` or later, ascending.

        Renders prefixes from the longest down and stops below `above`, so the cost follows the new
        messages, not the whole history.
        """
        min_chars = len(self.tokenizer.decode(prompt.tokens[:above])) if above else 0
        found: list[Boundary] = []
        for i in range(len(messages), 0, -1):
            chars, boundary = self._boundary(prompt, messages, i, tools=tools, template_kwargs=template_kwargs)
            if boundary is not None and boundary.n_tokens >= above:
                found.append(boundary)
            if chars < min_chars or (boundary is not None and boundary.n_tokens <= above):
                break
        return tuple(reversed(found))

    def _boundary(
        self, prompt: Prompt, messages: Messages, i: int, *, tools: Tools, template_kwargs: Mapping[str, Any]
    ) -> tuple[int, Boundary | None]:
        """(length in chars of the first `i` messages rendered, their boundary or None if not shared)."""
        try:
            prefix = self.template.render(messages[:i], tools=tools, add_generation_prompt=False, **template_kwargs)
        except ChatTemplateError:
            # Templates refuse some prefixes (e.g. no user message yet): no boundary there.
            return len(prompt.text), None
        if not prefix or not prompt.text.startswith(prefix):
            return len(prefix), None
        prefix_tokens = token_array(self.tokenizer.encode(prefix))
        n = len(prefix_tokens)
        if prompt.tokens[:n] != prefix_tokens:
            return len(prefix), None
        return len(prefix), Boundary(n_tokens=n, n_messages=i)
