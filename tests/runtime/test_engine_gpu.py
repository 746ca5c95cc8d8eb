"""The engine on CUDA: batched decode == alone, reuse == from scratch, idle sessions to CPU and back."""

import asyncio

import pytest
import torch

from qla_agent.runtime.chat_template import ChatTemplate
from qla_agent.runtime.engine import Engine, EngineSettings
from qla_agent.runtime.loader import load_model
from qla_agent.runtime.requests import ChatRequest, SamplingParams
from qla_agent.runtime.tokenizer import Tokenizer
from tests.runtime.engine_setup import APPEND_ONLY, Tiny, chat, from_scratch, greedy, run
from tests.tiny_models import write_tiny_checkpoint

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def tiny_cuda(tmp_path_factory) -> Tiny:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    path = write_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "qwen3_5", "qwen3_5", seed=3)
    model = load_model(path, device="cuda", dtype=torch.float32, progress=False)
    return Tiny(path, model, Tokenizer.from_dir(path), ChatTemplate.from_dir(path))


def _engine(tiny: Tiny, **settings) -> Engine:
    return Engine(tiny.model, tiny.tokenizer, tiny.template, settings=EngineSettings(**settings))


def test_cuda_conversation_reuses_state_and_matches_from_scratch(tiny_cuda):
    params = greedy(6, logit_bias=tiny_cuda.digit_bias())

    async def main():
        engine = _engine(tiny_cuda)
        await engine.start()
        history, sid = [], None
        for k in range(4):
            user = {"role": "user", "content": f"Question {k}?"}
            _, fin = await chat(engine, ChatRequest([user], sampling=params, session_id=sid, template_kwargs=APPEND_ONLY))
            assert list(fin.token_ids) == from_scratch(tiny_cuda, [*history, user], params, template_kwargs=APPEND_ONLY)
            sid = fin.session_id
            history += [user, {"role": "assistant", "content": fin.text}]
        stats = engine.stats()
        await engine.stop()
        text = tiny_cuda.template.render(history, add_generation_prompt=False, **APPEND_ONLY)
        assert stats.prefill_tokens_computed + stats.decode_tokens == len(tiny_cuda.tokenizer.encode(text))

    run(main())


def test_cuda_eight_sessions_together_equal_alone_and_idle_ones_leave_the_gpu(tiny_cuda, tmp_path):
    requests = [ChatRequest([{"role": "user", "content": f"Topic {i}, tell me more."}],
                            sampling=SamplingParams(temperature=0.8, seed=i, max_tokens=12 + i)) for i in range(8)]

    async def main():
        alone_engine = _engine(tiny_cuda)
        await alone_engine.start()
        alone = [(await chat(alone_engine, r))[1] for r in requests]
        await alone_engine.stop()
        engine = _engine(tiny_cuda, max_device_sessions=2, sessions_dir=tmp_path)
        await engine.start()
        together = [fin for _, fin in await asyncio.gather(*(chat(engine, r) for r in requests))]
        locations = sorted(i.location for i in await engine.sessions.list())
        # Back on the GPU on use, continuing where it stopped.
        follow = ChatRequest([{"role": "user", "content": "Go on."}], session_id=together[0].session_id,
                             sampling=greedy(4))
        _, fin = await chat(engine, follow)
        await engine.stop()
        return alone, together, locations, fin

    alone, together, locations, fin = run(main())
    assert [f.token_ids for f in together] == [f.token_ids for f in alone]
    assert locations.count("cpu") == 6 and locations.count("cuda:0") == 2
    assert fin.usage.cached_tokens > 0
