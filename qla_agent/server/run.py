"""`serve(settings)`: load the model (with a progress bar), build the engine, run uvicorn."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

import torch
import uvicorn
from rich.console import Console

from qla_agent.runtime.chat_template import ChatTemplate
from qla_agent.runtime.engine import Engine, EngineSettings
from qla_agent.runtime.loader import load_model
from qla_agent.runtime.state import MemoryPolicy
from qla_agent.runtime.tokenizer import Tokenizer
from qla_agent.server.app import create_app
from qla_agent.server.settings import ServerSettings, SettingsError

logger = logging.getLogger(__name__)

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "configs" / "default"


def build_engine(settings: ServerSettings, *, progress: bool = True) -> Engine:
    """Load the model, tokenizer and template named by the settings and wrap them in an Engine."""
    source = settings.model or str(DEFAULT_MODEL_DIR)
    model = load_model(source, device=settings.device, dtype=settings.dtype, progress=progress)
    if settings.threads is not None or model.device.type == "cpu":
        torch.set_num_threads(cpu_threads(settings.threads))
        logger.info("torch uses %d intra-op threads", torch.get_num_threads())
    engine_settings = EngineSettings(
        model_id=settings.served_model_name or _repo_id(settings.model),
        sessions_dir=settings.sessions_dir,
        default_policy=MemoryPolicy(kind=settings.memory_policy, sink_tokens=settings.sink_tokens,
                                    window_tokens=settings.window_tokens),
    )
    return Engine(model, Tokenizer.from_dir(model.model_dir), ChatTemplate.from_dir(model.model_dir),
                  settings=engine_settings)


def cpu_threads(requested: int | None, *, cores: int | None = None) -> int:
    """Torch intra-op threads to serve with: `requested`, else one per usable core but one.

    The engine thread is torch's first intra-op thread; the spare core runs the event loop (HTTP,
    parsing, streaming). More threads than that make OpenMP workers spin against the server: on 2
    cores, 16 concurrent clients of the tiny test model took 4x longer with 2 threads than with 1.
    """
    if requested is not None:
        return requested
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores - 1)


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: a free one), with a clear error when taken."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as e:
        raise SettingsError(f"cannot listen on {host}:{port}: {e.strerror or e}; pick another --port "
                            "or --host") from e
    sock.listen(128)
    return sock


def serve(settings: ServerSettings) -> None:
    """Run the server until interrupted; prints the URL it listens on."""
    console = Console(stderr=True)
    sock = bind_socket(settings.host, settings.port)
    engine = build_engine(settings)
    app = create_app(settings, engine)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    console.print(f"qla-agent serving [bold]{engine.model_id}[/bold] on http://{shown}:{port}/v1 "
                  f"(sessions in {settings.sessions_dir}, torch threads: {torch.get_num_threads()}"
                  f"{', API key required' if settings.api_key else ''})")
    config = uvicorn.Config(app, log_level=settings.log_level, lifespan="on", timeout_graceful_shutdown=5)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:
        # uvicorn re-raises the Ctrl-C it handled after a clean shutdown.
        pass
    console.print("qla-agent stopped")


def _repo_id(model: str | None) -> str | None:
    """A Hugging Face repo id names the model better than its snapshot folder (a commit hash)."""
    if model is None or Path(model).expanduser().exists():
        return None
    return model
