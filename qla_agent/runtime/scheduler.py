"""The engine's background thread: admits requests, prefills, decodes in batches, settles sessions.

All torch work and every session mutation happen on this one thread, so sessions need no locks.
Each loop iteration runs queued commands (session API calls), admits new requests, prefills up to
`prefill_chunk` prompt tokens, oldest request first and as many requests as fit (chunks end at
message boundaries, where checkpoints are taken), then decodes one token for every request past its
prefill, all in one batch. Requests that arrive together thus finish their prefill in the same step
and decode together from their first token; a long prompt still costs each step at most one chunk.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from qla_agent.errors import ChatTemplateError, EngineNotRunningError, QlaError, SessionError
from qla_agent.runtime.admission import Admission
from qla_agent.runtime.checkpoints import common_prefix_length, token_array
from qla_agent.runtime.requests import ChatRequest, FinishReason, Started
from qla_agent.runtime.sampling import sample
from qla_agent.runtime.sessions import Session
from qla_agent.runtime.turns import Channel, Conversation, Run, assistant_message

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(slots=True)
class Counters:
    """Running totals (read by `Engine.stats()` from any thread; written only by the scheduler)."""

    prefill_tokens_computed: int = 0
    prefill_tokens_reused: int = 0
    decode_tokens: int = 0
    decode_steps: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    requests_finished: int = 0
    requests_cancelled: int = 0
    requests_failed: int = 0
    running: int = 0
    waiting: int = 0
    sessions: int = 0
    sessions_loaded: int = 0
    state_bytes: int = 0


class Scheduler:
    """Continuous batching over sessions on one device (see the module docstring)."""

    def __init__(self, admission: Admission, *, max_batch: int, prefill_chunk: int, settle_tokens: int) -> None:
        self.admission = admission
        self.model = admission.model
        self.table = admission.table
        self.max_batch = max_batch
        self.prefill_chunk = prefill_chunk
        self.settle_tokens = settle_tokens
        self.counters = Counters()
        self._inbox: deque[tuple[ChatRequest, Channel]] = deque()
        self._commands: deque[tuple[Callable[[], Any], Future]] = deque()
        self._wake = threading.Condition()
        self._prefilling: deque[Run] = deque()
        self._decoding: list[Run] = []
        self._thread: threading.Thread | None = None
        self._running = False
        self._generator = torch.Generator(device=self.model.device)
        self._refresh_counters()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self.alive:
            return
        self._running = True
        self._thread = threading.Thread(target=self._loop, name="qla-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread; requests in flight finish as cancelled."""
        with self._wake:
            self._running = False
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with torch.no_grad():
            for run in [*self._prefilling, *self._decoding]:
                self._finish(run, "cancelled")
            while self._inbox:
                _, channel = self._inbox.popleft()
                channel.put(EngineNotRunningError("the engine stopped before this request started; send it again "
                                                  "once the server is back"))
        self.table.flush()

    def submit(self, request: ChatRequest, channel: Channel) -> None:
        with self._wake:
            self._inbox.append((request, channel))
            self._wake.notify()

    def call(self, fn: Callable[[], T]) -> Future:
        """Run `fn` on the scheduler thread between steps (inline when the thread is not running)."""
        future: Future = Future()
        if not self.alive:
            with torch.no_grad():
                self._run_command(fn, future)
            return future
        with self._wake:
            self._commands.append((fn, future))
            self._wake.notify()
        return future

    def _run_command(self, fn: Callable[[], Any], future: Future) -> None:
        try:
            future.set_result(fn())
        except BaseException as e:
            future.set_exception(e)
        self._refresh_counters()

    def _loop(self) -> None:
        with torch.no_grad():
            while True:
                with self._wake:
                    if not self._running:
                        return
                    if not (self._inbox or self._commands or self._prefilling or self._decoding):
                        self._wake.wait(timeout=0.5)
                        continue
                try:
                    self._step()
                except Exception:
                    logger.exception("engine step failed")

    def _step(self) -> None:
        while self._commands:
            self._run_command(*self._commands.popleft())
        # Cancelled runs go first: a caller may cancel and at once send the next turn of the session.
        for run in [r for r in (*self._prefilling, *self._decoding) if r.channel.cancelled]:
            self._finish(run, "cancelled")
        while self._inbox and len(self._prefilling) + len(self._decoding) < self.max_batch:
            self._admit(*self._inbox.popleft())
        budget = self.prefill_chunk
        for run in list(self._prefilling):
            if budget <= 0:
                break
            budget -= self._guarded([run], lambda runs: self._prefill_run(runs[0], budget)) or 0
        if self._decoding:
            self._guarded(list(self._decoding), self._decode_step)
        self._refresh_counters()

    def _admit(self, request: ChatRequest, channel: Channel) -> None:
        if channel.cancelled:
            return
        try:
            run = self.admission.admit(request, channel)
        except Exception as e:
            if not isinstance(e, QlaError):
                logger.exception("admitting a request failed")
            self.counters.requests_failed += 1
            channel.put(e)
            return
        self.counters.prefill_tokens_reused += run.cached
        self._prefilling.append(run)
        channel.put(Started(run.session.id))

    def _guarded(self, runs: list[Run], step: Callable[[list[Run]], T]) -> T | None:
        """Run a model step; on an exception fail its requests and roll their sessions back (None)."""
        try:
            return step(runs)
        except Exception as e:
            logger.exception("model step failed for %d request(s)", len(runs))
            for run in runs:
                self._drop(run)
                self.admission.recover(run.session)
                run.session.busy = False
                self.counters.requests_failed += 1
                run.channel.put(e)
        return None

    def _drop(self, run: Run) -> None:
        if run in self._prefilling:
            self._prefilling.remove(run)
        if run in self._decoding:
            self._decoding.remove(run)

    def _prefill(self, session: Session, ids: list[int]) -> torch.Tensor:
        """Run prompt tokens on the session's live state; logits of the last one [vocab] fp32."""
        t0 = time.perf_counter()
        logits = self.model.prefill(torch.tensor(ids, dtype=torch.long, device=self.model.device), session.state)
        session.feed(ids)
        self.counters.prefill_tokens_computed += len(ids)
        self.counters.prefill_seconds += time.perf_counter() - t0
        return logits

    def _prefill_run(self, run: Run, budget: int) -> int:
        """Prefill `run` chunk by chunk within `budget` tokens; once done, sample its first token. Tokens used."""
        used, logits = 0, None
        while used < budget and not run.prefilled:
            end, boundary = run.next_chunk(budget - used)
            logits = self._prefill(run.session, run.prompt.tokens[run.pos : end].tolist())
            used += end - run.pos
            run.pos = end
            if boundary is not None:
                run.session.capture(n_messages=boundary.n_messages, limit=self.admission.max_checkpoints)
        if not run.prefilled:
            return used
        # Admission leaves at least one prompt token to run, so the last chunk ran in this call.
        assert logits is not None
        self._prefilling.remove(run)
        first = sample(self.admission.vocab_logits(logits[None]), [run.sampler], generator=self._generator)[0]
        self._accept(run, first)
        if run.finish_reason is None:
            self._decoding.append(run)
        return used

    def _decode_step(self, runs: list[Run]) -> None:
        t0 = time.perf_counter()
        ids = torch.tensor([r.pending for r in runs], dtype=torch.long, device=self.model.device)
        logits = self.model.decode(ids, [r.session.state for r in runs])
        for run in runs:
            run.session.feed([run.pending])
            run.pending = None
        picks = sample(self.admission.vocab_logits(logits), [r.sampler for r in runs], generator=self._generator)
        self.counters.decode_tokens += len(runs)
        self.counters.decode_steps += 1
        self.counters.decode_seconds += time.perf_counter() - t0
        for run, token in zip(runs, picks):
            self._accept(run, token)

    def _accept(self, run: Run, token: int) -> None:
        run.accept(token)
        if run.finish_reason is not None:
            self._finish(run, run.finish_reason)

    def _finish(self, run: Run, reason: FinishReason) -> None:
        """End a request: record the turn (unless cancelled), settle the session, save it, tell the caller.

        The caller hears Finished once the session file is durable (written on the writer thread).
        """
        self._drop(run)
        session = run.session
        if run.request.sampling.seed is None:
            session.rng_counter = run.sampler.counter
        completed = reason in ("stop", "length")
        try:
            if completed:
                conv = run.conversation
                session.messages = [*conv.messages, assistant_message(run.completion())]
                session.tools, session.template_kwargs = conv.tools, conv.template_kwargs
                session.updated = time.time()
            self._settle(session)
        except Exception as e:
            logger.exception("settling session %s failed", session.id)
            self.admission.recover(session)
            session.busy = False
            run.channel.put(e)
            return
        session.busy = False
        finished = run.finished(reason)
        if completed:
            self.counters.requests_finished += 1
            self.table.save_later(session, lambda error: run.channel.put(finished if error is None else SessionError(
                f"the answer is complete but saving session {session.id!r} failed: {error}")))
        else:
            self.counters.requests_cancelled += 1
            run.channel.put(finished)
        self.admission.forget_if_empty(session)
        self.table.enforce_limits()

    def _settle(self, session: Session) -> None:
        """Align the live state with the template's rendering of the session's messages.

        When the tokens the state consumed prefix that rendering, the few tokens the template adds
        (e.g. `<|im_end|>\\n`) are prefilled and a checkpoint is taken at the end of the last message;
        otherwise (the model's tokens are not what the template renders for its answer, a stop string
        was cut, the turn was cancelled) the state rolls back to the last checkpoint that matches.
        """
        try:
            rendered = self.admission.render_history(session).tokens if session.messages else token_array()
        except ChatTemplateError as e:
            logger.info("session %s history does not render (%s); rolling back to its last checkpoint", session.id, e)
            rendered = token_array()
        common = common_prefix_length(session.tokens, rendered)
        if common == len(session.tokens) and rendered:
            tail = rendered[common:].tolist()
            if tail and len(tail) <= self.settle_tokens and self.admission.fits(session, len(rendered)):
                self._prefill(session, tail)
            if len(session.tokens) == len(rendered):
                session.capture(n_messages=len(session.messages), limit=self.admission.max_checkpoints)
            return
        usable = [c for c in session.checkpoints if c.n_tokens <= common]
        if usable:
            session.restore(usable[-1])
        else:
            session.reset(self.model.new_state(session.policy))

    def _refresh_counters(self) -> None:
        c = self.counters
        c.running = len(self._prefilling) + len(self._decoding)
        c.waiting = len(self._inbox)
        c.sessions = len(self.table.loaded) + len(self.table.on_disk)
        c.sessions_loaded = len(self.table.loaded)
        c.state_bytes = self.table.total_state_bytes()
