"""fetch_url against a real local HTTP server; which tools a settings object turns on."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from qla_agent.errors import ToolError
from qla_agent.tools.builtins.fetch import FetchLimits, FetchTool
from qla_agent.tools.settings import ToolSettings, build_registry


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's naming
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/hello")
            self.end_headers()
            return
        body = b"hello world" if self.path == "/hello" else b"y" * 50_000
        self.send_response(200 if self.path != "/missing" else 404)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_fetch(server):
    tool = FetchTool(FetchLimits(max_bytes=1000, timeout_s=5))
    assert tool.fetch_url(f"{server}/hello") == "status: 200\ncontent-type: text/plain; charset=utf-8\n\nhello world"
    assert tool.fetch_url(f"{server}/redirect").endswith("\n\nhello world")
    assert tool.fetch_url(f"{server}/missing").startswith("status: 404\n")
    big = tool.fetch_url(f"{server}/big")
    assert big.endswith("y" * 1000 + "\n[truncated at 1000 bytes]")


@pytest.mark.parametrize(("url", "message"), [
    ("file:///etc/passwd", "is not http"), ("ftp://x/y", "is not http"), ("http://127.0.0.1:9/", "failed"),
])
def test_fetch_refusals(url, message):
    with pytest.raises(ToolError, match=message):
        FetchTool(FetchLimits(timeout_s=2)).fetch_url(url)


def test_default_registry_has_no_command_or_network_tools(tmp_path):
    reg = build_registry(ToolSettings(workspace=tmp_path / "ws"))
    assert reg.names() == ["calculator", "current_datetime", "list_files", "read_file", "write_file", "search_files"]
    assert (tmp_path / "ws").is_dir()
    assert reg.call("run_command", {"command": "true"}).error


def test_opt_in_tools_and_user_modules(tmp_path):
    module = tmp_path / "extra.py"
    module.write_text("from qla_agent.tools.declare import tool\n\n@tool\ndef hi() -> str:\n    return 'hi'\n")
    reg = build_registry(ToolSettings(workspace=tmp_path, allow_commands=True, allow_fetch=True,
                                      modules=(str(module),)))
    assert reg.names()[-3:] == ["run_command", "fetch_url", "hi"]
    assert reg.call("hi", {}).content == "hi"
    assert reg.call("run_command", {"command": "true"}).content.startswith("exit code: 0")


def test_settings_from_env(tmp_path):
    env = {"QLA_WORKSPACE": str(tmp_path), "QLA_ALLOW_COMMANDS": "1", "QLA_ALLOW_FETCH": "no",
           "QLA_TOOL_MODULES": f"a.b{__import__('os').pathsep}c.py", "QLA_TOOL_ENTRY_POINTS": "true"}
    out = ToolSettings.from_env(env)
    assert (out.workspace, out.allow_commands, out.allow_fetch, out.modules, out.entry_points) == (
        tmp_path, True, False, ("a.b", "c.py"), True)
    assert ToolSettings.from_env({}) == ToolSettings()
