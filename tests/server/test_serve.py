"""`serve(settings)` in a subprocess: loads the model, prints where it listens, serves, stops on Ctrl-C."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from qla_agent.server.run import bind_socket, cpu_threads
from qla_agent.server.settings import SettingsError

SERVE = "from qla_agent.server.run import serve; from qla_agent.server.settings import ServerSettings; " \
        "serve(ServerSettings.from_env())"


def test_serve_prints_where_it_listens_and_answers(tiny, tmp_path):
    """Also: on the CPU, without QLA_THREADS, torch gets one thread per core but one."""
    env = {**{k: v for k, v in os.environ.items() if k != "QLA_THREADS"},
           "QLA_MODEL": str(tiny.path), "QLA_DEVICE": "cpu", "QLA_PORT": "0",
           "QLA_SESSIONS_DIR": str(tmp_path / "sessions"), "QLA_API_KEY": "k", "COLUMNS": "200",
           "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen([sys.executable, "-c", SERVE], env=env, stderr=subprocess.PIPE, text=True)
    try:
        url, seen = None, []
        deadline = time.monotonic() + 120
        while url is None:
            assert time.monotonic() < deadline, f"no listening line in {seen}"
            line = proc.stderr.readline()
            assert line or proc.poll() is None, f"serve exited early: {seen}"
            seen.append(line)
            match = re.search(r"serving (\S+) on (http://127\.0\.0\.1:\d+)/v1 .*torch threads: (\d+), "
                              r"API key required", line)
            url = match and match.group(2)
        assert match.group(1) == "qwen3_5"
        assert int(match.group(3)) == max(1, len(os.sched_getaffinity(0)) - 1)
        health = _wait_ok(url + "/health")
        assert health.json()["model"] == "qwen3_5"
        models = httpx.get(url + "/v1/models", headers={"Authorization": "Bearer k"}, timeout=10)
        assert models.json()["data"][0]["id"] == "qwen3_5"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()


def _wait_ok(url):
    deadline = time.monotonic() + 30
    while True:
        try:
            response = httpx.get(url, timeout=5)
            if response.status_code == 200:
                return response
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"{url} never answered 200"
        time.sleep(0.1)


@pytest.mark.parametrize("requested, cores, threads", [(None, 1, 1), (None, 2, 1), (None, 16, 15), (3, 2, 3)])
def test_cpu_threads_leave_a_core_to_the_event_loop_unless_told(requested, cores, threads):
    assert cpu_threads(requested, cores=cores) == threads


def test_a_taken_port_is_a_clear_error():
    taken = bind_socket("127.0.0.1", 0)
    try:
        port = taken.getsockname()[1]
        with pytest.raises(SettingsError, match=f"cannot listen on 127.0.0.1:{port}"):
            bind_socket("127.0.0.1", port)
    finally:
        taken.close()
