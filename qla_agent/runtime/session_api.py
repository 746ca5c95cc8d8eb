"""`engine.sessions`: list, inspect, create, fork, delete, export and import sessions.

Every method is async and runs its work on the engine's scheduler thread (between model steps), so
it never races a running request and never blocks the event loop on tensor copies or disk I/O.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from qla_agent.errors import SessionBusyError, SessionError
from qla_agent.runtime.admission import Admission
from qla_agent.runtime.scheduler import Scheduler
from qla_agent.runtime.sessions import Session, SessionInfo, SessionOptions, check_session_id, new_session_id
from qla_agent.runtime.state import MemoryPolicy
from qla_agent.runtime.store import from_bytes, to_bytes

logger = logging.getLogger(__name__)

T = TypeVar("T")


class SessionsApi:
    """The session operations the server and CLI use (see each method)."""

    def __init__(self, scheduler: Scheduler, admission: Admission, *, fingerprint: str) -> None:
        self._scheduler = scheduler
        self._admission = admission
        self._table = admission.table
        self._fingerprint = fingerprint

    async def _call(self, fn: Callable[[], T]) -> T:
        return await asyncio.wrap_future(self._scheduler.call(fn))

    async def list(self) -> list[SessionInfo]:
        """Every session (in memory or on disk), most recently updated first."""
        def run() -> list[SessionInfo]:
            return sorted((self._table.info(i) for i in self._table.ids()), key=lambda i: i.updated, reverse=True)
        return await self._call(run)

    async def get(self, session_id: str) -> SessionInfo:
        """One session (SessionNotFoundError if unknown, SessionError if saved for another model)."""
        return await self._call(lambda: self._table.info(check_session_id(session_id)))

    async def options(self, session_id: str) -> SessionOptions:
        """A session's tools and template options: what a request that sends only new messages
        renders with. Cheaper than `get` (no copy of the messages, no load from disk)."""
        return await self._call(lambda: self._table.options(check_session_id(session_id)))

    async def create(
        self,
        *,
        session_id: str | None = None,
        messages: list[dict[str, Any]] | None = None,
        tools: list[dict[str, Any]] | None = None,
        template_kwargs: dict[str, Any] | None = None,
        policy: MemoryPolicy | None = None,
    ) -> SessionInfo:
        """A new session holding `messages` (prefilled by its first chat request) and saved at once."""
        def run() -> SessionInfo:
            new_id = check_session_id(session_id) if session_id is not None else new_session_id()
            session = self._table.create(session_id=new_id, model_id=self._admission.model_id,
                                         policy=policy or self._admission.default_policy, implicit=False)
            session.messages = copy.deepcopy(messages or [])
            session.tools = copy.deepcopy(tools)
            session.template_kwargs = copy.deepcopy(template_kwargs or {})
            self._table.save(session)
            return session.info()
        return await self._call(run)

    async def delete(self, session_id: str) -> None:
        """Forget a session in memory and on disk (SessionBusyError while a request runs on it)."""
        await self._call(lambda: self._table.delete(check_session_id(session_id)))

    async def fork(self, session_id: str, *, at_message: int | None = None, new_id: str | None = None) -> SessionInfo:
        """A new session equal to `session_id`, or to its first `at_message` messages; no prefill.

        With `at_message` the fork starts from the latest checkpoint within those messages (exact
        when one ends there; otherwise its first request prefills the rest).
        """
        def run() -> SessionInfo:
            parent = self._idle(session_id)
            child_id = check_session_id(new_id) if new_id is not None else new_session_id()
            if at_message is None:
                child = parent.fork(child_id)
            else:
                if not 0 <= at_message <= len(parent.messages):
                    raise SessionError(f"at_message={at_message} is outside 0..{len(parent.messages)} "
                                       f"(session {session_id!r} has {len(parent.messages)} messages)")
                usable = [c for c in parent.checkpoints if c.n_messages <= at_message]
                if usable:
                    child = parent.fork(child_id, at=usable[-1], n_messages=at_message)
                else:
                    child = parent.fork(child_id)
                    child.messages = child.messages[:at_message]
                    child.reset(self._admission.model.new_state(child.policy))
            child.implicit = False
            self._table.add(child)
            self._table.save(child)
            return child.info()
        return await self._call(run)

    async def export(self, session_id: str) -> bytes:
        """The session as one safetensors file (state, tokens, checkpoints; JSON in the header)."""
        return await self._call(lambda: to_bytes(self._idle(session_id), fingerprint=self._fingerprint))

    async def import_(self, data: bytes, *, session_id: str | None = None) -> SessionInfo:
        """Add an exported session (under `session_id` if given); SessionError if it is another model's."""
        def run() -> SessionInfo:
            session = from_bytes(data, fingerprint=self._fingerprint, device=self._table.device)
            if session_id is not None:
                session.id = check_session_id(session_id)
            self._table.add(session)
            self._table.save(session)
            return session.info()
        return await self._call(run)

    def _idle(self, session_id: str) -> Session:
        session = self._table.get(check_session_id(session_id))
        if session.busy:
            raise SessionBusyError(f"session {session_id!r} is busy with a request; try again when it finishes")
        return session
