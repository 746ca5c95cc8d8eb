"""`qla-agent run`, `qla-agent chat` (subprocesses) and `qla-agent sessions` against the real server process."""

import http.server
import json
import os
import re
import signal
import subprocess
import sys
import threading
import unicodedata
from pathlib import Path

import httpx
import pytest

from qla_agent.agent import Agent, ChatClient, Transcript
from qla_agent.cli import main
from qla_agent.tools.registry import ToolRegistry
from tests.agent.server_process import OPTIONS, cli_env, free_port, healthy, running, wait_gone


def qla(*args, env=None, stdin="", timeout=180):
    """Run `python -m qla_agent.cli ARGS` (what the `qla-agent` script runs) and wait for it."""
    return subprocess.run([sys.executable, "-m", "qla_agent.cli", *map(str, args)], input=stdin, capture_output=True,
                          text=True, encoding="utf-8", errors="replace", env=env or cli_env(PYTHONIOENCODING="utf-8"),
                          timeout=timeout)


def visible(text):
    """Text without control, format and space characters (the terminal printer drops or expands some)."""
    return "".join(ch for ch in text if unicodedata.category(ch)[0] not in "CZ")


@pytest.fixture()
def workspace(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    return ws


def test_run_prints_the_streamed_answer_and_exits_0(server, tmp_path, workspace):
    path = tmp_path / "t.json"
    args = ("run", "Say hello.", "--url", server.url + "/v1", "--workspace", workspace, "--session-file", path,
            "--max-tokens", 8, "--seed", 3, "--no-thinking", "--no-start-server")
    done = qla(*args)
    assert done.returncode == 0, done.stderr
    saved = json.loads(path.read_text())
    answer = saved["messages"][-1]
    assert answer["role"] == "assistant" and visible(answer["content"])
    assert visible(answer["content"]) in visible(done.stdout)
    assert f"session {saved['session_id']} · prompt" in done.stderr
    session = server.session(saved["session_id"])
    assert session["n_messages"] == 2
    # The built-in tools (workspace files, calculator, clock) were offered.
    assert {"read_file", "calculator"} <= {t["function"]["name"] for t in session["tools"]}

    # --continue goes on with the conversation; without it a run starts a new one.
    again = qla(*args, "--continue")
    assert again.returncode == 0, again.stderr
    assert json.loads(path.read_text())["session_id"] == saved["session_id"]
    assert server.session(saved["session_id"])["n_messages"] == 4
    fresh = qla(*args)
    assert fresh.returncode == 0, fresh.stderr
    assert json.loads(path.read_text())["session_id"] != saved["session_id"]


@pytest.mark.parametrize("url, message", [
    ("http://127.0.0.1:{port}", "no qla-agent server answers at http://127.0.0.1:{port}; start one"),
    ("http://127.0.0.1:{port}/v1/", "no qla-agent server answers at http://127.0.0.1:{port}; start one"),
])
def test_run_without_a_server_fails_clearly(tmp_path, workspace, url, message):
    port = free_port()
    done = qla("run", "hi", "--url", url.format(port=port), "--workspace", workspace,
               "--session-file", tmp_path / "t.json", "--no-start-server")
    assert done.returncode == 1
    assert message.format(port=port) in done.stderr
    assert "Traceback" not in done.stderr


def test_run_reports_a_broken_tools_module_before_contacting_a_server(tmp_path, workspace):
    (tmp_path / "broken_tools.py").write_text("raise RuntimeError('this module is broken')\n")
    done = qla("run", "hi", "--url", f"http://127.0.0.1:{free_port()}", "--workspace", workspace,
               "--session-file", tmp_path / "t.json", "--tools-module", tmp_path / "broken_tools.py")
    assert done.returncode == 1
    assert "broken_tools.py" in done.stderr and "Traceback" not in done.stderr
    assert "started a server" not in done.stderr


def test_run_refuses_to_start_a_server_for_a_url_without_port(tmp_path, workspace):
    done = qla("run", "hi", "--url", "http://localhost", "--workspace", workspace,
               "--session-file", tmp_path / "t.json")
    assert done.returncode == 1
    assert "one is started only for a local URL with a port" in done.stderr


class NotFoundHandler(http.server.BaseHTTPRequestHandler):
    """Another program's web server: 404 for every path."""

    def do_GET(self):
        self.send_error(404)

    def log_message(self, *args):
        pass


def test_run_refuses_a_port_held_by_another_program(tmp_path, workspace):
    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotFoundHandler)
    thread = threading.Thread(target=other.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{other.server_address[1]}"
    try:
        done = qla("run", "hi", "--url", url, "--workspace", workspace, "--session-file", tmp_path / "t.json")
    finally:
        other.shutdown()
        other.server_close()
    assert done.returncode == 1
    assert f"something that is not a qla-agent server answers at {url} (GET /health: 404)" in done.stderr


def test_run_starts_a_server_in_the_background(tmp_path, workspace):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cache, sessions, path = tmp_path / "cache", tmp_path / "sessions", tmp_path / "t.json"
    pid_file = cache / "qla-agent" / f"server-{port}.pid"
    env = cli_env(PYTHONIOENCODING="utf-8", XDG_CACHE_HOME=str(cache), QLA_SESSIONS_DIR=str(sessions))
    pid = None
    try:
        done = qla("run", "hi", "--url", url, "--workspace", workspace, "--session-file", path, "--no-tools",
                   "--max-tokens", 4, "--api-key", "s3cret-key", env=env)
        assert done.returncode == 0, done.stderr + (cache / "qla-agent" / f"server-{port}.log").read_text()
        pid = int(pid_file.read_text())
        assert f"started a server at {url} in the background (pid {pid}" in done.stderr
        # The server outlives the command and keeps the session where QLA_SESSIONS_DIR says.
        assert running(pid) and healthy(url)
        session_id = json.loads(path.read_text())["session_id"]
        assert any(session_id in p.name for p in sessions.iterdir())
        # It requires the key it got through its environment, never on its command line.
        assert httpx.get(f"{url}/v1/sessions", timeout=30).status_code == 401
        assert b"s3cret-key" not in Path(f"/proc/{pid}/cmdline").read_bytes()
    finally:
        if pid_file.exists():
            pid = int(pid_file.read_text())
            if running(pid):
                os.killpg(pid, signal.SIGTERM)
    assert pid is None or wait_gone(pid), f"the background server {pid} did not stop"


def test_chat_driven_through_stdin(server, tmp_path, workspace):
    path = tmp_path / "t.json"
    args = ("chat", "--url", server.url, "--workspace", workspace, "--session-file", path, "--no-tools",
            "--max-tokens", 4, "--seed", 1, "--no-start-server")
    done = qla(*args, stdin="hello\n/sessions\n/fork\n/quit\n")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "new session · commands:" in out
    session_id = re.search(r"session (\S+) · prompt \d+ tokens", out).group(1)
    assert f"* {session_id}  2 messages" in out
    fork = re.search(rf"forked session {session_id} into (\S+); continuing in the fork", out).group(1)
    assert json.loads(path.read_text())["session_id"] == fork
    assert server.session(fork)["messages"] == server.session(session_id)["messages"]

    # A second chat resumes the fork; /new forgets it; the end of input ends the chat.
    done = qla(*args, stdin="/sessions\n/new\n")
    assert done.returncode == 0, done.stderr
    assert f"resuming session {fork}" in done.stdout
    assert f"* {fork}  2 messages" in done.stdout and f"  {session_id}  2 messages" in done.stdout
    assert done.stdout.endswith("> new session\n> \n")
    saved = json.loads(path.read_text())
    assert saved["session_id"] is None and saved["messages"] == []


def test_sessions_commands(server, tmp_path, capsys):
    with Agent(ChatClient(server.url), ToolRegistry(), tmp_path / "t.json", request_options=OPTIONS) as agent:
        session_id = agent.run("a conversation to manage").session_id
    messages = server.session(session_id)["messages"]
    exported = tmp_path / "s.safetensors"

    def cli(*args):
        code = main(["sessions", *map(str, args), "--url", server.url])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    code, out, _ = cli("list")
    assert code == 0 and re.search(rf"^{session_id}  2 messages  \d+ tokens  updated ", out, re.M)
    code, out, _ = cli("show", session_id)
    assert code == 0 and json.loads(out)["messages"] == messages
    code, out, _ = cli("export", session_id, "--file", exported)
    assert code == 0 and f"({exported.stat().st_size} bytes)" in out and exported.stat().st_size > 0
    code, out, _ = cli("fork", session_id)
    assert code == 0 and server.session(out.strip())["messages"] == messages
    code, out, _ = cli("delete", session_id)
    assert code == 0 and out == f"deleted {session_id}\n"
    code, _, err = cli("show", session_id)
    assert code == 1 and "(404)" in err and f"no session '{session_id}'" in err
    code, out, _ = cli("import", "--file", exported)
    assert code == 0 and f"as session {session_id} (2 messages" in out
    assert server.session(session_id)["messages"] == messages
    code, out, _ = cli("import", "renamed-copy", "--file", exported)
    assert code == 0 and "as session renamed-copy" in out
    code, out, _ = cli("list", "--json")
    assert code == 0 and {session_id, "renamed-copy"} <= {s["id"] for s in json.loads(out)}
    code, _, err = cli("import", "--file", tmp_path / "missing.safetensors")
    assert code == 1 and "missing.safetensors" in err


def test_chat_shows_tool_calls_and_results_of_an_interrupted_turn(server, tmp_path, workspace):
    # The model cannot emit calls yet (random weights): the transcript holds an answer whose calls never ran.
    (workspace / "notes.txt").write_text("hello from the workspace")
    path = tmp_path / "t.json"
    calls = [{"id": "call_calc", "type": "function",
              "function": {"name": "calculator", "arguments": '{"expression": "6*7"}'}},
             {"id": "call_read", "type": "function",
              "function": {"name": "read_file", "arguments": '{"path": "notes.txt"}'}}]
    Transcript(messages=[{"role": "user", "content": "6*7, and what is in notes.txt?"},
                         {"role": "assistant", "content": "", "tool_calls": calls}]).save(path)
    done = qla("chat", "--url", server.url, "--workspace", workspace, "--session-file", path, "--max-tokens", 4,
               "--seed", 1, "--no-start-server", stdin="/continue\n/continue\n/quit\n")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "the last turn was interrupted before its tool calls ran: /continue runs them" in out
    assert '→ calculator {"expression": "6*7"}' in out and '→ read_file {"path": "notes.txt"}' in out
    assert "← calculator 42" in out and "← read_file hello from the workspace" in out
    assert "nothing to continue" in out
    saved = json.loads(path.read_text())
    assert [m["role"] for m in saved["messages"]] == ["user", "assistant", "tool", "tool", "assistant"]
    assert server.session(saved["session_id"])["n_messages"] == 5
