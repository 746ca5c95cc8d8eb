"""A chat session: its live model state, token history, checkpoints, messages and RNG stream.

Invariants (kept by the engine, which alone mutates sessions, on its scheduler thread):
- `state` has consumed exactly `tokens` (state.n_tokens == len(tokens));
- every checkpoint is a prefix of `tokens` (ascending n_tokens, digest of that prefix);
- between requests, `tokens` is a prefix of the template rendering of `messages` (or the state was
  rolled back to the last checkpoint that is), so the next request resumes from it.
"""

from __future__ import annotations

import copy
import logging
import re
import secrets
import time
import uuid
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from qla_agent.errors import SessionError
from qla_agent.runtime.checkpoints import (
    Checkpoint,
    common_prefix_length,
    keep_checkpoints,
    token_array,
    token_digest,
)
from qla_agent.runtime.state import MemoryPolicy, SessionState

logger = logging.getLogger(__name__)

SESSION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def new_session_id() -> str:
    """A fresh random session id."""
    return f"sess_{uuid.uuid4().hex}"


def check_session_id(session_id: str) -> str:
    """Return `session_id` if it is safe as a file name, else raise SessionError."""
    if not isinstance(session_id, str) or not SESSION_ID.match(session_id) or ".." in session_id:
        raise SessionError(
            f"session id {session_id!r} is invalid: use 1-128 letters, digits, '_', '-' or '.', starting "
            "with a letter or digit"
        )
    return session_id


@dataclass(frozen=True, slots=True)
class CheckpointInfo:
    """Where a checkpoint sits: after `n_tokens` tokens, `n_messages` messages complete."""

    n_tokens: int
    n_messages: int
    digest: bytes


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """What callers may see of a session (a snapshot; sessions themselves stay in the engine).

    `location` is "cuda:0"/"cpu" for a session in memory, "disk" for one saved but not loaded.
    """

    id: str
    model_id: str
    policy: MemoryPolicy
    n_tokens: int
    messages: tuple[dict[str, Any], ...]
    tools: tuple[dict[str, Any], ...] | None
    template_kwargs: dict[str, Any]
    checkpoints: tuple[CheckpointInfo, ...]
    live_digest: bytes
    state_bytes: int
    location: str
    busy: bool
    implicit: bool
    created: float
    updated: float

    @property
    def n_messages(self) -> int:
        return len(self.messages)


@dataclass(frozen=True, slots=True)
class SessionOptions:
    """What a session's prompts are rendered with besides its messages (copies; cheap to take)."""

    id: str
    tools: tuple[dict[str, Any], ...] | None
    template_kwargs: dict[str, Any]

    @classmethod
    def of(cls, session_id: str, tools: Sequence[dict[str, Any]] | None,
           template_kwargs: dict[str, Any]) -> SessionOptions:
        return cls(id=session_id, tools=None if tools is None else tuple(copy.deepcopy(list(tools))),
                   template_kwargs=copy.deepcopy(template_kwargs))


