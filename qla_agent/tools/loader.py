"""Loading user tools from a module (dotted name or .py file) or the `qla_agent.tools` entry point group.

A module contributes its `TOOLS` list when it defines one (Tool objects or `@tool` functions),
else every `@tool`-decorated function it defines, in source order.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import logging
import sys
import types
from pathlib import Path
from typing import Any

from qla_agent.errors import ToolError
from qla_agent.tools.declare import TOOL_ATTR
from qla_agent.tools.registry import Tool

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "qla_agent.tools"


def tools_in(obj: Any) -> list[Tool]:
    """The tools an object declares: a Tool, a `@tool` function, a module, or a list of those."""
    if isinstance(obj, Tool):
        return [obj]
    if isinstance(getattr(obj, TOOL_ATTR, None), Tool):
        return [getattr(obj, TOOL_ATTR)]
    if isinstance(obj, types.ModuleType):
        if hasattr(obj, "TOOLS"):
            return tools_in(list(obj.TOOLS))
        own = [v for v in vars(obj).values() if isinstance(getattr(v, TOOL_ATTR, None), Tool)
               and getattr(v, "__module__", None) == obj.__name__]
        return [getattr(v, TOOL_ATTR) for v in own]
    if isinstance(obj, (list, tuple)):
        return [t for item in obj for t in tools_in(item)]
    raise ToolError(f"{obj!r} declares no tools: give a Tool, a @tool function, a module or a list of them")


def import_module(spec: str) -> types.ModuleType:
    """Import `pkg.module` or a `.py` file path (loaded under a private module name)."""
    path = Path(spec).expanduser()
    if spec.endswith(".py") or path.is_file():
        if not path.is_file():
            raise ToolError(f"tool module file {spec!r} does not exist")
        digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
        module_spec = importlib.util.spec_from_file_location(f"qla_user_tools_{digest}", path)
        if module_spec is None or module_spec.loader is None:
            raise ToolError(f"cannot import tool module file {spec!r}")
        module = importlib.util.module_from_spec(module_spec)
        # Registered before running, as import does, so dataclasses and pickling inside it work.
        sys.modules[module_spec.name] = module
        _exec(module_spec.loader.exec_module, module, spec)
        return module
    try:
        return importlib.import_module(spec)
    except ImportError as e:
        raise ToolError(f"cannot import tool module {spec!r}: {e}") from e


def _exec(run: Any, module: types.ModuleType, spec: str) -> None:
    try:
        run(module)
    except Exception as e:  # noqa: BLE001 - user code; report which module broke and why
        raise ToolError(f"tool module {spec!r} failed to import: {type(e).__name__}: {e}") from e


def load_module_tools(spec: str) -> list[Tool]:
    """The tools of a module given as `pkg.module` or `path/to/file.py`."""
    tools = tools_in(import_module(spec))
    if not tools:
        raise ToolError(f"tool module {spec!r} defines no tools: decorate functions with @tool or set TOOLS")
    return tools


def load_entry_point_tools(group: str = ENTRY_POINT_GROUP) -> list[Tool]:
    """The tools of every installed entry point in `group` (each naming a module, list or function)."""
    tools: list[Tool] = []
    for ep in importlib.metadata.entry_points(group=group):
        try:
            obj = ep.load()
        except Exception as e:  # noqa: BLE001 - a broken plugin is named, not hidden
            raise ToolError(f"entry point {ep.name!r} ({ep.value}) failed to load: {type(e).__name__}: {e}") from e
        found = tools_in(obj)
        logger.info("entry point %s: %d tool(s)", ep.name, len(found))
        tools.extend(found)
    return tools
