"""The command line reports bad input as one clear line and a non-zero exit, never a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("arguments,message", [
    (["serve", "--model", "/nonexistent/model"], "no model folder at '/nonexistent/model'"),
    (["serve", "--port", "99999"], "port 99999 is not a TCP port"),
])
def test_serve_with_bad_settings_exits_2_with_the_reason(arguments: list[str], message: str) -> None:
    done = subprocess.run([sys.executable, "-m", "qla_agent.cli", *arguments], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr
