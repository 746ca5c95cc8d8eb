"""The tool registry: OpenAI export, validation, failures returned as results, parallel calls, @tool."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Annotated, Literal

import pytest

from qla_agent.errors import ToolError
from qla_agent.tools.declare import infer_parameters, tool, tool_from_function
from qla_agent.tools.parsers import ToolCall
from qla_agent.tools.registry import Tool, ToolRegistry


@tool
def add(a: int, b: int = 0) -> int:
    """Add two integers.

    More text that is not the description.
    """
    return a + b


@tool(name="fail_on_purpose", description="Always refuses.")
def refuse(reason: str) -> str:
    raise ToolError(f"refused: {reason}")


@tool
def crash() -> None:
    """Crashes."""
    return 1 // 0


@tool
def big(n: int) -> str:
    """A long text."""
    return "x" * n


def _registry(**kwargs) -> ToolRegistry:
    return ToolRegistry([add.__qla_tool__, refuse.__qla_tool__, crash.__qla_tool__, big.__qla_tool__], **kwargs)


def test_openai_tools_export():
    out = _registry().openai_tools()
    assert [t["function"]["name"] for t in out] == ["add", "fail_on_purpose", "crash", "big"]
    assert out[0] == {"type": "function", "function": {
        "name": "add", "description": "Add two integers.",
        "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                       "required": ["a"], "additionalProperties": False}}}


@pytest.mark.parametrize(("name", "args", "ref", "error"), [
    ("add", '{"a": 2, "b": 3}', "5", False),
    ("add", {"a": 2}, "2", False),
    ("add", "", "error: invalid call to 'add': arguments: missing required argument 'a'", True),
    ("add", "{bad", "error: invalid call to 'add': arguments are not valid JSON", True),
    ("add", "[1]", "error: invalid call to 'add': arguments must be a JSON object, got list", True),
    ("add", {"a": "2"}, "error: invalid call to 'add': arguments.a: expected integer, got string \"2\"", True),
    ("add", {"a": 1, "c": 2}, "error: invalid call to 'add': arguments: unknown argument 'c' (known: a, b)", True),
    ("nope", {}, "error: invalid call to 'nope': unknown tool 'nope' (available: add, fail_on_purpose", True),
    ("fail_on_purpose", {"reason": "no"}, "error: refused: no", True),
    ("crash", None, "error: ZeroDivisionError: integer division or modulo by zero", True),
], ids=["ok-json", "ok-dict", "missing", "bad-json", "not-object", "wrong-type", "extra", "unknown", "tool-error",
        "crash"])
def test_call_never_raises(name, args, ref, error):
    out = _registry().call(name, args, call_id="call_9")
    assert out.content.startswith(ref)
    assert out.error is error
    assert out.to_message() == {"role": "tool", "tool_call_id": "call_9", "content": out.content}


def test_optional_null_means_not_given():
    assert _registry().call("add", {"a": 1, "b": None}).content == "1"
    assert _registry().call("add", {"a": None}).error


def test_long_result_is_truncated():
    out = _registry(max_result_chars=100).call("big", {"n": 250})
    assert out.content == "x" * 100 + "\n[truncated: 150 more characters]"


def test_run_call_reports_parser_errors_without_running():
    calls = []
    reg = ToolRegistry([Tool("spy", "", {"type": "object", "properties": {}}, lambda: calls.append(1))])
    out = reg.run_call(ToolCall(id="c1", name="spy", arguments="{}", error="truncated"))
    assert out.error and "not run: truncated" in out.content and calls == []
    assert reg.run_call(ToolCall(id="c2", name="spy", arguments="{}")).content == "ok"
    assert calls == [1]


def test_parallel_calls_run_concurrently():
    barrier = threading.Barrier(3, timeout=5)

    def meet(i: int) -> int:
        # Deadlocks (BrokenBarrierError after 5 s) unless all three calls run at the same time.
        barrier.wait()
        return i

    reg = ToolRegistry([tool_from_function(meet)])
    calls = [ToolCall(id=f"c{i}", name="meet", arguments=json.dumps({"i": i})) for i in range(3)]
    out = asyncio.run(reg.arun_calls(calls))
    assert [(r.call_id, r.content, r.error) for r in out] == [("c0", "0", False), ("c1", "1", False), ("c2", "2", False)]


def test_duplicate_and_bad_registrations_are_refused():
    reg = _registry()
    with pytest.raises(ToolError, match="'add' is already registered"):
        reg.add(add.__qla_tool__)
    with pytest.raises(ToolError, match="type object"):
        reg.add(Tool("x", "", {"type": "array"}, lambda: None))


def test_infer_parameters_from_hints():
    def f(path: Annotated[str, "a file"], mode: Literal["r", "w"] = "r", n: int | None = None,
          tags: list[str] = (), opts: dict | None = None, ratio: float = 1.0, flag: bool = False, *rest, **kw):
        return None

    assert infer_parameters(f) == {"type": "object", "required": ["path"], "properties": {
        "path": {"type": "string", "description": "a file"},
        "mode": {"enum": ["r", "w"]},
        "n": {"type": ["integer", "null"]},
        "tags": {"type": "array", "items": {"type": "string"}},
        "opts": {"type": ["object", "null"]},
        "ratio": {"type": "number"},
        "flag": {"type": "boolean"},
    }}
    assert infer_parameters(add)["additionalProperties"] is False


def test_unsupported_hint_is_named():
    def f(x: complex) -> None:
        return None

    with pytest.raises(ToolError, match=r"f\(x\): no JSON schema for type hint <class 'complex'>"):
        infer_parameters(f)
