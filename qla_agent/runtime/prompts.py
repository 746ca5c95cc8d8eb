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
        self, messages: Messages, *, tools: Tools, template_kwargs: Mapping[str, Any],
        add_generation_prompt: bool = True, suffix: str = "",
    ) -> Prompt:
        """Render and tokenize a conversation, `suffix` appended (ChatTemplateError if the template refuses it).

        The text is tokenized as a whole, so a suffix (the start of the answer) tokenizes as it would
        in the conversation's later rendering.
        """
        text = self.template.render(messages, tools=tools, add_generation_prompt=add_generation_prompt,
                                    **template_kwargs) + suffix
        return Prompt(text=text, tokens=token_array(self.tokenizer.encode(text)))

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
        found: list[Boundary] = []
        # The latest verified split: (chars, tokens); the end of the prompt is one.
        later = (len(prompt.text), len(prompt.tokens))
        for i in range(len(messages), 0, -1):
            try:
                prefix = self.template.render(messages[:i], tools=tools, add_generation_prompt=False, **template_kwargs)
            except ChatTemplateError:
                # Templates refuse some prefixes (e.g. no user message yet): no boundary there.
                continue
            chars = len(prefix)
            if 0 < chars <= later[0] and prompt.text.startswith(prefix):
                piece = self.tokenizer.encode(prompt.text[chars : later[0]])
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
