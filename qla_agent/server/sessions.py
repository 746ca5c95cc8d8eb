"""The sessions API: list, create, inspect, fork, delete, export and import sessions."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from qla_agent.runtime.sessions import SessionInfo
from qla_agent.server.body import documented, read_model
from qla_agent.server.convert import memory_policy, message_dict, template_kwargs, tool_dict
from qla_agent.server.errors import ApiError
from qla_agent.server.schemas import CreateSession, ForkSession, valid_session_id
from qla_agent.server.state import ServerState, server_state

router = APIRouter(prefix="/v1/sessions")


@router.get("")
async def list_sessions(request: Request) -> dict[str, Any]:
    infos = await server_state(request).engine.sessions.list()
    return {"object": "list", "data": [session_json(info) for info in infos]}


@router.post("", openapi_extra=documented(CreateSession))
async def create_session(request: Request) -> dict[str, Any]:
    state = server_state(request)
    body = await read_model(request, CreateSession, allow_empty=True)
    await _check_room(state)
    info = await state.engine.sessions.create(
        session_id=body.id,
        messages=[message_dict(m, i) for i, m in enumerate(body.messages)],
        tools=[tool_dict(t) for t in body.tools] if body.tools else None,
        template_kwargs=template_kwargs(body.chat_template_kwargs, body.enable_thinking, None),
        policy=memory_policy(body.memory_policy, state.settings),
    )
    return session_json(info, full=True)


@router.post("/import")
async def import_session(request: Request) -> dict[str, Any]:
    state = server_state(request)
    new_id = _optional_id(request.query_params.get("session_id"))
    data = await request.body()
    if not data:
        raise ApiError(400, "the body is empty: send the bytes of an exported session file", code="empty_body")
    await _check_room(state)
    info = await state.engine.sessions.import_(data, session_id=new_id)
    return session_json(info, full=True)


@router.get("/{session_id}")
async def get_session(session_id: str, request: Request) -> dict[str, Any]:
    info = await server_state(request).engine.sessions.get(_path_id(session_id))
    return session_json(info, full=True)


@router.delete("/{session_id}")
async def delete_session(session_id: str, request: Request) -> dict[str, Any]:
    await server_state(request).engine.sessions.delete(_path_id(session_id))
    return {"id": session_id, "object": "session.deleted", "deleted": True}


@router.post("/{session_id}/fork", openapi_extra=documented(ForkSession))
async def fork_session(session_id: str, request: Request) -> dict[str, Any]:
    state = server_state(request)
    body = await read_model(request, ForkSession, allow_empty=True)
    await _check_room(state)
    info = await state.engine.sessions.fork(_path_id(session_id), at_message=body.at_message, new_id=body.id)
    return session_json(info, full=True)


@router.get("/{session_id}/export")
async def export_session(session_id: str, request: Request) -> Response:
    data = await server_state(request).engine.sessions.export(_path_id(session_id))
    return Response(data, media_type="application/octet-stream",
                    headers={"Content-Disposition": f'attachment; filename="{session_id}.safetensors"'})


def session_json(info: SessionInfo, *, full: bool = False) -> dict[str, Any]:
    """A session as the API shows it; `full` adds the messages, tools and template options."""
    out: dict[str, Any] = {
        "id": info.id,
        "object": "session",
        "model": info.model_id,
        "created": int(info.created),
        "updated": int(info.updated),
        "n_tokens": info.n_tokens,
        "n_messages": info.n_messages,
        "memory_policy": {"kind": info.policy.kind, "sink_tokens": info.policy.sink_tokens,
                          "window_tokens": info.policy.window_tokens},
        "state_bytes": info.state_bytes,
        "location": info.location,
        "busy": info.busy,
        "implicit": info.implicit,
        "checkpoints": [{"n_tokens": c.n_tokens, "n_messages": c.n_messages} for c in info.checkpoints],
    }
    if full:
        out["messages"] = list(info.messages)
        out["tools"] = None if info.tools is None else list(info.tools)
        out["chat_template_kwargs"] = info.template_kwargs
    return out


async def _check_room(state: ServerState) -> None:
    limit = state.settings.max_sessions
    count = len(await state.engine.sessions.list())
    if count >= limit:
        raise ApiError(429, f"the server holds {count} sessions, its limit is {limit}; delete some "
                       "(DELETE /v1/sessions/{id}) or start it with a larger --max-sessions",
                       code="too_many_sessions")


def _path_id(session_id: str) -> str:
    if not valid_session_id(session_id):
        raise ApiError(400, f"{session_id[:80]!r} is not a session id (letters, digits, '_', '-', '.'; "
                       "at most 128)", param="session_id", code="invalid_session_id")
    return session_id


def _optional_id(session_id: str | None) -> str | None:
    return None if session_id is None else _path_id(session_id)
