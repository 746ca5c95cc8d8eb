"""`qla-agent serve | chat | run | sessions`: the command line, the one place settings are built."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from pathlib import Path

from qla_agent import __version__
from qla_agent.errors import QlaError


def _serve(args: argparse.Namespace) -> int:
    from qla_agent.server.run import serve
    from qla_agent.server.settings import ServerSettings

    fields = {f.name for f in dataclasses.fields(ServerSettings)}
    serve(ServerSettings.from_env(**{k: v for k, v in vars(args).items() if k in fields}))
    return 0


def _sessions(args: argparse.Namespace) -> int:
    from qla_agent.agent_cli import sessions_command

    return sessions_command(args)


def _parser() -> argparse.ArgumentParser:
    from qla_agent.agent_cli import DEFAULT_URL, add_agent_arguments

    parser = argparse.ArgumentParser(prog="qla-agent", description="Local agent runtime for Qwen hybrid linear-attention models.")
    parser.add_argument("--version", action="version", version=f"qla-agent {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve a model over the OpenAI chat API (env: QLA_*)")
    serve.add_argument("--model", help="checkpoint folder or Hugging Face repo id in the local cache (default: the embedded model)")
    serve.add_argument("--device", help="cuda, cuda:N or cpu (default: cuda if available)")
    serve.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], help="weights dtype (default: bf16 on GPU, fp32 on CPU)")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8000)")
    serve.add_argument("--sessions-dir", type=Path, help="where sessions persist")
    serve.add_argument("--memory-policy", choices=["full", "bounded"], help="attention KV policy for new sessions")
    serve.add_argument("--window-tokens", type=int, help="bounded policy: attention window in tokens (default 4096)")
    serve.add_argument("--sink-tokens", type=int, help="bounded policy: first tokens always kept (default 4)")
    serve.add_argument("--api-key", help="require this bearer token on every route but /health (or QLA_API_KEY)")
    serve.add_argument("--max-tokens", type=int, help="most tokens one request may generate (default 32768)")
    serve.add_argument("--max-sessions", type=int, help="live sessions at most (default 256)")
    serve.add_argument("--served-model-name", help="model id the API shows (default: the folder's name)")
    serve.add_argument("--threads", type=int, help="torch CPU threads (default: one per core but one)")
    serve.add_argument("--cors-origins", nargs="+", help="allow these browser origins (default: none)")
    serve.set_defaults(func=_serve)

    for name, help_text in (("chat", "interactive chat with tools"), ("run", "run one task and exit")):
        p = sub.add_parser(name, help=help_text)
        if name == "run":
            p.add_argument("task", help="what the agent should do")
            p.add_argument("--continue", dest="continue_conversation", action="store_true",
                           help="continue the conversation kept in the session file instead of starting a new one")
        add_agent_arguments(p)
        p.set_defaults(func=_agent_command)

    sessions = sub.add_parser("sessions", help="list, show, fork, delete, export or import a running server's sessions")
    sessions.add_argument("action", choices=["list", "show", "fork", "delete", "export", "import"])
    sessions.add_argument("id", nargs="?", help="session id (show, fork, delete, export; import: the new id)")
    sessions.add_argument("--file", type=Path, help="session file (export, import)")
    sessions.add_argument("--json", action="store_true", help="list: print the JSON the server answered")
    sessions.add_argument("--url", default=DEFAULT_URL, help="server base URL (default %(default)s)")
    sessions.add_argument("--api-key", default=os.environ.get("QLA_API_KEY"), help="bearer token (or QLA_API_KEY)")
    sessions.set_defaults(func=_sessions)
    return parser


def _agent_command(args: argparse.Namespace) -> int:
    from qla_agent import agent_cli

    args.api_key = args.api_key or os.environ.get("QLA_API_KEY")
    return agent_cli.run_task(args) if args.command == "run" else agent_cli.chat(args)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "sessions":
        needs_id = args.action in {"show", "fork", "delete", "export"}
        if needs_id and not args.id:
            parser.error(f"sessions {args.action} needs a session id")
        if args.action in {"export", "import"} and not args.file:
            parser.error(f"sessions {args.action} needs --file")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except QlaError as e:
        # Our errors say what was wrong and how to fix it; a traceback adds nothing for the user (-v keeps it).
        if args.verbose:
            raise
        print(f"qla-agent {args.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
