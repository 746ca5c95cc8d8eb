"""Read a JSON request body ourselves: any Content-Type, clear 400s for bad JSON, schema errors as 422."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from pydantic import BaseModel

from qla_agent.server.errors import ApiError

M = TypeVar("M", bound=BaseModel)


async def read_model(request: Request, model: type[M], *, allow_empty: bool = False) -> M:
    """Parse and validate the body as `model`; an empty body is `{}` when `allow_empty`."""
    raw = await request.body()
    if not raw.strip():
        if not allow_empty:
            raise ApiError(400, "the request body is empty; send a JSON object", code="invalid_json")
        raw = b"{}"
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ApiError(400, f"the request body is not UTF-8 ({e.reason} at byte {e.start})",
                       code="invalid_json") from e
    except json.JSONDecodeError as e:
        raise ApiError(400, f"could not parse the JSON body: {e.msg} at line {e.lineno} column {e.colno}",
                       code="invalid_json") from e
    except RecursionError as e:
        raise ApiError(400, "the JSON body nests too deeply", code="invalid_json") from e
    if not isinstance(data, dict):
        raise ApiError(400, f"the JSON body must be an object, got {type(data).__name__}", code="invalid_json")
    return model.model_validate(data)


def documented(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` for a route that reads `model` itself: /docs shows the body schema."""
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


def add_body_schemas(app: FastAPI, models: list[type[BaseModel]]) -> None:
    """Put the schemas of bodies read by hand (see `documented`) into the app's OpenAPI document."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = build()
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            for model in models:
                schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                schemas.update(schema.pop("$defs", {}))
                schemas[model.__name__] = schema
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi
