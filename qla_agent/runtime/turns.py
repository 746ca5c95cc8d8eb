"""One request in flight: its prompt, where its prefill stands, and what it has generated.

A `Run` lives on the scheduler thread; it reaches its caller through a `Channel` (thread-safe hand-off
into the caller's asyncio loop). Text is streamed through the incremental detokenizer (whole UTF-8
characters only) and the stop-string matcher (stop strings never emitted).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from qla_agent.runtime.prompts import Boundary, Prompt
from qla_agent.runtime.requests import ChatRequest, Event, FinishReason, Finished, TextDelta, Usage
from qla_agent.runtime.sampling import SamplerState
from qla_agent.runtime.sessions import Session
from qla_agent.runtime.stopping import StopMatcher
from qla_agent.runtime.tokenizer import IncrementalDetokenizer

logger = logging.getLogger(__name__)


class Channel:
    """Events from the scheduler thread to one caller's event loop, and the caller's cancel flag."""

    __slots__ = ("loop", "queue", "cancelled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[Event | BaseException] = asyncio.Queue()
        # Set by the caller (any thread); the scheduler drops the request at its next step.
        self.cancelled = False

    def put(self, item: Event | BaseException) -> None:
        """Hand an event or an error to the caller (dropped if its loop is gone)."""
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:
            logger.debug("caller's event loop is closed; dropping %s", type(item).__name__)


@dataclass(frozen=True, slots=True)
class Conversation:
    """What a request renders: the whole message list, tools and template options."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None
    template_kwargs: dict[str, Any]


@dataclass(slots=True, eq=False)
class Run:
    """A request being served; `pos` is the next prompt token to prefill, `pending` the next to decode."""

    request: ChatRequest
    channel: Channel
    session: Session
    conversation: Conversation
    prompt: Prompt
    boundaries: list[Boundary]
    cached: int
    sampler: SamplerState
    detok: IncrementalDetokenizer
    stopper: StopMatcher
    stop_ids: frozenset[int]
    # Most tokens the session state may hold (None: no limit, bounded memory).
    context_limit: int | None
    pos: int = 0
    pending: int | None = None
    generated: list[int] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    finish_reason: FinishReason | None = None
    started: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None

    @property
    def prefilled(self) -> bool:
        return self.pos >= len(self.prompt)

    def next_chunk(self, max_tokens: int) -> tuple[int, Boundary | None]:
        """End of the next prefill chunk (≤ max_tokens, stopping at the next boundary) and that boundary."""
        while self.boundaries and self.boundaries[0].n_tokens <= self.pos:
            self.boundaries.pop(0)
        end = min(self.pos + max_tokens, len(self.prompt))
        if self.boundaries and self.boundaries[0].n_tokens <= end:
            boundary = self.boundaries.pop(0)
            return boundary.n_tokens, boundary
        return end, None

    def accept(self, token: int) -> None:
        """Take one sampled token: stream its text, or finish on a stop token/string or a limit."""
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
            self._emit(self.request.assistant_prefix)
        self.generated.append(token)
        if token in self.stop_ids:
            self.finish_reason = "stop"
            self._emit(self.stopper.feed(self.detok.flush()) + self.stopper.flush())
            return
        self._emit(self.stopper.feed(self.detok.push(token)))
        if self.stopper.stopped:
            self.finish_reason = "stop"
        elif len(self.generated) >= self.request.sampling.max_tokens or self._context_full():
            self.finish_reason = "length"
            self._emit(self.stopper.feed(self.detok.flush()) + self.stopper.flush())
        else:
            self.pending = token

    def _context_full(self) -> bool:
        # Prompt + completion may not exceed the context; the state holds all but the last token.
        return self.context_limit is not None and self.session.state.n_tokens + 1 >= self.context_limit

    def _emit(self, text: str) -> None:
        if text:
            self.text.append(text)
            self.channel.put(TextDelta(text))

    def completion(self) -> str:
        """The completion text so far: the assistant prefix, then the generated text (stop string excluded)."""
        return "".join(self.text)

    def finished(self, reason: FinishReason) -> Finished:
        usage = Usage(prompt_tokens=len(self.prompt), completion_tokens=len(self.generated), cached_tokens=self.cached)
        return Finished(finish_reason=reason, usage=usage, session_id=self.session.id, text=self.completion(),
                        token_ids=tuple(self.generated))


def assistant_message(text: str) -> dict[str, Any]:
    """The message a completion adds to its session: the raw text, as the template will re-render it."""
    return {"role": "assistant", "content": text}


def check_stop_ids(ids: Sequence[int], vocab_size: int) -> frozenset[int]:
    """Stop token ids inside the vocabulary (others can never be sampled)."""
    return frozenset(i for i in ids if 0 <= i < vocab_size)
