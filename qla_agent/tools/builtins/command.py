"""`run_command`: a subprocess in the workspace with a timeout and capped output. Off unless enabled.

The command is split with shlex and run without a shell (unless the user allows a shell), in its
own process group so a timeout kills its children too; stdout and stderr are read concurrently and
only the first `max_output_bytes` of each are kept.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import threading
from dataclasses import dataclass
from typing import IO

from qla_agent.errors import ToolError
from qla_agent.tools.registry import Tool
from qla_agent.tools.workspace import Workspace


@dataclass(frozen=True, slots=True)
class CommandLimits:
    """Limits of run_command."""

    timeout_s: float = 30.0
    max_output_bytes: int = 32_000
    shell: bool = False


class CommandTool:
    """Runs commands with the workspace as the working directory."""

    def __init__(self, workspace: Workspace, limits: CommandLimits = CommandLimits()):
        self.ws = workspace
        self.limits = limits

    def run_command(self, command: str, timeout_s: float | None = None) -> str:
        """Run a command; returns its exit code, stdout and stderr (each capped)."""
        timeout = min(timeout_s or self.limits.timeout_s, self.limits.timeout_s)
        args: str | list[str] = command if self.limits.shell else _split(command)
        try:
            proc = subprocess.Popen(
                args, cwd=self.ws.root, shell=self.limits.shell, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
            )
        except OSError as e:
            raise ToolError(f"cannot start {command!r}: {e.strerror or e}") from e
        readers = [_Capped(proc.stdout, self.limits.max_output_bytes),
                   _Capped(proc.stderr, self.limits.max_output_bytes)]
        try:
            code: int | str = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = f"killed after the {timeout:g} s timeout"
        out, err = (r.result() for r in readers)
        return f"exit code: {code}\nstdout:\n{out}\nstderr:\n{err}"

    def tool(self) -> Tool:
        shell = " (through a shell)" if self.limits.shell else " (no shell: no pipes or redirections)"
        return Tool(
            name="run_command",
            description=f"Run a command in the workspace folder{shell}, with a {self.limits.timeout_s:g} s timeout.",
            parameters={"type": "object", "properties": {"command": {"type": "string"},
                                                         "timeout_s": {"type": "number", "minimum": 0}},
                        "required": ["command"], "additionalProperties": False},
            fn=self.run_command,
        )


def _split(command: str) -> list[str]:
    try:
        args = shlex.split(command)
    except ValueError as e:
        raise ToolError(f"cannot split {command!r} into arguments: {e}") from e
    if not args:
        raise ToolError("empty command")
    return args


class _Capped:
    """Drains a pipe in a thread, keeping only the first `limit` bytes."""

    def __init__(self, pipe: IO[bytes] | None, limit: int):
        assert pipe is not None
        self._pipe, self._limit = pipe, limit
        self._kept = bytearray()
        self._dropped = 0
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        with self._pipe:
            while chunk := self._pipe.read1(65536):
                room = self._limit - len(self._kept)
                self._kept += chunk[:room]
                self._dropped += max(0, len(chunk) - room)

    def result(self) -> str:
        self._thread.join(timeout=5)
        text = self._kept.decode("utf-8", errors="replace")
        return text + (f"\n[truncated: {self._dropped} more bytes]" if self._dropped else "")
