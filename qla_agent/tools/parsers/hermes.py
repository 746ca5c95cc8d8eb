"""The body of a Hermes JSON call (Qwen3-Next): `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`.

Rules (each pinned by tests/data/tool_calls):
- The body is one JSON object, found by matching braces outside strings; it ends where the object
  closes, or at `</tool_call>` / `<tool_call>` outside a string (missing closing braces are added).
- As soon as the object starts with `{"name": "NAME",` the call is announced (first delta); the
  arguments are emitted in one piece when the object is complete, as `json.dumps(arguments)`.
- `{"function": {...}}` wrappers and `"parameters"` for `"arguments"` are accepted; arguments given
  as a JSON string are decoded; Python-literal dicts (single quotes, True) are read with literal_eval.
- String values under a non-string schema are coerced as in the XML format.
- An object that does not parse: a call with an error when its name was announced, else text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from qla_agent.tools.parsers.calls import TOOL_CLOSE, TOOL_OPEN, Announce, CallRecord, Step, ToolSchemas
from qla_agent.tools.schema import coerce_value, load_json_or_literal

_NAME_RE = re.compile(r'\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*[,}]')
_CLOSERS = {"{": "}", "[": "]"}


class HermesCall:
    """Incremental parser of one JSON call object (the text from its opening brace)."""

    trailing = " \t\r\n}"

    def __init__(self, schemas: ToolSchemas, announce: Announce):
        self._call = CallRecord(schemas, announce)
        self._pos = 0
        self._stack: list[str] = []
        self._in_str = False
        self._escaped = False

    def step(self, buf: str, final: bool) -> Step:
        """Scan `buf` (the whole body so far); decide once the object is complete or at `final`."""
        step = Step()
        end = self._scan(buf, final)
        if not self._call.announced:
            match = _NAME_RE.match(buf, 0, len(buf) if end is None else end)
            if match:
                step.deltas.append(self._call.start(_decode_name(match.group(1))))
        if end is None and not final:
            return step
        truncated = end is None
        end = len(buf) if end is None else end
        obj, error = _load_object(buf[:end], "".join(_CLOSERS[c] for c in reversed(self._stack)))
        call = _unwrap(obj)
        if call is None and not self._call.announced:
            step.literal = True
            return step
        step.consumed, step.done = end, True
        if call is None:
            self._call.errors.append(f"invalid JSON in tool call: {error or 'no tool name'}")
            step.deltas.append(self._call.finish("{}", (), truncated=truncated))
            return step
        step.deltas.extend(self._emit(*call, truncated=truncated))
        return step

    def _scan(self, buf: str, final: bool) -> int | None:
        """Advance the brace matcher; the end index of the body, or None while it is open."""
        i = self._pos
        while i < len(buf):
            c = buf[i]
            if self._in_str:
                if self._escaped:
                    self._escaped = False
                elif c == "\\":
                    self._escaped = True
                elif c == '"':
                    self._in_str = False
            elif c == '"':
                self._in_str = True
            elif c in _CLOSERS:
                self._stack.append(c)
            elif c in "}]":
                if self._stack:
                    self._stack.pop()
                if not self._stack:
                    self._pos = i + 1
                    return i + 1
            elif c == "<":
                tail = buf[i:]
                if tail.startswith((TOOL_CLOSE, TOOL_OPEN)):
                    self._pos = i
                    return i
                if not final and (TOOL_CLOSE.startswith(tail) or TOOL_OPEN.startswith(tail)):
                    break
            i += 1
        self._pos = i
        return None

    def _emit(self, name: str, args: Any, *, truncated: bool) -> list:
        deltas = [] if self._call.announced else [self._call.start(name)]
        if name != self._call.name:
            self._call.errors.append(f"tool name {name!r} differs from the announced {self._call.name!r}")
        if isinstance(args, str):
            ok, decoded, error = load_json_or_literal(args) if args.strip() else (True, {}, None)
            if ok:
                args = decoded
            else:
                self._call.errors.append(f"arguments are not valid JSON: {error}")
        if not isinstance(args, Mapping):
            self._call.errors.append(f"arguments must be a JSON object, got {type(args).__name__}")
            deltas.append(self._call.finish(json.dumps(args, ensure_ascii=False), (), truncated=truncated))
            return deltas
        coerced = {}
        for key, value in args.items():
            schema = self._call.schemas.param_schema(name, key)
            coerced[key], error = coerce_value(value, schema)
            if error:
                self._call.errors.append(f"argument {key!r}: {error}")
        deltas.append(self._call.finish(json.dumps(coerced, ensure_ascii=False), coerced, truncated=truncated))
        return deltas


def _decode_name(raw: str) -> str:
    try:
        return json.loads(f'"{raw}"')
    except ValueError:
        return raw


def _load_object(text: str, closers: str) -> tuple[Any, str | None]:
    """Parse the body: JSON or a Python literal, then the same with the missing closers appended."""
    text = text.strip()
    ok, value, error = load_json_or_literal(text)
    if not ok and closers:
        ok, value, _ = load_json_or_literal(text + closers)
    return (value, None) if ok else (None, error)


def _unwrap(obj: Any) -> tuple[str, Any] | None:
    """(name, arguments) of a call object, accepting a `function` wrapper; None if it is not a call."""
    if isinstance(obj, Mapping) and isinstance(obj.get("function"), Mapping):
        obj = obj["function"]
    if not isinstance(obj, Mapping) or not isinstance(obj.get("name"), str) or not obj["name"]:
        return None
    return obj["name"], obj.get("arguments", obj.get("parameters", {}))
