"""Terminal front ends of the agent loop: `qla-agent chat` (interactive) and `qla-agent run` (one task)."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx
from rich.console import Console

from qla_agent.agent import Agent, AgentError, AgentEvent, ChatClient

DEFAULT_URL = "http://127.0.0.1:8000"
CHAT_HELP = "commands: /new (new session)  /fork  /sessions  /help  /quit"


def add_agent_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=DEFAULT_URL, help="server base URL (default %(default)s)")
    parser.add_argument("--api-key", default=None, help="bearer token for the server (or QLA_API_KEY)")
    parser.add_argument("--workspace", type=Path, default=Path.cwd(), help="folder the file tools may use")
    parser.add_argument("--session-file", type=Path, default=None,
                        help="where the conversation is kept (default WORKSPACE/.qla-agent/session.json)")
    parser.add_argument("--max-steps", type=int, default=16, help="model calls per user turn at most")
    parser.add_argument("--enable-commands", action="store_true", help="let the model run shell commands in the workspace")
    parser.add_argument("--enable-network", action="store_true", help="let the model fetch URLs")
    parser.add_argument("--tools-module", action="append", default=[], help="import extra tools from this module or .py file")
    parser.add_argument("--no-start-server", action="store_true", help="fail instead of starting a local server")
    parser.add_argument("--no-thinking", action="store_true", help="ask the model not to think before answering")


def ensure_server(url: str, api_key: str | None, console: Console, *, start: bool) -> None:
    """Checks /health; starts `qla-agent serve` in the background for a local URL when none answers."""
    if _healthy(url):
        return
    parsed = urlparse(url)
    if not start or parsed.hostname not in {"127.0.0.1", "localhost"}:
        raise AgentError(f"no qla-agent server answers at {url}; start one with `qla-agent serve`")
    log = Path.home() / ".cache" / "qla-agent" / "server.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "qla_agent.cli", "serve", "--host", parsed.hostname, "--port", str(parsed.port or 80)]
    if api_key:
        command += ["--api-key", api_key]
    console.print(f"[dim]starting a server at {url} (log: {log})[/dim]")
    with log.open("ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if _healthy(url):
            return
        if process.poll() is not None:
            raise AgentError(f"the server exited with code {process.returncode}; see {log}")
        time.sleep(0.5)
    raise AgentError(f"the server did not become healthy within 300 s; see {log}")


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url.rstrip("/") + "/health", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def build_agent(args: argparse.Namespace, console: Console) -> Agent:
    from qla_agent.tools.settings import ToolSettings, build_registry

    ensure_server(args.url, args.api_key, console, start=not args.no_start_server)
    tools = build_registry(ToolSettings(workspace=args.workspace, allow_commands=args.enable_commands,
                                        allow_fetch=args.enable_network, modules=tuple(args.tools_module)))
    session_file = args.session_file or args.workspace / ".qla-agent" / "session.json"
    options = {"chat_template_kwargs": {"enable_thinking": False}} if args.no_thinking else {}
    return Agent(ChatClient(args.url, api_key=args.api_key), tools, session_file,
                 max_steps=args.max_steps, request_options=options)


class EventPrinter:
    """Streams agent events to the terminal: reasoning dimmed, tool calls and results boxed in colour."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.last = ""

    def __call__(self, event: AgentEvent) -> None:
        if event.kind != self.last and self.last in {"content", "reasoning"}:
            self.console.print()
        style = {"content": None, "reasoning": "dim"}.get(event.kind, "")
        if event.kind in {"content", "reasoning"}:
            self.console.print(event.text, style=style, end="", markup=False, highlight=False)
        elif event.kind == "tool_call":
            self.console.print(f"[cyan]→ {event.name}[/cyan] {event.text}", highlight=False)
        else:
            self.console.print(f"[green]← {event.name}[/green] {_clip(event.text)}", highlight=False)
        self.last = event.kind


def _clip(text: str, limit: int = 400) -> str:
    return text if len(text) <= limit else text[:limit] + f"… ({len(text)} chars)"


def run_task(args: argparse.Namespace) -> int:
    console = Console()
    try:
        agent = build_agent(args, console)
        agent.run(args.task, EventPrinter(console))
    except AgentError as e:
        console.print(f"[red]error:[/red] {e}")
        return 1
    console.print()
    return 0


def chat(args: argparse.Namespace) -> int:
    console = Console()
    try:
        agent = build_agent(args, console)
    except AgentError as e:
        console.print(f"[red]error:[/red] {e}")
        return 1
    resumed = agent.transcript.session_id
    console.print(f"[dim]{'resuming session ' + resumed if resumed else 'new session'} · {CHAT_HELP}[/dim]")
    while True:
        try:
            line = console.input("[bold]> [/bold]").strip()
        except (EOFError, KeyboardInterrupt):
            console.print()
            return 0
        if not line:
            continue
        if line.startswith("/"):
            if _command(agent, line, console):
                return 0
            continue
        try:
            agent.run(line, EventPrinter(console))
        except AgentError as e:
            console.print(f"[red]error:[/red] {e}")
        console.print()


def _command(agent: Agent, line: str, console: Console) -> bool:
    """Runs a slash command; returns True to quit."""
    name = line.split()[0]
    if name in {"/quit", "/exit"}:
        return True
    try:
        if name == "/new":
            agent.new_session()
            console.print("[dim]new session[/dim]")
        elif name == "/fork":
            console.print(f"[dim]forked into session {agent.fork()}[/dim]")
        elif name == "/sessions":
            for s in agent.client.sessions():
                mark = "*" if s["id"] == agent.transcript.session_id else " "
                console.print(f"{mark} {s['id']}  {s.get('n_tokens', '?')} tokens", highlight=False)
        else:
            console.print(CHAT_HELP)
    except AgentError as e:
        console.print(f"[red]error:[/red] {e}")
    return False
