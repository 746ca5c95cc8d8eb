"""All sessions of an engine: in memory (device or CPU) or on disk, with LRU moves between them.

Used only from the engine's scheduler thread. Sessions in memory are `Session` objects; sessions
on disk are known by their `SessionInfo` (header only) until first use.
"""

from __future__ import annotations

import logging
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass

import torch

from qla_agent.errors import SessionBusyError, SessionError, SessionNotFoundError
from qla_agent.runtime.checkpoints import prefix_digests
from qla_agent.runtime.sessions import Session, SessionInfo, SessionOptions, check_session_id
from qla_agent.runtime.state import MemoryPolicy, SessionState
from qla_agent.runtime.store import Done, SessionStore, SessionWriter

logger = logging.getLogger(__name__)

# Roles a stateless request may drop from an implicit session and still continue it in place:
# the model's own answers and tool results (re-rendered differently, regenerated, or re-run).
_DERIVED_ROLES = frozenset({"assistant", "tool"})


@dataclass(frozen=True, slots=True)
class Match:
    """A session whose checkpoint after `n_tokens` tokens (`n_messages` messages) prefixes a prompt."""

    session_id: str
    n_tokens: int
    n_messages: int


@dataclass(frozen=True, slots=True)
class Limits:
    """How many sessions stay on the device / in memory, and how many implicit ones are kept at all."""

    device_sessions: int
    memory_sessions: int
    implicit_sessions: int


