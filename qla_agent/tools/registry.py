"""The tool registry: JSON-schema functions by name, their OpenAI `tools` list, and safe calls.

A call never raises to the agent loop: bad JSON, unknown tools, schema violations, tool errors and
crashes all come back as a `ToolResult` with `error=True` whose content tells the model what to fix.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from qla_agent.errors import ToolError
from qla_agent.tools.parsers.types import ToolCall
from qla_agent.tools.schema import schema_types, validate

logger = logging.getLogger(__name__)

DEFAULT_MAX_RESULT_CHARS = 64_000
MAX_PARALLEL_CALLS = 8


@dataclass(frozen=True, slots=True)
class Tool:
    """A function the model may call: its name, description, JSON schema of parameters and callable."""

    name: str
    description: str
    parameters: Mapping[str, Any]
    fn: Callable[..., Any] = field(compare=False)

    def to_openai(self) -> dict[str, Any]:
        """The tool as an entry of an OpenAI request's `tools` list."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": dict(self.parameters)},
        }


@dataclass(frozen=True, slots=True)
class ToolResult:
    """What a call produced; `content` is what the model reads (an error message when `error`)."""

    name: str
    content: str
    error: bool = False
    call_id: str | None = None

    def to_message(self) -> dict[str, Any]:
        """The result as an OpenAI `tool` message."""
        return {"role": "tool", "tool_call_id": self.call_id or "", "content": self.content}


class ToolRegistry:
    """Tools by name; `call` validates arguments against the schema and never raises."""

    def __init__(self, tools: Iterable[Tool] = (), *, max_result_chars: int = DEFAULT_MAX_RESULT_CHARS):
        self._tools: dict[str, Tool] = {}
        self.max_result_chars = max_result_chars
        for tool in tools:
            self.add(tool)

    def add(self, tool: Tool) -> None:
        """Register a tool; a second tool with the same name is refused."""
        if tool.name in self._tools:
            raise ToolError(f"a tool named {tool.name!r} is already registered; rename one of them")
        if not isinstance(tool.parameters, Mapping) or tool.parameters.get("type", "object") != "object":
            raise ToolError(f"tool {tool.name!r}: parameters must be a JSON schema of type object")
        self._tools[tool.name] = tool

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def names(self) -> list[str]:
        return list(self._tools)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __len__(self) -> int:
        return len(self._tools)

    def openai_tools(self) -> list[dict[str, Any]]:
        """Every tool as an OpenAI `tools` list, in registration order."""
        return [tool.to_openai() for tool in self._tools.values()]

    def check(self, name: str, arguments: str | Mapping[str, Any] | None) -> tuple[dict[str, Any], list[str]]:
        """Decode and validate arguments: (arguments ready for the call, problems; empty when fine)."""
        tool = self._tools.get(name)
        if tool is None:
            return {}, [f"unknown tool {name!r} (available: {', '.join(self._tools) or 'none'})"]
        args, problems = _decode(arguments)
        if problems:
            return {}, problems
        args = _drop_optional_nulls(args, tool.parameters)
        return args, validate(args, tool.parameters)

    def call(self, name: str, arguments: str | Mapping[str, Any] | None, *, call_id: str | None = None) -> ToolResult:
        """Run a tool; every failure becomes an error result the model can read."""
        args, problems = self.check(name, arguments)
        if problems:
            return ToolResult(name, _problems_text(name, problems), error=True, call_id=call_id)
        try:
            value = self._tools[name].fn(**args)
        except ToolError as e:
            return ToolResult(name, f"error: {e}", error=True, call_id=call_id)
        except Exception as e:  # noqa: BLE001 - a crashing tool must not end the agent loop
            logger.warning("tool %r raised %s", name, type(e).__name__)
            logger.debug("tool %r traceback", name, exc_info=True)
            return ToolResult(name, f"error: {type(e).__name__}: {e}", error=True, call_id=call_id)
        return ToolResult(name, self._render(value), call_id=call_id)

    def run_call(self, call: ToolCall) -> ToolResult:
        """Run a parsed call; a call the parser already flagged is reported, not run."""
        if call.error is not None:
            return ToolResult(call.name, f"error: tool call not run: {call.error}", error=True, call_id=call.id)
        return self.call(call.name, call.arguments, call_id=call.id)

    def run_calls(self, calls: Iterable[ToolCall], *, max_workers: int = MAX_PARALLEL_CALLS) -> list[ToolResult]:
        """Run several parsed calls concurrently in worker threads (at most `max_workers`); results in call order."""
        calls = list(calls)
        if not calls:
            return []
        with ThreadPoolExecutor(max_workers=min(max_workers, len(calls))) as pool:
            return list(pool.map(self.run_call, calls))

    async def arun_calls(self, calls: Iterable[ToolCall]) -> list[ToolResult]:
        """`run_calls` without blocking the event loop."""
        return await asyncio.to_thread(self.run_calls, calls)

    def _render(self, value: Any) -> str:
        if isinstance(value, str):
            text = value
        elif value is None:
            text = "ok"
        else:
            text = json.dumps(value, ensure_ascii=False, default=str)
        if len(text) > self.max_result_chars:
            dropped = len(text) - self.max_result_chars
            text = text[: self.max_result_chars] + f"\n[truncated: {dropped} more characters]"
        return text


def _decode(arguments: str | Mapping[str, Any] | None) -> tuple[dict[str, Any], list[str]]:
    if arguments is None or (isinstance(arguments, str) and not arguments.strip()):
        return {}, []
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except (ValueError, RecursionError) as e:
            return {}, [f"arguments are not valid JSON ({e}); send a JSON object"]
    if not isinstance(arguments, Mapping):
        return {}, [f"arguments must be a JSON object, got {type(arguments).__name__}"]
    return dict(arguments), []


def _drop_optional_nulls(args: dict[str, Any], schema: Mapping[str, Any]) -> dict[str, Any]:
    """Treat `null` for an optional argument that does not allow null as 'not given'."""
    required = set(schema.get("required") or ())
    props = schema.get("properties") or {}
    return {
        k: v for k, v in args.items()
        if not (v is None and k not in required and k in props and "null" not in schema_types(props[k])
                and schema_types(props[k]))
    }


def _problems_text(name: str, problems: list[str]) -> str:
    return f"error: invalid call to {name!r}: " + "; ".join(problems)
