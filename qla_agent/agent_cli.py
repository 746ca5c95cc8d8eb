"""Terminal front ends of the agent loop: `qla-agent chat` (interactive), `qla-agent run` (one task) and
`qla-agent sessions` (manage a running server's sessions)."""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx
from rich.console import Console
from rich.markup import escape

from qla_agent.agent import Agent, AgentError, AgentEvent, ChatClient
from qla_agent.agent_client import AssistantTurn, normalize_url
from qla_agent.errors import QlaError

DEFAULT_URL = "http://127.0.0.1:8000"
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
CHAT_HELP = "commands: /new (new session)  /fork  /sessions  /continue (finish an interrupted turn)  /help  /quit"
SERVER_START_TIMEOUT_S = 600.0
# C0 controls but tab and newline, DEL, and C1 controls.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def add_agent_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=DEFAULT_URL, help="server base URL (default %(default)s)")
    parser.add_argument("--api-key", default=None, help="bearer token for the server (or QLA_API_KEY)")
    parser.add_argument("--workspace", type=Path, default=Path.cwd(), help="folder the file tools may use")
    parser.add_argument("--session-file", type=Path, default=None,
                        help="where the conversation is kept (default: one file per workspace under "
                             "$XDG_STATE_HOME/qla-agent/transcripts, outside the workspace)")
    parser.add_argument("--max-steps", type=int, default=16, help="model calls per user turn at most")
    parser.add_argument("--max-tokens", type=int, default=None, help="tokens one model call may generate")
    parser.add_argument("--temperature", type=float, default=None, help="sampling temperature (0: greedy)")
    parser.add_argument("--seed", type=int, default=None, help="sampling seed, for reproducible answers")
    parser.add_argument("--system", default=None, help="system prompt of a new conversation")
    parser.add_argument("--enable-commands", action="store_true",
                        help="let the model run shell commands in the workspace")
    parser.add_argument("--enable-network", action="store_true", help="let the model fetch URLs")
    parser.add_argument("--tools-module", action="append", default=[],
                        help="import extra tools from this module or .py file")
    parser.add_argument("--no-tools", action="store_true", help="offer the model no tools at all")
    parser.add_argument("--no-start-server", action="store_true", help="fail instead of starting a local server")
    parser.add_argument("--no-thinking", action="store_true", help="ask the model not to think before answering")


def ensure_server(url: str, api_key: str | None, console: Console, *, start: bool) -> None:
    """Checks /health; starts `qla-agent serve` in the background for a local URL when none answers.

    The server runs in its own session (it outlives this command); its log and pid go to
    $XDG_CACHE_HOME/qla-agent/server-PORT.{log,pid}. QLA_* variables (model, sessions dir) pass through.
    """
    url = normalize_url(url)
    status = _health(url)
    if status == 200:
        return
    if status is not None:
        raise AgentError(f"something that is not a qla-agent server answers at {url} (GET /health: {status}); "
                         "check --url")
    parsed = urlparse(url)
    if not start:
        raise AgentError(f"no qla-agent server answers at {url}; start one with `qla-agent serve` "
                         "(or drop --no-start-server)")
    if parsed.hostname not in LOCAL_HOSTS or parsed.port is None:
        raise AgentError(f"no qla-agent server answers at {url}, and one is started only for a local URL "
                         f"with a port (like {DEFAULT_URL}); start it yourself with `qla-agent serve`")
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "qla-agent"
    cache.mkdir(parents=True, exist_ok=True)
    log, pid_file = cache / f"server-{parsed.port}.log", cache / f"server-{parsed.port}.pid"
    command = [sys.executable, "-m", "qla_agent.cli", "serve", "--host", parsed.hostname, "--port", str(parsed.port)]
    # The key goes through the environment: a command line is visible to every user in `ps`.
    env = {**os.environ, "QLA_API_KEY": api_key} if api_key else None
    with log.open("ab") as out:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                   env=env, start_new_session=True)
    pid_file.write_text(f"{process.pid}\n")
    console.print(f"[dim]started a server at {url} in the background (pid {process.pid}, log {escape(str(log))}); "
                  f"stop it with `kill {process.pid}`[/dim]", highlight=False)
    _wait_healthy(url, process, log)


def _wait_healthy(url: str, process: subprocess.Popen, log: Path) -> None:
    parsed = urlparse(url)
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        status = _health(url)
        if status == 200:
            return
        # Our server exited, but the port is taken: another command may have started one first (it
        # listens before its model is loaded, and answers /health once it is).
        if process.poll() is not None and (status is not None or not _listening(parsed.hostname, parsed.port)):
            raise AgentError(f"the server exited with code {process.returncode} while starting; see {log}")
        time.sleep(0.25)
    raise AgentError(f"the server (pid {process.pid}) did not answer /health within {SERVER_START_TIMEOUT_S:.0f} s; "
                     f"see {log}")


