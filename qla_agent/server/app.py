"""`create_app(settings, engine)`: the FastAPI app, its guards, its one error handler and its routes."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import Response

import qla_agent
from qla_agent.server import chat, sessions
from qla_agent.server.body import add_body_schemas
from qla_agent.server.convert import SamplingDefaults
from qla_agent.server.errors import ApiError, install_error_handler
from qla_agent.server.guards import Guard
from qla_agent.server.metrics import CONTENT_TYPE, ServerMetrics
from qla_agent.server.schemas import ChatCompletionRequest, CreateSession, ForkSession
from qla_agent.server.settings import ServerSettings
from qla_agent.server.state import ServerState, server_state

logger = logging.getLogger(__name__)


def create_app(settings: ServerSettings, engine: Any) -> FastAPI:
    """Build the app around a ready engine; the engine's scheduler starts and stops with the app."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await engine.start()
        try:
            yield
        finally:
            await engine.stop()

    app = FastAPI(title="qla-agent", version=qla_agent.__version__, lifespan=lifespan)
    metrics = ServerMetrics(getattr(engine, "stats", None))
    defaults = SamplingDefaults.from_model_dir(getattr(getattr(engine, "model", None), "model_dir", None))
    app.state.qla = ServerState(settings=settings, engine=engine, metrics=metrics, sampling_defaults=defaults)
    install_error_handler(app)
    app.include_router(chat.router)
    app.include_router(sessions.router)
    _add_info_routes(app)
    add_body_schemas(app, [ChatCompletionRequest, CreateSession, ForkSession])
    app.add_middleware(Guard, api_key=settings.api_key, max_body_bytes=settings.max_body_bytes,
                       max_import_bytes=settings.max_import_bytes, metrics=metrics)
    # CORS outermost, so the guards' 401/413 answers carry CORS headers too.
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "X-Session-Id"], expose_headers=["X-Session-Id"],
        )
    return app


def _add_info_routes(app: FastAPI) -> None:
    @app.get("/health")
    async def health(request: Request) -> dict[str, Any]:
        state = server_state(request)
        return {"status": "ok", "model": state.engine.model_id}

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict[str, Any]:
        return {"object": "list", "data": [_model_card(server_state(request))]}

    @app.get("/v1/models/{model:path}")
    async def get_model(model: str, request: Request) -> dict[str, Any]:
        state = server_state(request)
        if model != state.engine.model_id and model not in state.served_names:
            raise ApiError(404, f"model {model!r} is not served here; GET /v1/models lists "
                           f"{state.engine.model_id!r}", param="model", code="model_not_found")
        return _model_card(state)

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        return Response(server_state(request).metrics.render(), media_type=CONTENT_TYPE)


def _model_card(state: ServerState) -> dict[str, Any]:
    engine = state.engine
    return {
        "id": engine.model_id,
        "object": "model",
        "created": state.started,
        "owned_by": "qla-agent",
        "context_length": engine.context_length,
        "tool_format": engine.tool_format,
    }