@dataclass(slots=True, eq=False)
class Session:
    """A live session; see the module docstring for its invariants."""

    id: str
    model_id: str
    policy: MemoryPolicy
    state: SessionState
    tokens: array = field(default_factory=token_array)
    messages: list[dict[str, Any]] = field(default_factory=list)
    tools: list[dict[str, Any]] | None = None
    template_kwargs: dict[str, Any] = field(default_factory=dict)
    checkpoints: list[Checkpoint] = field(default_factory=list)
    # Sampling stream of requests without their own seed: draw k uses mix_seed(rng_seed, k).
    rng_seed: int = field(default_factory=lambda: secrets.randbits(63))
    rng_counter: int = 0
    # Created by a request without session_id: the engine may roll it back or evict it.
    implicit: bool = False
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    busy: bool = False
    # time.monotonic() of the last use (LRU).
    last_used: float = field(default_factory=time.monotonic)
    # Digest of `tokens` as of the last `live_digest()` call, keyed by its length.
    _digest: tuple[int, bytes] | None = None

    def live_digest(self) -> bytes:
        """`token_digest(tokens)`, cached while the history does not change length."""
        if self._digest is None or self._digest[0] != len(self.tokens):
            self._digest = (len(self.tokens), token_digest(self.tokens))
        return self._digest[1]

    @property
    def device(self) -> torch.device:
        return self.state.device

    def checkpoint_at(self, n_tokens: int) -> Checkpoint | None:
        """The checkpoint taken after exactly `n_tokens` tokens, if any."""
        return next((c for c in self.checkpoints if c.n_tokens == n_tokens), None)

    def capture(self, *, n_messages: int, limit: int) -> Checkpoint:
        """Checkpoint the live state (at a message boundary); keep at most `limit` checkpoints."""
        existing = self.checkpoint_at(len(self.tokens))
        if existing is not None:
            return existing
        cp = Checkpoint.capture(self.state, n_messages=n_messages, digest=self.live_digest())
        self.checkpoints.append(cp)
        self.checkpoints = keep_checkpoints(self.checkpoints, limit)
        return cp

    def restore(self, cp: Checkpoint) -> None:
        """Roll the live state back to checkpoint `cp`; later checkpoints are dropped."""
        if cp not in self.checkpoints:
            raise SessionError(f"checkpoint at {cp.n_tokens} tokens does not belong to session {self.id}")
        cp.restore_into(self.state)
        del self.tokens[cp.n_tokens :]
        self.checkpoints = [c for c in self.checkpoints if c.n_tokens <= cp.n_tokens]

    def resume(self, tokens: array, fresh: Callable[[], SessionState]) -> int:
        """Roll the live state to the longest reusable prefix of `tokens`; return its length.

        Reusable: the whole history when it prefixes `tokens`, else the latest checkpoint that does;
        at least one token is always left to run (its logits start the completion).
        """
        limit = len(tokens) - 1
        common = common_prefix_length(self.tokens, tokens)
        if common == len(self.tokens) <= limit:
            return common
        usable = [c for c in self.checkpoints if c.n_tokens <= min(common, limit)]
        if usable:
            self.restore(usable[-1])
            return usable[-1].n_tokens
        self.reset(fresh())
        return 0

    def reset(self, fresh: SessionState) -> None:
        """Start over from the empty state `fresh` (no usable checkpoint)."""
        self.state = fresh
        del self.tokens[:]
        self.checkpoints = []

    def feed(self, ids: Sequence[int]) -> None:
        """Record that the live state consumed `ids` (after the model ran them)."""
        self.tokens.extend(ids)
        if self.state.n_tokens != len(self.tokens):
            raise SessionError(
                f"session {self.id} state holds {self.state.n_tokens} tokens but its history {len(self.tokens)}"
            )

    def to(self, device: torch.device | str) -> None:
        """Move the live state and checkpoints to `device`."""
        self.state = self.state.to(device)
        self.checkpoints = [c.to(device) for c in self.checkpoints]

    def nbytes(self) -> int:
        """Bytes of the live state plus the checkpoints' copies."""
        return self.state.nbytes() + sum(c.nbytes() for c in self.checkpoints)

    def fork(self, new_id: str, *, at: Checkpoint | None = None, n_messages: int | None = None) -> Session:
        """An independent session equal to this one, or to checkpoint `at` of it (no model run).

        Checkpoint tensors are shared (never written); the live state is copied.
        """
        if at is None:
            state, tokens, checkpoints = self.state.clone(), token_array(self.tokens), list(self.checkpoints)
            messages = self.messages
        else:
            state = at.branch(self.state)
            tokens = self.tokens[: at.n_tokens]
            checkpoints = [c for c in self.checkpoints if c.n_tokens <= at.n_tokens]
            messages = self.messages[: at.n_messages if n_messages is None else n_messages]
        return Session(
            id=new_id,
            model_id=self.model_id,
            policy=self.policy,
            state=state,
            tokens=tokens,
            messages=copy.deepcopy(messages),
            tools=copy.deepcopy(self.tools),
            template_kwargs=copy.deepcopy(self.template_kwargs),
            checkpoints=checkpoints,
            rng_seed=self.rng_seed,
            rng_counter=self.rng_counter,
            implicit=self.implicit,
        )

    def options(self) -> SessionOptions:
        """Tools and template options, without copying the messages as `info()` does."""
        return SessionOptions.of(self.id, self.tools, self.template_kwargs)

    def info(self, *, location: str | None = None) -> SessionInfo:
        """A snapshot for callers."""
        return SessionInfo(
            id=self.id,
            model_id=self.model_id,
            policy=self.policy,
            n_tokens=len(self.tokens),
            messages=tuple(copy.deepcopy(self.messages)),
            tools=None if self.tools is None else tuple(copy.deepcopy(self.tools)),
            template_kwargs=copy.deepcopy(self.template_kwargs),
            checkpoints=tuple(CheckpointInfo(c.n_tokens, c.n_messages, c.digest) for c in self.checkpoints),
            live_digest=self.live_digest(),
            state_bytes=self.nbytes(),
            location=location or str(self.device),
            busy=self.busy,
            implicit=self.implicit,
            created=self.created,
            updated=self.updated,
        )
