"""ASGI guards in front of every route: the API key, request-size limits, and request counting."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from qla_agent.server.errors import ApiError, error_response
from qla_agent.server.metrics import ServerMetrics

logger = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/health"})
IMPORT_PATH = "/v1/sessions/import"


class BodyTooLarge(ApiError):
    """A request body past the server's byte limit."""

    def __init__(self, limit: int, *, path: str) -> None:
        hint = "--max-import-bytes" if path == IMPORT_PATH else "--max-body-bytes"
        super().__init__(413, f"request body exceeds the server's limit of {limit} bytes; send less or "
                         f"start the server with a larger {hint}", code="body_too_large")


class Guard:
    """Checks the bearer key and Content-Length, caps the streamed body, counts responses by route."""

    def __init__(self, app: ASGIApp, *, api_key: str | None, max_body_bytes: int,
                 max_import_bytes: int, metrics: ServerMetrics) -> None:
        self.app = app
        self.api_key = api_key.encode() if api_key else None
        self.max_body_bytes = max_body_bytes
        self.max_import_bytes = max_import_bytes
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        status: dict[str, int] = {}

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        limit = self.max_import_bytes if path == IMPORT_PATH else self.max_body_bytes
        try:
            self._check_key(scope)
            _check_length(scope, limit, path)
            await self.app(scope, _capped(receive, limit, path), counting_send)
        except ApiError as e:
            if "code" in status:
                raise
            await error_response(e)(scope, receive, counting_send)
        finally:
            route = scope.get("route")
            label = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(route=label, status=str(status.get("code", 0))).inc()

    def _check_key(self, scope: Scope) -> None:
        if self.api_key is None or scope.get("path") in OPEN_PATHS or scope.get("method") == "OPTIONS":
            return
        given = _header(scope, b"authorization") or b""
        scheme, _, token = given.partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.api_key):
            what = "no API key given" if not given else "the API key is wrong"
            raise ApiError(401, f"{what}; send the server's key as `Authorization: Bearer <key>`",
                           code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value
    return None


def _check_length(scope: Scope, limit: int, path: str) -> None:
    raw = _header(scope, b"content-length")
    if raw is None:
        return
    try:
        length = int(raw)
    except ValueError as e:
        raise ApiError(400, f"Content-Length {raw[:40]!r} is not a number") from e
    if length > limit:
        raise BodyTooLarge(limit, path=path)


def _capped(receive: Receive, limit: int, path: str) -> Callable[[], Awaitable[Any]]:
    """Wrap `receive` so a body streamed past `limit` bytes (chunked, or lying Content-Length) stops."""
    seen = 0

    async def capped_receive() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BodyTooLarge(limit, path=path)
        return message

    return capped_receive
