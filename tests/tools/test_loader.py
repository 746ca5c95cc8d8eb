"""User tools from a module file, a dotted module, and an installed entry point."""

from __future__ import annotations

import sys
import textwrap

import pytest

from qla_agent.errors import ToolError
from qla_agent.tools.loader import load_entry_point_tools, load_module_tools
from qla_agent.tools.registry import ToolRegistry

DECORATED = '''
from dataclasses import dataclass
from qla_agent.tools.declare import tool

@dataclass(frozen=True)
class Point:
    x: int

@tool
def shout(text: str) -> str:
    """Upper-case a text."""
    return text.upper()

@tool(name="double")
def twice(n: int) -> int:
    return 2 * n

def helper(x):
    return x
'''

LISTED = '''
from qla_agent.tools.registry import Tool

def _ping() -> str:
    return "pong"

TOOLS = [Tool("ping", "Answer pong.", {"type": "object", "properties": {}}, _ping)]
'''


def _write(path, text):
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_module_file_with_decorated_functions(tmp_path):
    tools = load_module_tools(str(_write(tmp_path / "my_tools.py", DECORATED)))
    assert [t.name for t in tools] == ["shout", "double"]
    reg = ToolRegistry(tools)
    assert reg.call("shout", {"text": "hi"}).content == "HI"
    assert reg.call("double", '{"n": 21}').content == "42"


def test_dotted_module_with_tools_list(tmp_path, monkeypatch):
    _write(tmp_path / "listed_tools_mod.py", LISTED)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "listed_tools_mod", raising=False)
    tools = load_module_tools("listed_tools_mod")
    assert [t.name for t in tools] == ["ping"]
    assert ToolRegistry(tools).call("ping", {}).content == "pong"


@pytest.mark.parametrize(("source", "spec", "message"), [
    (None, "no_such_module_qla", "cannot import tool module 'no_such_module_qla'"),
    (None, "missing.py", "tool module file 'missing.py' does not exist"),
    ("raise RuntimeError('boom')\n", "broken.py", "failed to import: RuntimeError: boom"),
    ("x = 1\n", "empty.py", "defines no tools"),
], ids=["not-importable", "no-file", "raises", "no-tools"])
def test_bad_modules_are_named(tmp_path, monkeypatch, source, spec, message):
    monkeypatch.chdir(tmp_path)
    if source is not None:
        _write(tmp_path / spec, source)
    with pytest.raises(ToolError, match=message):
        load_module_tools(spec)


def test_entry_point_group(tmp_path, monkeypatch):
    _write(tmp_path / "ep_tools_pkg.py", DECORATED)
    dist = tmp_path / "ep_tools_pkg-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-tools-pkg\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[qla_agent.tools]\nmine = ep_tools_pkg\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "ep_tools_pkg", raising=False)
    tools = load_entry_point_tools()
    assert [t.name for t in tools] == ["shout", "double"]
    assert load_entry_point_tools("qla_agent.tools.nothing_here") == []
