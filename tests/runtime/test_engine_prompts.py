"""Message boundaries of rendered prompts: equal to the naive definition, for both template families."""

import pytest

from qla_agent.runtime.chat_template import ChatTemplate
from qla_agent.runtime.prompts import Boundary, Renderer
from qla_agent.runtime.tokenizer import Tokenizer
from tests.tokenizer_fixtures import write_tokenizer_files

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Get weather",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
CONVERSATION = [
    {"role": "system", "content": "You are a helpful agent."},
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": "I will check.",
     "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
    {"role": "tool", "content": '{"temp": 18}'},
    {"role": "tool", "content": '{"rain": false}'},
    {"role": "assistant", "content": "Need to think</think>\n\nIt is 18 degrees and dry."},
    {"role": "user", "content": "And tomorrow?"},
]


def _naive(renderer: Renderer, prompt, messages, tools, kwargs) -> tuple[Boundary, ...]:
    out = []
    for i in range(1, len(messages) + 1):
        try:
            prefix = renderer.template.render(messages[:i], tools=tools, add_generation_prompt=False, **kwargs)
        except Exception:
            continue
        ids = renderer.tokenizer.encode(prefix)
        if prompt.text.startswith(prefix) and prompt.tokens[: len(ids)].tolist() == ids:
            out.append(Boundary(len(ids), i))
    return tuple(out)


@pytest.mark.parametrize("family", ["qwen3_5", "qwen3_next"])
@pytest.mark.parametrize("tools", [None, TOOLS], ids=["no-tools", "tools"])
@pytest.mark.parametrize("kwargs", [{}, {"preserve_thinking": True}], ids=["default", "preserve"])
def test_boundaries_equal_the_naive_definition(tmp_path, family, tools, kwargs):
    path = write_tokenizer_files(tmp_path, family)
    renderer = Renderer(ChatTemplate.from_dir(path), Tokenizer.from_dir(path))
    for n in range(2, len(CONVERSATION) + 1):
        messages = CONVERSATION[:n]
        if messages[-1]["role"] == "system":
            continue
        prompt = renderer.render(messages, tools=tools, template_kwargs=kwargs)
        ref = _naive(renderer, prompt, messages, tools, kwargs)
        out = renderer.boundaries(prompt, messages, tools=tools, template_kwargs=kwargs)
        assert out == ref
        assert ref, "every conversation ending in a user or tool turn has at least its last boundary"
        for above in {b.n_tokens for b in ref} | {0, 1, len(prompt) - 1}:
            out = renderer.boundaries(prompt, messages, tools=tools, template_kwargs=kwargs, above=above)
            assert out == tuple(b for b in ref if b.n_tokens >= above)


def test_old_thinking_drop_removes_the_boundary_after_that_answer(tmp_path):
    path = write_tokenizer_files(tmp_path, "qwen3_5")
    renderer = Renderer(ChatTemplate.from_dir(path), Tokenizer.from_dir(path))
    messages = CONVERSATION[1:]
    prompt = renderer.render(messages, tools=None, template_kwargs={})
    counts = [b.n_messages for b in renderer.boundaries(prompt, messages, tools=None, template_kwargs={})]
    # The answer with thinking (message 5 of 6) renders differently once a later question exists.
    assert 5 not in counts and 6 in counts
    prompt = renderer.render(messages, tools=None, template_kwargs={"preserve_thinking": True})
    counts = [b.n_messages for b in renderer.boundaries(prompt, messages, tools=None,
                                                        template_kwargs={"preserve_thinking": True})]
    assert 5 in counts and 6 in counts
