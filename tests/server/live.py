"""A real uvicorn server on 127.0.0.1 (a free port) in a background thread, around a real engine."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import uvicorn

from qla_agent.runtime.chat_template import ChatTemplate
from qla_agent.runtime.engine import Engine, EngineSettings
from qla_agent.runtime.loader import load_model
from qla_agent.runtime.tokenizer import Tokenizer
from qla_agent.server.app import create_app
from qla_agent.server.run import bind_socket
from qla_agent.server.settings import ServerSettings
from tests.tiny_models import write_tiny_checkpoint

MODEL_ID = "tiny-qwen3.5"
# Under these the Qwen3.5 template renders history append-only, so a turn resumes where the last ended.
APPEND_ONLY = {"chat_template_kwargs": {"enable_thinking": False, "preserve_thinking": True}}


@dataclass(frozen=True)
class TinyModel:
    """A tiny random qwen3_5 checkpoint, loaded once (fp32, CPU)."""

    path: Path
    model: Any
    tokenizer: Tokenizer
    template: ChatTemplate


def load_tiny(root: Path) -> TinyModel:
    path = write_tiny_checkpoint(root / "qwen3_5", "qwen3_5", seed=5)
    model = load_model(path, device="cpu", dtype=torch.float32, progress=False)
    return TinyModel(path, model, Tokenizer.from_dir(path), ChatTemplate.from_dir(path))


def digit_bias(tiny: TinyModel) -> dict[str, float]:
    """Logit bias allowing only digits and <|im_end|>: digits re-tokenize to the tokens sampled, so a
    session's history renders to exactly the tokens its state consumed."""
    ids = [tiny.tokenizer.encode(str(d))[0] for d in range(10)] + [tiny.tokenizer.token_id("<|im_end|>")]
    return {str(i): 100.0 for i in ids}


def no_stop(tiny: TinyModel) -> dict[str, float]:
    """Logit bias banning the stop tokens, so a request runs its whole max_tokens."""
    stops = set(tiny.tokenizer.eos_token_ids) | set(tiny.model.config.eos_token_ids)
    return {str(i): -100.0 for i in stops}


def make_engine(tiny: TinyModel, sessions_dir: Path, **settings: Any) -> Engine:
    return Engine(tiny.model, tiny.tokenizer, tiny.template,
                  settings=EngineSettings(model_id=MODEL_ID, sessions_dir=sessions_dir, **settings))


@dataclass
class Live:
    """A running server: its base URL, settings and engine."""

    url: str
    settings: ServerSettings
    engine: Engine

    @property
    def v1(self) -> str:
        return self.url + "/v1"


@contextmanager
def live_server(settings: ServerSettings, engine: Engine) -> Iterator[Live]:
    """Serve `engine` with uvicorn until the block ends (then shut down and join the thread)."""
    app = create_app(settings, engine)
    sock = bind_socket("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive(), "uvicorn exited during startup"
        assert time.monotonic() < deadline, "uvicorn did not start within 30 s"
        time.sleep(0.01)
    port = sock.getsockname()[1]
    try:
        yield Live(f"http://127.0.0.1:{port}", settings, engine)
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
        assert not thread.is_alive(), "uvicorn did not shut down within 30 s"