def _listening(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1.0).close()
    except OSError:
        return False
    return True


def _health(url: str) -> int | None:
    """The status of GET /health, None when nothing answers over HTTP."""
    try:
        return httpx.get(url + "/health", timeout=2.0).status_code
    except httpx.HTTPError:
        return None


def default_session_file(workspace: Path) -> Path:
    """One transcript per workspace, kept outside it (the model's file tools must not reach it)."""
    root = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "qla-agent" / "transcripts"
    resolved = workspace.resolve()
    digest = hashlib.sha256(str(resolved).encode()).hexdigest()[:12]
    return root / f"{resolved.name or 'root'}-{digest}.json"


def build_agent(args: argparse.Namespace, console: Console) -> Agent:
    from qla_agent.tools.registry import ToolRegistry
    from qla_agent.tools.settings import ToolSettings, build_registry

    if not args.workspace.is_dir():
        raise AgentError(f"the workspace {args.workspace} is not a folder; create it or pass another --workspace")
    tools = ToolRegistry() if args.no_tools else build_registry(ToolSettings(
        workspace=args.workspace, allow_commands=args.enable_commands, allow_fetch=args.enable_network,
        modules=tuple(args.tools_module)))
    # Local mistakes first: no server is started for a command that cannot run.
    ensure_server(args.url, args.api_key, console, start=not args.no_start_server)
    options: dict[str, object] = {}
    if args.no_thinking:
        options["chat_template_kwargs"] = {"enable_thinking": False}
    for name in ("max_tokens", "temperature", "seed"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    session_file = args.session_file or default_session_file(args.workspace)
    return Agent(ChatClient(args.url, api_key=args.api_key), tools, session_file, max_steps=args.max_steps,
                 system_prompt=args.system, request_options=options)


class EventPrinter:
    """Streams agent events to the terminal: reasoning dimmed, tool calls and results in colour."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.last = ""

    def __call__(self, event: AgentEvent) -> None:
        streamed = event.kind in {"content", "reasoning"}
        if self.last in {"content", "reasoning"} and event.kind != self.last:
            self.console.print()
        if streamed:
            style = "dim" if event.kind == "reasoning" else None
            self.console.print(printable(event.text), style=style, end="", markup=False, highlight=False)
        elif event.kind == "tool_call":
            self.console.print(f"[cyan]→ {escape(printable(event.name))}[/cyan] {escape(printable(event.text))}",
                               highlight=False)
        elif event.kind == "tool_result":
            text = escape(_clip(printable(event.text)))
            self.console.print(f"[green]← {escape(printable(event.name))}[/green] {text}", highlight=False)
        else:
            self.console.print(f"[yellow]{escape(event.text)}[/yellow]", highlight=False)
        self.last = event.kind

    def end_turn(self, turn: AssistantTurn) -> None:
        """Close the streamed line and say how the answer ended when it was cut short."""
        if self.last in {"content", "reasoning"}:
            self.console.print()
        self.last = ""
        if turn.finish_reason == "length":
            self.console.print("[yellow](the answer was cut at the token limit; raise --max-tokens)[/yellow]")


def _clip(text: str, limit: int = 400) -> str:
    return text if len(text) <= limit else text[:limit] + f"… ({len(text)} chars)"


def printable(text: str) -> str:
    """Model and tool text with terminal control characters removed (escape sequences could rewrite the screen)."""
    return _CONTROL.sub("", text)


def _usage_line(agent: Agent, turn: AssistantTurn) -> str:
    usage = turn.usage
    tokens = "" if usage is None else (f" · prompt {usage.prompt_tokens} tokens ({usage.cached_tokens} reused)"
                                       f" · answer {usage.completion_tokens} tokens")
    return f"session {agent.transcript.session_id}{tokens}"


def _quiet_http_logs(args: argparse.Namespace) -> None:
    # httpx logs every request at INFO, which would interleave with the streamed answer.
    if not getattr(args, "verbose", False):
        logging.getLogger("httpx").setLevel(logging.WARNING)


def run_task(args: argparse.Namespace) -> int:
    """`qla-agent run TASK`: 0 when the model answered, 1 on any failure, 130 when interrupted.

    Each run starts a new conversation (kept in the session file, so `chat` can pick it up) unless
    `--continue` asks to go on with the one there."""
    _quiet_http_logs(args)
    console, status = Console(soft_wrap=True), Console(stderr=True, soft_wrap=True)
    try:
        agent = build_agent(args, status)
    except (QlaError, OSError) as e:
        status.print(f"[red]error:[/red] {escape(str(e))}", highlight=False)
        return 1
    printer = EventPrinter(console)
    try:
        if not args.continue_conversation:
            agent.new_session()
        turn = agent.run(args.task, printer)
    except (QlaError, OSError) as e:
        printer.end_turn(AssistantTurn())
        status.print(f"[red]error:[/red] {escape(str(e))}", highlight=False)
        return 1
    except KeyboardInterrupt:
        status.print("\n[yellow]interrupted[/yellow]")
        return 130
    finally:
        agent.close()
    printer.end_turn(turn)
    status.print(f"[dim]{_usage_line(agent, turn)}[/dim]", highlight=False)
    return 0


def chat(args: argparse.Namespace) -> int:
    """`qla-agent chat`: read lines from the terminal (or a pipe) until /quit or end of input."""
    _quiet_http_logs(args)
    console = Console(soft_wrap=True)
    try:
        agent = build_agent(args, console)
    except (QlaError, OSError) as e:
        console.print(f"[red]error:[/red] {escape(str(e))}", highlight=False)
        return 1
    if sys.stdin.isatty():
        # Line editing and history for input().
        import readline  # noqa: F401
    with agent:
        resumed = agent.transcript.session_id
        intro = f"resuming session {resumed}" if resumed else "new session"
        console.print(f"[dim]{intro} · {CHAT_HELP}[/dim]", highlight=False)
        if agent.pending_calls():
            console.print("[yellow]the last turn was interrupted before its tool calls ran: "
                          "/continue runs them[/yellow]")
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
            _chat_turn(agent, console, lambda printer: agent.run(line, printer))


def _chat_turn(agent: Agent, console: Console, step) -> None:
    """Run one turn; errors and Ctrl-C end the turn, not the chat."""
    printer = EventPrinter(console)
    try:
        turn = step(printer)
    except (QlaError, OSError) as e:
        printer.end_turn(AssistantTurn())
        console.print(f"[red]error:[/red] {escape(str(e))}", highlight=False)
        return
    except KeyboardInterrupt:
        printer.end_turn(AssistantTurn())
        console.print("[yellow]interrupted[/yellow]")
        return
    if turn is None:
        console.print("[dim]nothing to continue[/dim]")
        return
    printer.end_turn(turn)
    console.print(f"[dim]{_usage_line(agent, turn)}[/dim]", highlight=False)


def _command(agent: Agent, line: str, console: Console) -> bool:
    """Run a slash command; True means quit."""
    name = line.split()[0]
    if name in {"/quit", "/exit"}:
        return True
    try:
        if name == "/new":
            agent.new_session()
            console.print("[dim]new session[/dim]")
        elif name == "/fork":
            old = agent.transcript.session_id
            console.print(f"[dim]forked session {old} into {agent.fork()}; continuing in the fork[/dim]",
                          highlight=False)
        elif name == "/sessions":
            _print_sessions(agent, console)
        elif name == "/continue":
            _chat_turn(agent, console, agent.resume)
        else:
            console.print(CHAT_HELP)
    except (QlaError, OSError) as e:
        console.print(f"[red]error:[/red] {escape(str(e))}", highlight=False)
    return False


def _print_sessions(agent: Agent, console: Console) -> None:
    sessions = agent.client.sessions()
    if not sessions:
        console.print("[dim]no sessions on the server[/dim]")
    for s in sessions:
        mark = "*" if s["id"] == agent.transcript.session_id else " "
        console.print(f"{mark} {s['id']}  {s.get('n_messages', '?')} messages  {s.get('n_tokens', '?')} tokens",
                      highlight=False)


def sessions_command(args: argparse.Namespace) -> int:
    """`qla-agent sessions ACTION [ID]`: 0 on success, 1 when the server refuses or cannot be reached."""
    _quiet_http_logs(args)
    client = ChatClient(args.url, api_key=args.api_key)
    try:
        _session_action(client, args)
    except (AgentError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        client.close()
    return 0


def _session_action(client: ChatClient, args: argparse.Namespace) -> None:
    if args.action == "list":
        sessions = client.sessions()
        if args.json:
            print(json.dumps(sessions, indent=2))
        for s in [] if args.json else sessions:
            updated = time.strftime("%Y-%m-%d %H:%M", time.localtime(s["updated"]))
            print(f"{s['id']}  {s['n_messages']} messages  {s['n_tokens']} tokens  updated {updated}  {s['location']}")
    elif args.action == "show":
        print(json.dumps(client.request("GET", f"/v1/sessions/{args.id}"), indent=2, ensure_ascii=False))
    elif args.action == "fork":
        print(client.fork(args.id))
    elif args.action == "delete":
        client.delete_session(args.id)
        print(f"deleted {args.id}")
    elif args.action == "export":
        data = client.export_session(args.id)
        args.file.write_bytes(data)
        print(f"wrote session {args.id} to {args.file} ({len(data)} bytes)")
    else:
        info = client.import_session(args.file.read_bytes(), session_id=args.id)
        print(f"imported {args.file} as session {info['id']} "
              f"({info['n_messages']} messages, {info['n_tokens']} tokens)")
