"""Tools: tool-call parsers, the registry of JSON-schema functions, built-in tools and their workspace.

The server uses `qla_agent.tools.parsers` (`parser_for`, `opens_reasoning`); the agent loop uses
`build_registry(ToolSettings(...))`, `registry.openai_tools()` and `registry.run_calls(calls)`.
"""

from qla_agent.tools.declare import tool, tool_from_function
from qla_agent.tools.loader import load_entry_point_tools, load_module_tools
from qla_agent.tools.parsers import ParsedMessage, ToolCall, opens_reasoning, parser_for
from qla_agent.tools.registry import Tool, ToolRegistry, ToolResult
from qla_agent.tools.settings import ToolSettings, build_registry
from qla_agent.tools.workspace import Workspace

__all__ = [
    "ParsedMessage",
    "Tool",
    "ToolCall",
    "ToolRegistry",
    "ToolResult",
    "ToolSettings",
    "Workspace",
    "build_registry",
    "load_entry_point_tools",
    "load_module_tools",
    "opens_reasoning",
    "parser_for",
    "tool",
    "tool_from_function",
]
