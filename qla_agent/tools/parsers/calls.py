"""Shared pieces of the call parsers: the tools' schemas, incremental arguments JSON, call bookkeeping."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from qla_agent.tools.parsers.types import Delta, ToolCallDelta

Announce = Callable[[str], ToolCallDelta]
TOOL_OPEN = "<tool_call>"
TOOL_CLOSE = "</tool_call>"


@dataclass(slots=True)
class Step:
    """What a call body did with the buffer: chars consumed, deltas made, call over, or not a call."""

    consumed: int = 0
    deltas: list[Delta] = field(default_factory=list)
    done: bool = False
    literal: bool = False


class ToolSchemas:
    """Parameter schemas by tool name, read from an OpenAI `tools` list (None: accept any tool, no schema)."""

    def __init__(self, tools: Sequence[Mapping[str, Any]] | None):
        self._known = tools is not None
        self._params: dict[str, Mapping[str, Any]] = {}
        for entry in tools or ():
            spec = entry.get("function", entry)
            if isinstance(spec, Mapping) and isinstance(spec.get("name"), str):
                params = spec.get("parameters")
                self._params[spec["name"]] = params if isinstance(params, Mapping) else {}

    def param_schema(self, tool: str, param: str) -> Mapping[str, Any] | None:
        """The schema of one parameter, or None when the tool or parameter is unknown."""
        props = self._params.get(tool, {}).get("properties")
        schema = props.get(param) if isinstance(props, Mapping) else None
        return schema if isinstance(schema, Mapping) else None

    def problems(self, tool: str, given: Iterable[str]) -> list[str]:
        """Why a call cannot run as given: unknown tool or missing required arguments."""
        if not self._known:
            return []
        if tool not in self._params:
            available = ", ".join(sorted(self._params)) or "none"
            return [f"unknown tool {tool!r} (available: {available})"]
        given = set(given)
        required = self._params[tool].get("required") or ()
        return [f"missing required argument {name!r}" for name in required if name not in given]


class ArgsWriter:
    """Writes an arguments object key by key, so streamed pieces concatenate to `json.dumps(args)`."""

    def __init__(self) -> None:
        self.keys: list[str] = []

    def key(self, name: str) -> str:
        """Text that opens the object or separates, then the quoted key and `: `."""
        sep = ", " if self.keys else "{"
        self.keys.append(name)
        return sep + json.dumps(name, ensure_ascii=False) + ": "

    def close(self) -> str:
        """Text that closes the object (`{}` when no key was written)."""
        return "}" if self.keys else "{}"


def json_fragment(text: str) -> str:
    """`text` escaped as the inside of a JSON string; pieces escape independently, so they concatenate."""
    return json.dumps(text, ensure_ascii=False)[1:-1]


class CallRecord:
    """Bookkeeping of one call in flight: its announced delta, the problems found, the final delta."""

    def __init__(self, schemas: ToolSchemas, announce: Announce):
        self.schemas = schemas
        self._announce = announce
        self.index: int | None = None
        self.name = ""
        self.errors: list[str] = []

    @property
    def announced(self) -> bool:
        return self.index is not None

    def start(self, name: str) -> ToolCallDelta:
        """Announce the call: the first delta with index, id and name."""
        delta = self._announce(name)
        self.index, self.name = delta.index, name
        return delta

    def finish(self, arguments_tail: str, given: Iterable[str], *, truncated: bool = False) -> ToolCallDelta:
        """The last delta: closing argument text plus every problem found (None when the call is fine)."""
        assert self.index is not None, "finish() before start()"
        errors = self.schemas.problems(self.name, given) + self.errors
        if truncated:
            errors.append("the output ended inside the call (truncated, e.g. by max_tokens)")
        return ToolCallDelta(index=self.index, arguments=arguments_tail, error="; ".join(errors) or None)
