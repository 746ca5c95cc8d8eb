"""What the engine takes and gives back: the boundary between the engine and its callers.

The server converts wire schemas into these records at the edge; the engine never sees pydantic.
Every record checks its own values on construction and raises `RequestError` naming the bad field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from qla_agent.errors import RequestError
from qla_agent.runtime.state import MemoryPolicy

FinishReason = Literal["stop", "length", "cancelled", "error"]


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How to pick each next token; temperature 0 means greedy.

    Penalties follow OpenAI/vLLM: presence and frequency penalties count the completion's tokens,
    the repetition penalty (HF style: divide positive logits, multiply negative ones) every token of
    the prompt and the completion. `logit_bias` maps token id -> value added to its logit before
    anything else (-100 bans a token, +100 all but forces it). `seed` makes the request reproducible
    on its own; without it the session's RNG stream is used (and persisted with the session).
    `stop` strings are never part of the returned text; `stop_after` strings end it too but stay in
    it (the server stops after the first `</tool_call>` when it returns one call at most);
    `stop_token_ids` add to the tokenizer's eos.
    """

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
    stop_after: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    logit_bias: dict[int, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        checks = (
            ("temperature", self.temperature >= 0.0, ">= 0"),
            ("top_p", 0.0 < self.top_p <= 1.0, "in (0, 1]"),
            ("top_k", self.top_k >= 0, ">= 0 (0 disables it)"),
            ("min_p", 0.0 <= self.min_p <= 1.0, "in [0, 1]"),
            ("repetition_penalty", self.repetition_penalty > 0.0, "> 0 (1 disables it)"),
            ("max_tokens", self.max_tokens >= 1, ">= 1"),
        )
        for name, ok, rule in checks:
            if not ok:
                raise RequestError(f"sampling {name}={getattr(self, name)!r} must be {rule}")
        for name in ("stop", "stop_after"):
            if any(not s for s in getattr(self, name)):
                raise RequestError(f"{name} strings must be non-empty, got {getattr(self, name)!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """One chat turn: the messages (OpenAI shape, plain dicts), tools and template options.

    With `session_id` the messages are appended to the session's stored messages, after keeping only
    the first `keep_messages` of them when that is set (0: `messages` is the whole conversation;
    len-1 with no new messages: regenerate the last answer; len-2 plus an edited user message: edit
    the last turn). `tools=None` then keeps the session's tools and `template_kwargs` update its own.
    Without `session_id` the messages are the whole conversation: the engine reuses any session whose
    checkpoints prefix the rendered prompt, and creates a new session otherwise (with `policy`, or
    the engine's default policy). `Finished.session_id` names the session either way.

    `assistant_prefix` starts the answer: it is appended to the rendered prompt (after the generation
    prompt) and prefilled, so the model continues it. It is part of the completion text (the first
    TextDelta, Finished.text, the stored assistant message) but its tokens count as prompt tokens,
    and stop strings are looked for only in what the model generates after it.
    """

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None
    sampling: SamplingParams = field(default_factory=SamplingParams)
    session_id: str | None = None
    template_kwargs: dict[str, Any] = field(default_factory=dict)
    keep_messages: int | None = None
    policy: MemoryPolicy | None = None
    assistant_prefix: str = ""

    def __post_init__(self) -> None:
        if self.keep_messages is not None and self.keep_messages < 0:
            raise RequestError(f"keep_messages={self.keep_messages} must be >= 0")
        if self.keep_messages is not None and self.session_id is None:
            raise RequestError("keep_messages needs a session_id: it trims that session's stored messages")


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
class Started:
    """First event of a request: it was admitted and runs in session `session_id` (before any text).

    Errors that refuse a request (unknown or busy session, context overflow, ...) come before it;
    a caller that waits for Started knows the session of a new conversation right away.
    """

    session_id: str


@dataclass(frozen=True, slots=True)
class TextDelta:
    """New text of the completion, never splitting a UTF-8 character."""

    text: str


@dataclass(frozen=True, slots=True)
class Finished:
    """Last event of a request: why it stopped, its usage, and the session it ran in.

    `text` is the whole raw completion (what the deltas joined to: the assistant prefix, then the
    generated text, stop string excluded);
    `token_ids` the sampled tokens (a stop token included when one ended the request).
    """

    finish_reason: FinishReason
    usage: Usage
    session_id: str
    text: str
    token_ids: tuple[int, ...] = ()


Event = Started | TextDelta | Finished
