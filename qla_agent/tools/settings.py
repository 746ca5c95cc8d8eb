"""Which tools an agent gets and their limits, and the registry built from that."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from qla_agent.tools.builtins import (
    CALCULATOR,
    CLOCK,
    CommandLimits,
    CommandTool,
    FetchLimits,
    FetchTool,
    FileLimits,
    FileTools,
)
from qla_agent.tools.loader import load_entry_point_tools, load_module_tools
from qla_agent.tools.registry import DEFAULT_MAX_RESULT_CHARS, ToolRegistry
from qla_agent.tools.workspace import Workspace

_TRUE = ("1", "true", "yes", "on")


@dataclass(frozen=True, slots=True)
class ToolSettings:
    """Tool configuration: the workspace, limits, the opt-in tools, and user tool sources."""

    workspace: Path = Path(".")
    files: FileLimits = field(default_factory=FileLimits)
    allow_commands: bool = False
    commands: CommandLimits = field(default_factory=CommandLimits)
    allow_fetch: bool = False
    fetch: FetchLimits = field(default_factory=FetchLimits)
    modules: tuple[str, ...] = ()
    entry_points: bool = False
    max_result_chars: int = DEFAULT_MAX_RESULT_CHARS

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> ToolSettings:
        """Settings from QLA_WORKSPACE, QLA_ALLOW_COMMANDS, QLA_ALLOW_FETCH, QLA_TOOL_MODULES
        (separated by the OS path separator) and QLA_TOOL_ENTRY_POINTS."""
        modules = environ.get("QLA_TOOL_MODULES", "")
        return cls(
            workspace=Path(environ.get("QLA_WORKSPACE", ".")),
            allow_commands=environ.get("QLA_ALLOW_COMMANDS", "").lower() in _TRUE,
            allow_fetch=environ.get("QLA_ALLOW_FETCH", "").lower() in _TRUE,
            modules=tuple(m for m in modules.split(os.pathsep) if m.strip()),
            entry_points=environ.get("QLA_TOOL_ENTRY_POINTS", "").lower() in _TRUE,
        )


def build_registry(settings: ToolSettings) -> ToolRegistry:
    """The registry for these settings: built-ins, opt-in tools, then user tools (names must not clash)."""
    workspace = Workspace(settings.workspace)
    registry = ToolRegistry([CALCULATOR, CLOCK], max_result_chars=settings.max_result_chars)
    for tool in FileTools(workspace, settings.files).tools():
        registry.add(tool)
    if settings.allow_commands:
        registry.add(CommandTool(workspace, settings.commands).tool())
    if settings.allow_fetch:
        registry.add(FetchTool(settings.fetch).tool())
    for spec in settings.modules:
        for tool in load_module_tools(spec):
            registry.add(tool)
    if settings.entry_points:
        for tool in load_entry_point_tools():
            registry.add(tool)
    return registry
