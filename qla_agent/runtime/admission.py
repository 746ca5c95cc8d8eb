"""Turning a ChatRequest into a Run: pick the session, render, check the context, resume the state.

With `session_id` the request continues that session (its stored messages, trimmed to
`keep_messages`, plus the new ones). Without it the request carries the whole conversation: the
session with the longest matching checkpoint is continued in place when it is an implicit one that
only loses model output (an answer re-rendered differently, regenerated, or tool results), else
forked at that checkpoint; with no match a new implicit session starts.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import torch

from qla_agent.errors import ContextOverflowError, SessionBusyError
from qla_agent.runtime.prompts import Prompt, Renderer
from qla_agent.runtime.requests import ChatRequest
from qla_agent.runtime.sampling import SamplerState
from qla_agent.runtime.session_table import SessionTable
from qla_agent.runtime.sessions import Session, new_session_id
from qla_agent.runtime.state import MemoryPolicy
from qla_agent.runtime.stopping import StopMatcher
from qla_agent.runtime.tokenizer import IncrementalDetokenizer
from qla_agent.runtime.turns import Channel, Conversation, Run

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class Admission:
    """Everything needed to start requests on sessions (used on the scheduler thread only)."""

    model: torch.nn.Module
    renderer: Renderer
    table: SessionTable
    model_id: str
    context_length: int
    default_policy: MemoryPolicy
    max_checkpoints: int
    stop_ids: frozenset[int]
    vocab_size: int

    def admit(self, request: ChatRequest, channel: Channel) -> Run:
        """Resolve, render and resume; the returned run starts prefilling at `run.pos`."""
        session = self.table.get(request.session_id) if request.session_id is not None else None
        if session is not None and session.busy:
            raise SessionBusyError(f"session {session.id!r} is busy with another request; wait for it or cancel it")
        conv = self._conversation(request, session)
        prompt = self.renderer.render(conv.messages, tools=conv.tools, template_kwargs=conv.template_kwargs,
                                      suffix=request.assistant_prefix)
        if session is None:
            before = set(self.table.ids())
            session = self._stateless_session(request, prompt)
            try:
                self.check_context(len(prompt), session.policy)
            except ContextOverflowError:
                if session.id not in before:
                    self.table.delete(session.id)
                raise
        else:
            self.check_context(len(prompt), session.policy)
        cached = session.resume(prompt.tokens, lambda: self.model.new_state(session.policy))
        boundaries = self.renderer.boundaries(
            prompt, conv.messages, tools=conv.tools, template_kwargs=conv.template_kwargs, above=cached
        )
        if boundaries and boundaries[0].n_tokens == cached and cached:
            session.capture(n_messages=boundaries[0].n_messages, limit=self.max_checkpoints)
        session.busy = True
        params = request.sampling
        seed, counter = (params.seed, 0) if params.seed is not None else (session.rng_seed, session.rng_counter)
        return Run(
            request=request,
            channel=channel,
            session=session,
            conversation=conv,
            prompt=prompt,
            boundaries=list(boundaries),
            cached=cached,
            sampler=SamplerState(params, seed=seed, counter=counter, prompt_tokens=prompt.tokens,
                                 vocab_size=self.vocab_size, device=self.model.device),
            detok=IncrementalDetokenizer(self.renderer.tokenizer),
            stopper=StopMatcher(params.stop, keep=params.stop_after),
            stop_ids=self.stop_ids | frozenset(t for t in params.stop_token_ids if 0 <= t < self.vocab_size),
            context_limit=self.context_length if session.policy.kind == "full" else None,
            pos=cached,
        )

    def _conversation(self, request: ChatRequest, session: Session | None) -> Conversation:
        if session is None:
            return Conversation(copy.deepcopy(request.messages), copy.deepcopy(request.tools),
                                copy.deepcopy(request.template_kwargs))
        kept = session.messages if request.keep_messages is None else session.messages[: request.keep_messages]
        return Conversation(
            messages=[*kept, *copy.deepcopy(request.messages)],
            tools=session.tools if request.tools is None else copy.deepcopy(request.tools),
            template_kwargs={**session.template_kwargs, **copy.deepcopy(request.template_kwargs)},
        )

    def _stateless_session(self, request: ChatRequest, prompt: Prompt) -> Session:
        match = self.table.best_match(prompt.tokens)
        if match is not None:
            source = self.table.get(match.session_id)
            if request.policy is None or request.policy == source.policy:
                if self.table.continues_in_place(source, match):
                    return source
                checkpoint = source.checkpoint_at(match.n_tokens)
                fork = source.fork(new_session_id(), at=checkpoint)
                fork.implicit = True
                logger.debug("forked %s at %d tokens for a stateless request", source.id, match.n_tokens)
                return self.table.add(fork)
        policy = request.policy or self.default_policy
        return self.table.create(session_id=new_session_id(), model_id=self.model_id, policy=policy, implicit=True)

    def check_context(self, n_tokens: int, policy: MemoryPolicy) -> None:
        """Raise ContextOverflowError unless a prompt of `n_tokens` leaves room for an answer (full policy)."""
        if policy.kind == "full" and n_tokens >= self.context_length:
            over = n_tokens - self.context_length + 1
            raise ContextOverflowError(
                f"the prompt is {n_tokens} tokens and the context holds {self.context_length} including at least "
                f"one answer token: {over} tokens too many; drop or shorten old messages, start a new session, "
                f"or use the bounded memory policy"
            )

    def fits(self, session: Session, n_tokens: int) -> bool:
        return session.policy.kind == "bounded" or n_tokens <= self.context_length

    def render_history(self, session: Session) -> Prompt:
        """The session's messages as the template renders them without a generation prompt."""
        return self.renderer.render(session.messages, tools=session.tools, template_kwargs=session.template_kwargs,
                                    add_generation_prompt=False)

    def recover(self, session: Session) -> None:
        """After a failed model step: back to the last checkpoint (or empty), whatever the state holds."""
        if session.checkpoints:
            session.restore(session.checkpoints[-1])
        else:
            session.reset(self.model.new_state(session.policy))

    def forget_if_empty(self, session: Session) -> None:
        """Drop an implicit session left with nothing in it (its first request was cancelled)."""
        if session.implicit and not session.messages and not session.tokens and session.id in self.table:
            self.table.delete(session.id)

    def vocab_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Logit rows cut to the tokenizer's vocabulary (models pad the embedding) [N, V] fp32."""
        return logits[:, : self.vocab_size].float()
