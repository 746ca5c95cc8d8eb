"""The engine: chat requests in, streamed text out, over persistent sessions with constant-size state.

    engine = Engine(model, tokenizer, template, settings=EngineSettings(sessions_dir=path))
    await engine.start()
    async for event in engine.chat(ChatRequest(messages=[...], session_id=...)):
        ...  # Started(session_id), TextDelta(text) events, then one Finished(finish_reason, usage, session_id, text)
    await engine.stop()

Torch work runs on a background thread (`scheduler.py`); `chat` and the session API are async and
never block the event loop on the model.

Semantics callers rely on:
- Sessions: a request with `session_id` appends its messages to the session's (see ChatRequest for
  `keep_messages`: regenerate / edit the last turn); without one, the request's messages are the
  whole conversation and the engine picks or creates an implicit session (Finished.session_id).
- Reuse: the prompt is rendered with the chat template and tokenized; the session resumes from its
  whole history or its latest message-boundary checkpoint that prefixes the prompt, and prefills only
  the rest (Usage.cached_tokens counts what was reused). The completion is stored as an assistant
  message with the raw text; when the template renders it as the model generated it, the session ends
  the turn on a checkpoint after it, otherwise it falls back to the checkpoint before it.
- Busy: one request per session at a time; a second one raises SessionBusyError (a SessionError).
- Cancel (the caller's aclose() / task cancellation): the request stops at the next step and the
  session is as before the request: its messages unchanged, its state rolled back to the last
  checkpoint of those messages (nothing is saved). Finished("cancelled") is sent if anyone listens.
- Durability: after a completed turn the session file is written (writer thread); Finished is sent
  once it is durable, so a crash after Finished never loses the turn.
- Limits: full policy: prompt + completion <= context_length (ContextOverflowError names the excess
  before the request starts; finish_reason "length" when the completion reaches it); bounded policy:
  no limit, fixed memory.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from qla_agent.errors import EngineNotRunningError
from qla_agent.runtime.admission import Admission
from qla_agent.runtime.chat_template import ChatTemplate
from qla_agent.runtime.prompts import Renderer
from qla_agent.runtime.requests import ChatRequest, Event, Finished
from qla_agent.runtime.scheduler import Scheduler
from qla_agent.runtime.session_api import SessionsApi
from qla_agent.runtime.session_table import Limits, SessionTable
from qla_agent.runtime.state import MemoryPolicy
from qla_agent.runtime.store import SessionStore
from qla_agent.runtime.tokenizer import Tokenizer
from qla_agent.runtime.turns import Channel, check_stop_ids

logger = logging.getLogger(__name__)

# Values sampled per weight tensor for the model fingerprint.
_FINGERPRINT_SAMPLES = 64


@dataclass(frozen=True, slots=True)
class EngineSettings:
    """Engine knobs (built once by the CLI/server from QLA_ settings).

    context_length: most tokens a full-policy session holds (default: the model's max positions).
    max_batch: requests in flight at once (prefilling or decoding); more wait in line.
    prefill_chunk: prompt tokens prefilled per scheduler step, over all requests (oldest first): it
    bounds how long a long prompt stalls the decoding requests, and lets short prompts that arrive
    together all finish their prefill in one step, so they decode together.
    max_checkpoints: message-boundary checkpoints kept per session (each costs one GDN state).
    settle_tokens: after a turn, the template's closing tokens (e.g. `<|im_end|>\\n`) are prefilled
    right away when there are at most this many, so the session ends on a checkpoint.
    """

    model_id: str | None = None
    sessions_dir: Path | None = None
    default_policy: MemoryPolicy = field(default_factory=MemoryPolicy)
    context_length: int | None = None
    max_batch: int = 16
    prefill_chunk: int = 2048
    max_checkpoints: int = 6
    max_device_sessions: int = 16
    max_memory_sessions: int = 64
    max_implicit_sessions: int = 64
    settle_tokens: int = 32

    def __post_init__(self) -> None:
        for name in ("max_batch", "prefill_chunk", "max_checkpoints", "max_device_sessions", "max_memory_sessions",
                     "max_implicit_sessions"):
            if getattr(self, name) < 1:
                raise ValueError(f"EngineSettings.{name}={getattr(self, name)} must be >= 1")


@dataclass(frozen=True, slots=True)
class EngineStats:
    """Counters since start (`engine.stats()`); prefill tokens split into computed and reused.

    decode_tokens / decode_steps is the mean decode batch size; state_bytes counts live states and
    checkpoints of the sessions in memory.
    """

    prefill_tokens_computed: int
    prefill_tokens_reused: int
    decode_tokens: int
    decode_steps: int
    prefill_seconds: float
    decode_seconds: float
    requests_finished: int
    requests_cancelled: int
    requests_failed: int
    running_requests: int
    waiting_requests: int
    live_sessions: int
    loaded_sessions: int
    state_bytes: int


def model_fingerprint(model: torch.nn.Module) -> str:
    """Identity of a model: its config plus names, shapes, dtypes and sampled values of its weights."""
    digest = hashlib.sha256()
    config = getattr(model, "config", None)
    if dataclasses.is_dataclass(config):
        digest.update(json.dumps(dataclasses.asdict(config), sort_keys=True, default=str).encode())
    for name, tensor in model.state_dict().items():
        flat = tensor.detach().reshape(-1)
        step = max(1, flat.numel() // _FINGERPRINT_SAMPLES)
        sample = flat[::step][:_FINGERPRINT_SAMPLES].float().cpu()
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()


def _default_model_id(model: Any) -> str:
    model_dir = getattr(model, "model_dir", None)
    if model_dir is not None:
        return Path(model_dir).name
    return str(getattr(getattr(model, "config", None), "model_type", "model"))


class Engine:
    """Serves chat requests on a model; owns the sessions (see the module docstring)."""

    def __init__(self, model: Any, tokenizer: Tokenizer, template: ChatTemplate, *,
                 settings: EngineSettings = EngineSettings()) -> None:
        self.settings = settings
        self.model = model
        self.model_id: str = settings.model_id or _default_model_id(model)
        self.context_length: int = settings.context_length or model.config.max_position_embeddings
        self.template = template
        self.tool_format = template.tool_format
        self.fingerprint = model_fingerprint(model)
        store = SessionStore(settings.sessions_dir, fingerprint=self.fingerprint) if settings.sessions_dir else None
        table = SessionTable(
            device=model.device,
            new_state=model.new_state,
            store=store,
            limits=Limits(settings.max_device_sessions, settings.max_memory_sessions, settings.max_implicit_sessions),
        )
        vocab_size = min(tokenizer.vocab_size, model.config.vocab_size)
        stop_ids = check_stop_ids([*tokenizer.eos_token_ids, *model.config.eos_token_ids], vocab_size)
        admission = Admission(
            model=model,
            renderer=Renderer(template, tokenizer),
            table=table,
            model_id=self.model_id,
            context_length=self.context_length,
            default_policy=settings.default_policy,
            max_checkpoints=settings.max_checkpoints,
            stop_ids=stop_ids,
            vocab_size=vocab_size,
        )
        self._scheduler = Scheduler(admission, max_batch=settings.max_batch, prefill_chunk=settings.prefill_chunk,
                                    settle_tokens=settings.settle_tokens)
        self.sessions = SessionsApi(self._scheduler, admission, fingerprint=self.fingerprint)

    async def start(self) -> None:
        """Start the background scheduler thread."""
        self._scheduler.start()

    async def stop(self) -> None:
        """Stop the scheduler; requests in flight end with finish_reason "cancelled"."""
        await asyncio.to_thread(self._scheduler.stop)

    async def __aenter__(self) -> Engine:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def chat(self, request: ChatRequest) -> AsyncIterator[Event]:
        """Stream a completion: Started, TextDelta events, then one Finished. Closing the iterator cancels it.

        Raises SessionNotFoundError, SessionBusyError, SessionError (wrong model), ContextOverflowError,
        ChatTemplateError, RequestError or EngineNotRunningError before any event when the request
        cannot start.
        """
        if not self._scheduler.alive:
            raise EngineNotRunningError("the engine is not running; call `await engine.start()` first")
        channel = Channel(asyncio.get_running_loop())
        self._scheduler.submit(request, channel)
        try:
            while True:
                item = await channel.queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if isinstance(item, Finished):
                    return
        finally:
            channel.cancelled = True

    def stats(self) -> EngineStats:
        """Live counters (safe to call from any thread)."""
        c = self._scheduler.counters
        return EngineStats(
            prefill_tokens_computed=c.prefill_tokens_computed,
            prefill_tokens_reused=c.prefill_tokens_reused,
            decode_tokens=c.decode_tokens,
            decode_steps=c.decode_steps,
            prefill_seconds=c.prefill_seconds,
            decode_seconds=c.decode_seconds,
            requests_finished=c.requests_finished,
            requests_cancelled=c.requests_cancelled,
            requests_failed=c.requests_failed,
            running_requests=c.running,
            waiting_requests=c.waiting,
            live_sessions=c.sessions,
            loaded_sessions=c.sessions_loaded,
            state_bytes=c.state_bytes,
        )