class SessionTable:
    """Sessions by id; loads from and saves to the store; moves idle ones off the device."""

    def __init__(
        self,
        *,
        device: torch.device,
        new_state: Callable[[MemoryPolicy], SessionState],
        store: SessionStore | None,
        limits: Limits,
    ) -> None:
        self.device = device
        self.new_state = new_state
        self.store = store
        self.writer = SessionWriter(store) if store is not None else None
        self.limits = limits
        self.loaded: dict[str, Session] = {}
        # Sessions on disk not loaded yet (header only).
        self.on_disk: dict[str, SessionInfo] = {}
        if store is not None:
            self.on_disk = {info.id: info for info in store.scan()}
            logger.info("found %d saved sessions in %s", len(self.on_disk), store.root)

    def __contains__(self, session_id: str) -> bool:
        return session_id in self.loaded or session_id in self.on_disk

    def ids(self) -> list[str]:
        return [*self.loaded, *self.on_disk]

    def info(self, session_id: str) -> SessionInfo:
        if session_id in self.loaded:
            return self.loaded[session_id].info()
        if session_id in self.on_disk:
            return self.on_disk[session_id]
        raise self._not_found(session_id)

    def options(self, session_id: str) -> SessionOptions:
        """A session's tools and template options (from the header for one on disk; no load)."""
        if session_id in self.loaded:
            return self.loaded[session_id].options()
        if session_id in self.on_disk:
            info = self.on_disk[session_id]
            return SessionOptions.of(session_id, info.tools, info.template_kwargs)
        raise self._not_found(session_id)

    def _not_found(self, session_id: str) -> Exception:
        if self.store is not None and self.store.exists(session_id):
            # Saved for another model: read_info raises the SessionError that says so.
            self.store.read_info(session_id)
        return SessionNotFoundError(f"no session {session_id!r}; list sessions to see the ids")

    def get(self, session_id: str) -> Session:
        """The session, loaded and on the device."""
        check_session_id(session_id)
        session = self.loaded.get(session_id)
        if session is None:
            if session_id not in self.on_disk or self.store is None:
                raise self._not_found(session_id)
            session = self.store.load(session_id, device=self.device)
            del self.on_disk[session_id]
            self.loaded[session_id] = session
            logger.info("loaded session %s (%d tokens) from disk", session_id, len(session.tokens))
        if session.device != self.device:
            session.to(self.device)
        session.last_used = time.monotonic()
        return session

    def add(self, session: Session) -> Session:
        if session.id in self:
            raise SessionError(f"session {session.id!r} already exists; pick another id or delete it first")
        session.last_used = time.monotonic()
        self.loaded[session.id] = session
        return session

    def create(self, *, session_id: str, model_id: str, policy: MemoryPolicy, implicit: bool) -> Session:
        return self.add(Session(id=session_id, model_id=model_id, policy=policy, state=self.new_state(policy),
                                implicit=implicit))

    def delete(self, session_id: str) -> None:
        session = self.loaded.get(session_id)
        if session is not None and session.busy:
            raise SessionBusyError(f"session {session_id!r} is busy with a request; cancel it or wait")
        if session_id not in self:
            raise self._not_found(session_id)
        self.loaded.pop(session_id, None)
        self.on_disk.pop(session_id, None)
        if self.store is not None and self.writer is not None:
            # A queued write must not bring the file back after the delete.
            self.writer.wait()
            self.store.delete(session_id)

    def save(self, session: Session) -> None:
        """Write the session now (no-op without a sessions directory)."""
        if self.writer is not None:
            self.writer.save(session)

    def save_later(self, session: Session, done: Done) -> None:
        """Queue a write of the session as it is now; `done(error or None)` once durable."""
        if self.writer is None:
            done(None)
        else:
            self.writer.submit(session, done)

    def flush(self) -> None:
        """Wait for queued writes."""
        if self.writer is not None:
            self.writer.wait()

    def _checkpoint_points(self) -> list[tuple[str, float, int, int, bytes]]:
        """(session id, updated, n_tokens, n_messages, digest) of every checkpoint of every session."""
        points = [
            (s.id, s.updated, c.n_tokens, c.n_messages, c.digest) for s in self.loaded.values() for c in s.checkpoints
        ]
        points += [
            (i.id, i.updated, c.n_tokens, c.n_messages, c.digest) for i in self.on_disk.values() for c in i.checkpoints
        ]
        return points

    def best_match(self, tokens: array) -> Match | None:
        """The session with the longest checkpoint that prefixes `tokens` (at most len-1 of them).

        Hashes first, then compares the tokens exactly once the session is loaded; ties go to the
        most recently updated session.
        """
        points = [p for p in self._checkpoint_points() if 0 < p[2] < len(tokens)]
        digests = prefix_digests(tokens, [p[2] for p in points])
        hits = sorted((p for p in points if digests.get(p[2]) == p[4]), key=lambda p: (p[2], p[1]), reverse=True)
        for session_id, _, n, n_messages, _ in hits:
            if self.get(session_id).tokens[:n] == tokens[:n]:
                return Match(session_id=session_id, n_tokens=n, n_messages=n_messages)
        return None

    def continues_in_place(self, session: Session, match: Match) -> bool:
        """Whether a stateless request matching `session` at `match` may roll it back in place."""
        dropped = session.messages[match.n_messages :]
        return session.implicit and not session.busy and all(m.get("role") in _DERIVED_ROLES for m in dropped)

    def enforce_limits(self) -> None:
        """Move least recently used idle sessions to CPU, out of memory (when saved), or drop implicit ones."""
        idle = sorted((s for s in self.loaded.values() if not s.busy), key=lambda s: s.last_used)
        on_device = [s for s in idle if s.device == self.device and self.device.type != "cpu"]
        for session in on_device[: max(0, len(on_device) - self.limits.device_sessions)]:
            session.to("cpu")
            logger.debug("moved idle session %s to CPU", session.id)
        if self.store is not None:
            for session in idle[: max(0, len(self.loaded) - self.limits.memory_sessions)]:
                self.save(session)
                self.on_disk[session.id] = session.info(location="disk")
                del self.loaded[session.id]
                logger.debug("unloaded idle session %s (saved)", session.id)
        implicit = [(s.updated, s.id) for s in self.loaded.values() if s.implicit and not s.busy]
        implicit += [(i.updated, i.id) for i in self.on_disk.values() if i.implicit]
        implicit.sort()
        for _, session_id in implicit[: max(0, len(implicit) - self.limits.implicit_sessions)]:
            logger.info("dropping implicit session %s (least recently used of %d)", session_id, len(implicit))
            self.delete(session_id)

    def total_state_bytes(self) -> int:
        return sum(s.nbytes() for s in self.loaded.values())
