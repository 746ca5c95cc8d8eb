"""Declaring tools from Python functions: the `@tool` decorator and schemas inferred from type hints.

    @tool
    def add(a: int, b: int = 0) -> int:
        "Add two integers."
        return a + b

Hints map to JSON types (str, int, float, bool, list[X], dict, X | None, Literal[...]);
`Annotated[T, "text"]` adds a parameter description. Pass `parameters=` to give the schema yourself.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

from qla_agent.errors import ToolError
from qla_agent.tools.registry import Tool

TOOL_ATTR = "__qla_tool__"
_SIMPLE = {str: "string", int: "integer", float: "number", bool: "boolean", dict: "object", list: "array",
           type(None): "null"}


def tool(
    fn: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    description: str | None = None,
    parameters: Mapping[str, Any] | None = None,
) -> Any:
    """Mark a function as a tool (usable bare, `@tool`, or with options, `@tool(name=...)`)."""

    def mark(f: Callable[..., Any]) -> Callable[..., Any]:
        setattr(f, TOOL_ATTR, tool_from_function(f, name=name, description=description, parameters=parameters))
        return f

    return mark(fn) if fn is not None else mark


def tool_from_function(
    fn: Callable[..., Any],
    *,
    name: str | None = None,
    description: str | None = None,
    parameters: Mapping[str, Any] | None = None,
) -> Tool:
    """A Tool for a function: name from `__name__`, description from the docstring's first line."""
    doc = inspect.getdoc(fn) or ""
    return Tool(
        name=name or fn.__name__,
        description=description if description is not None else (doc.splitlines() or [""])[0],
        parameters=dict(parameters) if parameters is not None else infer_parameters(fn),
        fn=fn,
    )


def infer_parameters(fn: Callable[..., Any]) -> dict[str, Any]:
    """A JSON schema (type object) for a function's keyword-callable parameters, from its type hints."""
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception as e:  # noqa: BLE001 - any failure to resolve hints is reported the same way
        raise ToolError(f"cannot read the type hints of {fn.__qualname__}: {e}; pass parameters= instead") from e
    props: dict[str, Any] = {}
    required: list[str] = []
    params = inspect.signature(fn).parameters.values()
    for param in params:
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD, param.POSITIONAL_ONLY):
            continue
        props[param.name] = hint_schema(hints.get(param.name, Any), where=f"{fn.__qualname__}({param.name})")
        if param.default is param.empty:
            required.append(param.name)
    schema: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        schema["required"] = required
    if not any(p.kind is p.VAR_KEYWORD for p in params):
        # Arguments the function cannot take are refused by validation, with the known names listed.
        schema["additionalProperties"] = False
    return schema


def hint_schema(hint: Any, *, where: str = "") -> dict[str, Any]:
    """The JSON schema of one type hint."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return {}
    if origin is typing.Annotated:
        schema = hint_schema(args[0], where=where)
        texts = [a for a in args[1:] if isinstance(a, str)]
        return {**schema, "description": texts[0]} if texts else schema
    if origin is typing.Literal:
        return {"enum": list(args)}
    if origin in (typing.Union, types.UnionType):
        subs = [hint_schema(a, where=where) for a in args]
        if all(set(s) == {"type"} and isinstance(s["type"], str) for s in subs):
            return {"type": [s["type"] for s in subs]}
        return {"anyOf": subs}
    if origin in (list, tuple, set, frozenset) or hint in (list, tuple):
        return {"type": "array", "items": hint_schema(args[0], where=where)} if args else {"type": "array"}
    if origin is dict or hint is dict:
        return {"type": "object"}
    if hint in _SIMPLE:
        return {"type": _SIMPLE[hint]}
    raise ToolError(f"{where}: no JSON schema for type hint {hint!r}; use str, int, float, bool, list, dict, "
                    "Literal or X | None, or pass parameters=")
