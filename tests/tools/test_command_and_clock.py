"""run_command (off by default; timeout, output cap, no shell, cwd) and current_datetime."""

from __future__ import annotations

import re
import sys
import time
from datetime import datetime, timezone

import pytest

from qla_agent.errors import ToolError
from qla_agent.tools.builtins.clock import current_datetime
from qla_agent.tools.builtins.command import CommandLimits, CommandTool
from qla_agent.tools.workspace import Workspace

PY = sys.executable


def _tool(tmp_path, **limits) -> CommandTool:
    return CommandTool(Workspace(tmp_path), CommandLimits(**limits))


def test_runs_in_the_workspace(tmp_path):
    (tmp_path / "here.txt").write_text("")
    out = _tool(tmp_path).run_command(f"{PY} -c \"import os; print(sorted(os.listdir()))\"")
    assert out == "exit code: 0\nstdout:\n['here.txt']\n\nstderr:\n"


def test_exit_code_and_stderr(tmp_path):
    out = _tool(tmp_path).run_command(f"{PY} -c \"import sys; sys.stderr.write('bad'); sys.exit(3)\"")
    assert out == "exit code: 3\nstdout:\n\nstderr:\nbad"


def test_no_shell_by_default(tmp_path):
    out = _tool(tmp_path).run_command("echo a | wc -l > out.txt")
    assert out.startswith("exit code: 0\nstdout:\na | wc -l > out.txt\n")
    assert not (tmp_path / "out.txt").exists()


def test_shell_when_allowed(tmp_path):
    out = _tool(tmp_path, shell=True).run_command("echo a | tr a b > out.txt; cat out.txt")
    assert out.startswith("exit code: 0\nstdout:\nb\n")


def test_timeout_kills_the_process_group(tmp_path):
    start = time.perf_counter()
    out = _tool(tmp_path, timeout_s=0.5).run_command(
        f"{PY} -c \"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)']); time.sleep(30)\"")
    assert out.startswith("exit code: killed after the 0.5 s timeout")
    assert time.perf_counter() - start < 5


def test_requested_timeout_cannot_exceed_the_limit(tmp_path):
    start = time.perf_counter()
    out = _tool(tmp_path, timeout_s=0.3).run_command(f"{PY} -c \"import time; time.sleep(30)\"", timeout_s=100)
    assert "killed after the 0.3 s timeout" in out
    assert time.perf_counter() - start < 5


def test_output_is_capped(tmp_path):
    out = _tool(tmp_path, max_output_bytes=100).run_command(f"{PY} -c \"print('x' * 100000)\"")
    assert out == "exit code: 0\nstdout:\n" + "x" * 100 + "\n[truncated: 99901 more bytes]\nstderr:\n"


@pytest.mark.parametrize(("command", "message"), [
    ("", "empty command"), ("echo 'unclosed", "cannot split"), ("no-such-binary-qla", "cannot start"),
])
def test_bad_commands(tmp_path, command, message):
    with pytest.raises(ToolError, match=message):
        _tool(tmp_path).run_command(command)


def test_current_datetime():
    out = current_datetime("UTC")
    match = re.fullmatch(r"(\S+) \((\w+), UTC\)", out)
    assert match is not None
    stamp = datetime.fromisoformat(match.group(1))
    assert abs((stamp - datetime.now(timezone.utc)).total_seconds()) < 5
    assert match.group(2) == stamp.strftime("%A")
    assert current_datetime("Asia/Kolkata").split(" ")[0].endswith("+05:30")
    assert re.fullmatch(r"\S+[+-]\d\d:\d\d \(\w+, .+\)", current_datetime())
    with pytest.raises(ToolError, match="unknown time zone 'Mars/Base'"):
        current_datetime("Mars/Base")
