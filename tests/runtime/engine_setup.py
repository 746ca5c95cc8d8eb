"""Shared pieces of the engine/session/store tests: a tiny real model, engines on it, a from-scratch oracle."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import torch

from qla_agent.runtime.chat_template import ChatTemplate
from qla_agent.runtime.engine import Engine, EngineSettings
from qla_agent.runtime.loader import load_model
from qla_agent.runtime.requests import ChatRequest, Finished, SamplingParams, Started, TextDelta
from qla_agent.runtime.tokenizer import Tokenizer
from tests.tiny_models import write_tiny_checkpoint

# Template options under which the Qwen3.5 template renders history append-only.
APPEND_ONLY = {"enable_thinking": False, "preserve_thinking": True}


@dataclass(frozen=True)
class Tiny:
    """A tiny random qwen3_5 checkpoint loaded fp32 on CPU."""

    path: Path
    model: Any
    tokenizer: Tokenizer
    template: ChatTemplate

    @property
    def stop_ids(self) -> set[int]:
        return set(self.tokenizer.eos_token_ids) | set(self.model.config.eos_token_ids)

    def digit_bias(self) -> dict[int, float]:
        """Logit bias restricting output to digits and <|im_end|>: digits re-tokenize to themselves,
        so the model's tokens equal the template's rendering of its answer."""
        ids = [self.tokenizer.encode(str(d))[0] for d in range(10)] + [self.tokenizer.token_id("<|im_end|>")]
        return {i: 100.0 for i in ids}


# One tiny model per test session, shared by every module that imports the fixture (pytest would
# otherwise build it once per importing module).
_BUILT: dict[str, Tiny] = {}


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> Tiny:
    key = str(tmp_path_factory.getbasetemp())
    if key not in _BUILT:
        path = write_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "qwen3_5", "qwen3_5", seed=3)
        model = load_model(path, device="cpu", dtype=torch.float32, progress=False)
        _BUILT[key] = Tiny(path, model, Tokenizer.from_dir(path), ChatTemplate.from_dir(path))
    return _BUILT[key]


def make_engine(tiny: Tiny, **settings: Any) -> Engine:
    return Engine(tiny.model, tiny.tokenizer, tiny.template, settings=EngineSettings(**settings))


async def chat(engine: Engine, request: ChatRequest) -> tuple[list[str], Finished]:
    """Run a request to the end: the text deltas and the Finished event (after Started, in its session)."""
    deltas: list[str] = []
    started: Started | None = None
    async for event in engine.chat(request):
        if isinstance(event, Started):
            assert started is None, "a second Started event"
            started = event
            continue
        assert started is not None, f"{type(event).__name__} before Started"
        if isinstance(event, TextDelta):
            deltas.append(event.text)
        else:
            assert event.session_id == started.session_id
            return deltas, event
    raise AssertionError("the stream ended without Finished")


def run(coro):
    return asyncio.run(coro)


def greedy(max_tokens: int, **kwargs: Any) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, **kwargs)


def from_scratch(tiny: Tiny, messages: list[dict], params: SamplingParams, *, template_kwargs: dict | None = None,
                 tools: list | None = None, prefix: str = "") -> list[int]:
    """The oracle: render the whole conversation (+ the answer's `prefix`), prefill it on an empty
    state, decode greedily."""
    assert params.temperature == 0.0
    text = tiny.template.render(messages, tools=tools, add_generation_prompt=True, **(template_kwargs or {})) + prefix
    ids = tiny.tokenizer.encode(text)
    state = tiny.model.new_state()
    logits = tiny.model.prefill(torch.tensor(ids), state)
    out: list[int] = []
    vocab = tiny.tokenizer.vocab_size
    while True:
        line = logits[:vocab].clone()
        for token, bias in params.logit_bias.items():
            line[token] += bias
        token = int(line.argmax())
        out.append(token)
        if token in tiny.stop_ids or len(out) >= params.max_tokens:
            return out
        logits = tiny.model.decode(torch.tensor([token]), [state])[0]


def completion_text(tiny: Tiny, tokens: list[int]) -> str:
    """What the engine returns as text for `tokens` (a final stop token is not text)."""
    if tokens and tokens[-1] in tiny.stop_ids:
        tokens = tokens[:-1]
    return tiny.tokenizer.decode(tokens)


def with_session(request: ChatRequest, session_id: str | None) -> ChatRequest:
    return replace(request, session_id=session_id)
