"""What the engine takes and gives back: the boundary between the engine and its callers.

The server converts wire schemas into these records at the edge; the engine never sees pydantic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

FinishReason = Literal["stop", "length", "cancelled", "error"]


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How to pick each next token; temperature 0 means greedy."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    max_tokens: int = 512
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """One chat turn: the messages (OpenAI shape, plain dicts), tools and template options.

    With `session_id` the messages may be only the new ones: the engine appends them to the
    session's history. Without it the engine still reuses any session whose history prefixes
    the rendered prompt, and creates a new session otherwise.
    """

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None
    sampling: SamplingParams = field(default_factory=SamplingParams)
    session_id: str | None = None
    template_kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts of one request; `cached_tokens` were reused from a session checkpoint."""

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class TextDelta:
    """New text of the completion, never splitting a UTF-8 character."""

    text: str


@dataclass(frozen=True, slots=True)
class Finished:
    """Last event of a request: why it stopped, its usage, and the session it ran in."""

    finish_reason: FinishReason
    usage: Usage
    session_id: str
    text: str


Event = TextDelta | Finished
