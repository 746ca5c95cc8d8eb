"""A real `qla-agent serve` process on 127.0.0.1 (a free port), its sessions dir and log in a temp folder."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

# Small answers keep every turn of the random embedded model short (unless a test asks for more).
SERVER_ENV = {"QLA_DEFAULT_MAX_TOKENS": "8"}
START_TIMEOUT_S = 120.0
# Request options of in-process agents: short seeded answers. Thinking off + preserve_thinking: the template
# renders history append-only, so a turn resumes where the last one ended.
OPTIONS = {"max_tokens": 6, "seed": 7, "chat_template_kwargs": {"enable_thinking": False, "preserve_thinking": True}}


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cli_env(**extra: str) -> dict[str, str]:
    """The environment for a `qla-agent` subprocess: this one plus the test server's limits."""
    return {**os.environ, **SERVER_ENV, **extra}


def healthy(url: str) -> bool:
    try:
        return httpx.get(url + "/health", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def running(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie (an orphan waits for init to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_gone(pid: int, timeout: float = 20.0) -> bool:
    """Whether process `pid` ended within `timeout` seconds (it need not be our child)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not running(pid):
            return True
        time.sleep(0.05)
    return False


@dataclass
class ServerProcess:
    """`python -m qla_agent.cli serve` with the embedded default model; `restart()` keeps port and sessions."""

    root: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[Any] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def sessions_dir(self) -> Path:
        return self.root / "sessions"

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    def start(self) -> None:
        command = [sys.executable, "-m", "qla_agent.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port),
                   "--sessions-dir", str(self.sessions_dir)]
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                            env=cli_env())
        deadline = time.monotonic() + START_TIMEOUT_S
        while not healthy(self.url):
            assert self.process.poll() is None, f"the server exited with {self.process.returncode}:\n{self.log_tail()}"
            assert time.monotonic() < deadline, f"no /health within {START_TIMEOUT_S} s:\n{self.log_tail()}"
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def kill(self) -> None:
        """SIGKILL, as a crash would end it (no-op when already stopped)."""
        if self.process is None:
            return
        self.process.kill()
        self.process.wait(10)
        self.process = None

    def restart(self) -> None:
        self.stop()
        assert not healthy(self.url), "something still answers on the port after the server stopped"
        self.start()

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else "(no log)"

    def get(self, path: str) -> Any:
        response = httpx.get(self.url + path, timeout=30)
        assert response.status_code == 200, response.text
        return response.json()

    def session(self, session_id: str) -> dict[str, Any]:
        return self.get(f"/v1/sessions/{session_id}")

    def reused_tokens(self) -> float:
        """The server's prefill-tokens-reused counter from /metrics."""
        text = httpx.get(self.url + "/metrics", timeout=30).text
        values = [line.split()[-1] for line in text.splitlines() if line.startswith("qla_prefill_tokens_reused_total")]
        assert len(values) == 1, text
        return float(values[0])
