"""Built-in tools: calculator, current date/time, workspace file tools; run_command and fetch_url when enabled."""

from qla_agent.tools.builtins.calculator import CALCULATOR, calculate
from qla_agent.tools.builtins.clock import CLOCK, current_datetime
from qla_agent.tools.builtins.command import CommandLimits, CommandTool
from qla_agent.tools.builtins.fetch import FetchLimits, FetchTool
from qla_agent.tools.builtins.files import FileLimits, FileTools

__all__ = [
    "CALCULATOR",
    "CLOCK",
    "CommandLimits",
    "CommandTool",
    "FetchLimits",
    "FetchTool",
    "FileLimits",
    "FileTools",
    "calculate",
    "current_datetime",
]
