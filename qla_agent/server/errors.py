"""Every failure a client can see, mapped in one place to OpenAI's error body and an HTTP status."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from qla_agent.errors import (
    ContextOverflowError,
    EngineNotRunningError,
    QlaError,
    SessionBusyError,
    SessionError,
    SessionNotFoundError,
)

logger = logging.getLogger(__name__)

_TYPE_BY_STATUS = {
    401: "authentication_error",
    403: "permission_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable_error",
}


class ApiError(QlaError):
    """A request the server refuses: carries the HTTP status and OpenAI's `param` / `code`."""

    def __init__(self, status: int, message: str, *, param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}


def error_body(status: int, message: str, *, param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    """OpenAI's error JSON: {"error": {"message", "type", "param", "code"}}."""
    kind = _TYPE_BY_STATUS.get(status, "invalid_request_error" if status < 500 else "server_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def as_api_error(exc: BaseException) -> ApiError:
    """Translate any exception into the ApiError a client should see."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, SessionNotFoundError):
        return ApiError(404, str(exc), param="session_id", code="session_not_found")
    if isinstance(exc, ContextOverflowError):
        return ApiError(400, str(exc), param="messages", code="context_length_exceeded")
    if isinstance(exc, SessionBusyError):
        return ApiError(409, str(exc), param="session_id", code="session_busy", headers={"Retry-After": "1"})
    if isinstance(exc, EngineNotRunningError):
        return ApiError(503, str(exc), code="engine_not_running")
    if isinstance(exc, SessionError):
        return ApiError(409, str(exc), param="session_id", code="session_conflict")
    if isinstance(exc, QlaError):
        return ApiError(400, str(exc), code="invalid_request")
    if isinstance(exc, (RequestValidationError, ValidationError)):
        return _from_validation(exc.errors())
    if isinstance(exc, StarletteHTTPException):
        headers = dict(exc.headers or {})
        return ApiError(exc.status_code, str(exc.detail), code=_http_code(exc.status_code), headers=headers)
    logger.exception("unexpected error while serving a request", exc_info=exc)
    return ApiError(500, f"internal server error ({type(exc).__name__}); see the server log",
                    code="internal_error")


def error_response(exc: BaseException) -> JSONResponse:
    """The JSON response for an exception (used by the handler and by the ASGI middlewares)."""
    err = as_api_error(exc)
    body = error_body(err.status, err.message, param=err.param, code=err.code)
    return JSONResponse(body, status_code=err.status, headers=err.headers)


def install_error_handler(app: FastAPI) -> None:
    """Register the one handler for every exception class the app can raise."""

    async def handle(request: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, StarletteHTTPException) and exc.status_code in (404, 405):
            verb = "is not a route of this server" if exc.status_code == 404 else "does not take this method"
            exc = ApiError(exc.status_code, f"{request.method} {request.url.path} {verb}; see GET /docs",
                           code=_http_code(exc.status_code), headers=dict(exc.headers or {}))
        return error_response(exc)

    for exc_class in (Exception, QlaError, RequestValidationError, ValidationError, StarletteHTTPException):
        app.add_exception_handler(exc_class, handle)


def _from_validation(errors: list[Any]) -> ApiError:
    """422 naming the first bad field (as `messages[0].content`) and what was wrong with it."""
    if not errors:
        return ApiError(422, "the request body does not match the schema", code="invalid_schema")
    first = errors[0]
    loc = [part for part in first.get("loc", ()) if part != "body"]
    param = _dotted(loc) or None
    message = f"{param or 'body'}: {first.get('msg', 'invalid value')}"
    if first.get("type") == "extra_forbidden":
        message = f"{param}: unknown field; remove it (see GET /docs for the accepted fields)"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return ApiError(422, message, param=param, code="invalid_schema")


def _dotted(loc: list[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not _is_union_tag(part):
            out += f".{part}" if out else str(part)
    return out


def _is_union_tag(part: Any) -> bool:
    """pydantic puts the tried union member (`str`, `list[...]`, `function-after[...]`) in the loc."""
    text = str(part)
    return text in ("str", "int", "float", "bool", "dict") or "[" in text


def _http_code(status: int) -> str | None:
    return {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}.get(status)
