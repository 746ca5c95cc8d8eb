"""One chat request's life on the engine: admission, the event iterator, cancellation and metrics."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from fastapi import Request

from qla_agent.runtime.requests import Event, Finished, Started, TextDelta
from qla_agent.server.errors import ApiError
from qla_agent.server.state import ServerState

logger = logging.getLogger(__name__)

T = TypeVar("T")


class ClientGone(Exception):
    """The client closed the connection before the answer was ready."""


class ChatRun:
    """Owns the engine's event iterator for one request; `close()` cancels whatever is left of it."""

    def __init__(self, state: ServerState, events: AsyncIterator[Event]) -> None:
        self.state = state
        self.events = events
        self.start = time.perf_counter()
        self.first: float | None = None
        self.finished: Finished | None = None
        # Known from the engine's Started event, before any text.
        self.session_id: str | None = None
        self._closed = False
        self._pending: Event | None = None

    @classmethod
    def admit(cls, state: ServerState, start: Callable[[], AsyncIterator[Event]]) -> ChatRun:
        """Count the request in flight (429 past the limit) and start it on the engine."""
        limit = state.settings.max_concurrent_requests
        if state.in_flight >= limit:
            raise ApiError(429, f"the server is busy: {limit} chat requests are in flight; retry shortly",
                           code="server_busy", headers={"Retry-After": "1"})
        state.in_flight += 1
        state.metrics.in_flight.inc()
        try:
            return cls(state, start())
        except BaseException:
            state.in_flight -= 1
            state.metrics.in_flight.dec()
            raise

    async def prime(self, request: Request) -> None:
        """Wait for the first event (Started once admitted), so refusals still become HTTP statuses."""
        self._pending = await until_disconnect(request, self._next())

    async def __aiter__(self) -> AsyncIterator[Event]:
        if self._pending is not None:
            event, self._pending = self._pending, None
            yield event
            if isinstance(event, Finished):
                return
        while self.finished is None:
            yield await self._next()

    async def _next(self) -> Event:
        try:
            event = await anext(self.events)
        except StopAsyncIteration as e:
            raise ApiError(500, "the engine ended the request without a result", code="internal_error") from e
        now = time.perf_counter()
        if isinstance(event, Started):
            self.session_id = event.session_id
        if isinstance(event, TextDelta) and self.first is None and event.text:
            self.first = now
        if isinstance(event, Finished):
            self.finished = event
            self._record(event, now)
        return event

    def _record(self, finished: Finished, now: float) -> None:
        metrics = self.state.metrics
        metrics.record_usage(finished.usage)
        metrics.record_timing(start=self.start, first=self.first, end=now,
                              completion_tokens=finished.usage.completion_tokens)

    async def close(self) -> None:
        """Cancel the generation if it is still running and release the request's slot (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self.state.in_flight -= 1
        self.state.metrics.in_flight.dec()
        if self.finished is None:
            logger.info("chat request cancelled before it finished")
        # Shielded: this often runs inside a cancelled scope (the client went away).
        await asyncio.shield(_aclose(self.events))


async def _aclose(events: AsyncIterator[Event]) -> None:
    aclose = getattr(events, "aclose", None)
    if aclose is not None:
        await aclose()


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, but cancel it and raise ClientGone if the client disconnects first."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_disconnect(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        task.cancel()
        watcher.cancel()
        raise
    if task in done:
        watcher.cancel()
        return task.result()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    raise ClientGone()


async def _wait_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
