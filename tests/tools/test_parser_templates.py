"""Round trip through the real chat templates: a call rendered into history parses back to itself."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qla_agent.runtime.chat_template import ChatTemplate
from qla_agent.tools.parsers import opens_reasoning, parser_for
from tests.tools.corpus import TOOLS

TEMPLATES = Path(__file__).resolve().parents[1] / "data" / "templates"
ARGS = [
    ("get_weather", {"city": "São Paulo", "days": 3, "units": "c"}),
    ("configure", {"enabled": True, "ratio": 0.5, "tags": ["a", "b c"], "options": {"k": [1, None]},
                   "note": None, "level": 3}),
    ("write_file", {"path": "src/a.py", "content": "\ndef f():\n    return '</parameter>'\n"}),
]


def _assistant_turn(rendered: str) -> str:
    """The text of the last assistant turn (what the model generated), without <|im_end|>."""
    start = rendered.rindex("<|im_start|>assistant\n") + len("<|im_start|>assistant\n")
    return rendered[start : rendered.index("<|im_end|>", start)]


@pytest.mark.parametrize("template_file", ["qwen3_5.jinja", "qwen3_next_hermes.jinja"])
def test_rendered_calls_parse_back(template_file):
    template = ChatTemplate((TEMPLATES / template_file).read_text(encoding="utf-8"))
    calls = [{"id": f"call_{i}", "type": "function", "function": {"name": n, "arguments": a}}
             for i, (n, a) in enumerate(ARGS)]
    if template.tool_format == "hermes":
        # Qwen3-Next's template inserts arguments verbatim, so clients send them as JSON text.
        for call in calls:
            call["function"]["arguments"] = json.dumps(call["function"]["arguments"])
    messages = [
        {"role": "user", "content": "Do three things."},
        {"role": "assistant", "content": "On it.", "reasoning_content": "Three calls.", "tool_calls": calls},
    ]
    rendered = template.render(messages, tools=TOOLS, add_generation_prompt=False)
    out = parser_for(template.tool_format, TOOLS).parse(_assistant_turn(rendered))
    assert out.content == "On it."
    assert [(c.name, json.loads(c.arguments), c.error) for c in out.tool_calls] == [(n, a, None) for n, a in ARGS]


@pytest.mark.parametrize(("template_file", "kwargs", "ref"), [
    ("qwen3_5.jinja", {}, True),
    ("qwen3_5.jinja", {"enable_thinking": False}, False),
])
def test_generation_prompt_reasoning_state(template_file, kwargs, ref):
    template = ChatTemplate((TEMPLATES / template_file).read_text(encoding="utf-8"))
    prompt = template.render([{"role": "user", "content": "hi"}], tools=TOOLS, **kwargs)
    assert opens_reasoning(prompt) is ref
