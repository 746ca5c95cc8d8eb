"""POST /v1/chat/completions: validate, run on the engine, answer as one object or as SSE chunks."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from qla_agent.runtime.requests import Event, Finished, Started, TextDelta
from qla_agent.server.body import documented, read_model
from qla_agent.server.convert import ChatPlan, plan_chat, resolve_session_id
from qla_agent.server.errors import ApiError, as_api_error
from qla_agent.server.generation import ChatRun, ClientGone, until_disconnect
from qla_agent.server.output import OutputParser, shape_output
from qla_agent.server.schemas import ChatCompletionRequest, valid_session_id
from qla_agent.server.shaping import DONE, CallFilter, Completion, delta_dict, finish_reason, sse_error
from qla_agent.server.state import server_state

logger = logging.getLogger(__name__)
router = APIRouter()
SESSION_HEADER = "X-Session-Id"
# nginx's status for "client closed the request".
CLIENT_CLOSED = 499


@router.post("/v1/chat/completions", openapi_extra=documented(ChatCompletionRequest))
async def chat_completions(request: Request) -> Response:
    state = server_state(request)
    body = await read_model(request, ChatCompletionRequest)
    session_id = resolve_session_id(body, _header_session_id(request))
    # A session's own tools and template options shape the prompt, so the parser needs them too.
    session = await state.engine.sessions.options(session_id) if session_id is not None else None
    plan = plan_chat(body, settings=state.settings, model_id=state.engine.model_id,
                     served_names=state.served_names, session_id=session_id, session=session,
                     defaults=state.sampling_defaults)
    plan, parser = shape_output(state.engine, plan)
    run = ChatRun.admit(state, lambda: state.engine.chat(plan.request))
    try:
        await run.prime(request)
        if plan.stream:
            stream = EventStream(run, stream_chunks(run, plan, parser, session_id=run.session_id),
                                 headers=_session_headers(run.session_id))
            run = None
            return stream
        return await until_disconnect(request, _collect(run, plan, parser))
    except ClientGone:
        # Nobody is listening; the status only shows in the access log and the metrics.
        return Response(status_code=CLIENT_CLOSED)
    finally:
        if run is not None:
            await run.close()


def _header_session_id(request: Request) -> str | None:
    value = request.headers.get(SESSION_HEADER)
    if value is not None and not valid_session_id(value):
        raise ApiError(400, f"{SESSION_HEADER} {value[:80]!r} is not a session id (letters, digits, '_', "
                       "'-', '.'; at most 128)", param="session_id")
    return value


def _session_headers(session_id: str | None) -> dict[str, str]:
    return {SESSION_HEADER: session_id} if session_id else {}


async def _collect(run: ChatRun, plan: ChatPlan, parser: OutputParser) -> JSONResponse:
    finished: Finished | None = None
    async for event in run:
        if isinstance(event, Finished):
            finished = event
    assert finished is not None
    return JSONResponse(completion_body(finished, plan, parser), headers=_session_headers(finished.session_id))


def completion_body(finished: Finished, plan: ChatPlan, parser: OutputParser) -> dict[str, Any]:
    """The chat.completion object for a finished generation: parsed, filtered by the tool policy."""
    calls = CallFilter(plan.policy)
    message = calls.message(parser.parse(finished.text))
    reason = finish_reason(finished, has_calls=calls.kept > 0)
    return Completion(model=plan.model, session_id=finished.session_id).response(message, finished, reason)


async def stream_chunks(events: AsyncIterable[Event], plan: ChatPlan, parser: OutputParser, *,
                        session_id: str | None = None) -> AsyncIterator[bytes]:
    """SSE chunks: the role, then content/reasoning/tool-call deltas, the finish reason, usage, [DONE].

    Every chunk carries `session_id` (the engine's Started event names it before any text).
    """
    completion = Completion(model=plan.model, session_id=session_id or plan.request.session_id,
                            include_usage=plan.include_usage)
    calls = CallFilter(plan.policy)
    yield completion.chunk({"role": "assistant", "content": ""})
    try:
        async for event in events:
            if isinstance(event, Started):
                completion.session_id = event.session_id
                continue
            if isinstance(event, TextDelta):
                deltas = calls.deltas(parser.feed(event.text))
            else:
                deltas = calls.deltas(parser.finish())
            for delta in deltas:
                yield completion.chunk(delta_dict(delta))
            if isinstance(event, Finished):
                completion.session_id = event.session_id
                reason = finish_reason(event, has_calls=calls.kept > 0)
                yield completion.chunk({}, reason=reason)
                if completion.include_usage:
                    yield completion.usage_chunk(event.usage)
    except Exception as e:
        # The status line is sent already: report the failure in the stream, as OpenAI does.
        yield sse_error(as_api_error(e))
    yield DONE


class EventStream(StreamingResponse):
    """An SSE response that closes its ChatRun however the stream ends (done, error, disconnect)."""

    def __init__(self, run: ChatRun, content: AsyncIterator[bytes], *, headers: dict[str, str]) -> None:
        super().__init__(content, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **headers})
        self.run = run

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.run.close()

