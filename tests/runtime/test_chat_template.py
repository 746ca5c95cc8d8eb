"""ChatTemplate renders exactly what transformers' apply_chat_template renders for the same template and messages."""

import json
from pathlib import Path

import jinja2
import pytest
import transformers

from qla_agent.errors import CheckpointError, ChatTemplateError
from qla_agent.runtime.chat_template import ChatTemplate, detect_tool_format
from tests.tokenizer_fixtures import FAMILY_TEMPLATES, TEMPLATES_DIR, write_tokenizer_files

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
        },
    },
}
WRITE_FILE = {
    "type": "function",
    "function": {
        "name": "write_file",
        "description": "Écrire un fichier — UTF-8 “quoted” 文件",
        "parameters": {
            "type": "object",
            "properties": {
                "path": {"type": "string"},
                "options": {"type": "object"},
                "lines": {"type": "array", "items": {"type": "string"}},
                "overwrite": {"type": "boolean"},
            },
        },
    },
}
TOOLS = [WEATHER, WRITE_FILE]


def _call(name, arguments, wrapped=True):
    return {"type": "function", "function": {"name": name, "arguments": arguments}} if wrapped else {
        "name": name,
        "arguments": arguments,
    }


CONVERSATIONS = {
    "user_only": [{"role": "user", "content": "  Hello there!  "}],
    "system_user": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is 2+2?"},
    ],
    "tool_call_int_arg": [
        {"role": "system", "content": "You are a helpful agent."},
        {"role": "user", "content": "Weather in Paris for 2 days?"},
        {
            "role": "assistant",
            "content": "",
            "reasoning_content": "Need the tool.",
            "tool_calls": [_call("get_weather", {"city": "Paris", "days": 2})],
        },
        {"role": "tool", "content": '{"temp": 18}'},
    ],
    "multi_turn_many_calls": [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "<think>\nGreet back.\n</think>\n\nHello! How can I help?"},
        {"role": "user", "content": "Write two files and check the weather in 東京."},
        {
            "role": "assistant",
            "content": "I will do all three.",
            "reasoning_content": "Three calls: two writes and a weather lookup.",
            "tool_calls": [
                _call("write_file", {"path": "a.txt", "options": {"mode": "w", "n": 1}, "lines": ["x", "y"]}),
                _call("write_file", {"path": "b.txt", "overwrite": True, "lines": [], "options": None}, False),
                _call("get_weather", {"city": "東京", "days": 3}),
            ],
        },
        {"role": "tool", "content": "ok"},
        {"role": "tool", "content": "ok"},
        {"role": "tool", "content": '{"temp": 21, "sky": "晴れ 🌞"}'},
        {"role": "assistant", "content": "Done: both files written; 21 °C and sunny.", "reasoning": "Summarise."},
        {"role": "user", "content": "Thanks!"},
    ],
    "string_arguments_and_none_content": [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [_call("get_weather", '{"city": "Rome"}')]},
        {"role": "tool", "content": "sunny"},
        {"role": "assistant", "content": "<think>Looked it up.</think>It is sunny in Rome."},
    ],
    "multipart_text": [
        {"role": "system", "content": [{"type": "text", "text": "Be brief. "}, {"type": "text", "text": "Be kind."}]},
        {"role": "user", "content": [{"type": "text", "text": "Part one; "}, {"type": "text", "text": "part two."}]},
    ],
}
# The Hermes template (like Qwen3-Next's) inserts string arguments verbatim and reads string content only.
HERMES_SKIP = {"multipart_text"}
KWARGS = {
    "default": {},
    "think_off": {"enable_thinking": False},
    "think_on": {"enable_thinking": True},
    "preserve": {"preserve_thinking": True},
    "preserve_think_off": {"preserve_thinking": True, "enable_thinking": False},
}


@pytest.fixture(scope="module", params=sorted(FAMILY_TEMPLATES))
def family_dir(request, tmp_path_factory) -> tuple[str, Path]:
    return request.param, write_tokenizer_files(tmp_path_factory.mktemp(request.param), request.param)


def _reference(path: Path):
    return transformers.AutoTokenizer.from_pretrained(str(path))


@pytest.mark.parametrize("kwargs_name", sorted(KWARGS))
@pytest.mark.parametrize("tools_name", ["no_tools", "tools"])
@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
def test_render_matches_transformers(family_dir, conversation, tools_name, kwargs_name):
    family, path = family_dir
    if family == "qwen3_next" and conversation in HERMES_SKIP:
        pytest.skip("the Hermes template reads string content only")
    messages, kwargs = CONVERSATIONS[conversation], KWARGS[kwargs_name]
    tools = TOOLS if tools_name == "tools" else None
    ref = _reference(path).apply_chat_template(
        messages, tools=tools, tokenize=False, add_generation_prompt=True, **kwargs
    )
    out = ChatTemplate.from_dir(path).render(messages, tools, **kwargs)
    assert out == ref


@pytest.mark.parametrize("conversation", ["system_user", "multi_turn_many_calls"])
def test_render_without_generation_prompt(family_dir, conversation):
    _, path = family_dir
    messages = CONVERSATIONS[conversation]
    ref = _reference(path).apply_chat_template(messages, tools=TOOLS, tokenize=False, add_generation_prompt=False)
    out = ChatTemplate.from_dir(path).render(messages, TOOLS, add_generation_prompt=False)
    assert out == ref
    assert out.endswith("<|im_end|>\n")


def test_qwen3_5_template_rules(tmp_path):
    """Spot-check the test template itself against model_spec.md §4.2, independently of transformers."""
    template = ChatTemplate.from_dir(write_tokenizer_files(tmp_path, "qwen3_5"))
    messages = CONVERSATIONS["multi_turn_many_calls"][:-1]
    out = template.render(messages, TOOLS, enable_thinking=False)
    assert out.index("</IMPORTANT>") < out.index("<|im_start|>user\nHi<|im_end|>")
    # Thinking of turns before the last user query is dropped, later turns keep it.
    assert "Greet back." not in out
    assert "<think>\nThree calls: two writes and a weather lookup.\n</think>\n\nI will do all three." in out
    assert "<parameter=options>\n{\"mode\": \"w\", \"n\": 1}\n</parameter>" in out
    assert "<parameter=overwrite>\nTrue\n</parameter>" in out
    assert "<parameter=city>\n東京\n</parameter>" in out
    assert out.count("<|im_start|>user\n<tool_response>") == 1
    assert out.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    preserved = template.render(messages, TOOLS, preserve_thinking=True)
    assert "<think>\nGreet back.\n</think>\n\nHello! How can I help?" in preserved
    assert preserved.endswith("<|im_start|>assistant\n<think>\n")


FEATURES_TEMPLATE = """{% set ns = namespace(n=0) %}{% set d = dict(a=1, b=[2, 3]) %}
{{ bos_token or 'NOBOS' }}|{{ eos_token }}|{{ custom_token }}|{{ d | tojson }}|{{ d | tojson(indent=2) }}|
{{ {'k': '<é>'} | tojson(separators=(',', ':'), sort_keys=true) }}|{{ messages[0] | tojson }}
{% for m in messages %}
    {% if loop.index > 3 %}
        {% break %}
    {% endif %}
    {% generation %}{{ m.role }}:{{ m.content }} name={{ m.name is defined }}{% endgeneration %}

    {% set ns.n = ns.n + 1 %}
{% endfor %}
{{ ns.n }} {{ strftime_now('%Y') | length }} {{ extra | tojson }} {{ documents is none }}
"""


def test_environment_features_match_transformers(tmp_path):
    """Whitespace control, filters, globals, extensions, special tokens and message preparation."""
    write_tokenizer_files(tmp_path, "qwen3_5")
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config.update(custom_token="<c>")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    (tmp_path / "chat_template.jinja").write_text(FEATURES_TEMPLATE)
    messages = [
        {"role": "user", "content": "one <b>&</b>", "thinking": "hm"},
        {"role": "assistant", "content": "two", "name": None},
        {"role": "user", "content": "three", "name": "bob"},
        {"role": "user", "content": "four"},
    ]
    extra = {"x": (1, "ü")}
    ref = _reference(tmp_path).apply_chat_template(messages, tokenize=False, extra=extra)
    out = ChatTemplate.from_dir(tmp_path).render(messages, add_generation_prompt=False, extra=extra)
    assert out == ref
    assert '"reasoning_content": "hm"' in out and "<b>&</b>" in out and "|<c>|" in out


def test_continue_final_message_matches_transformers(family_dir):
    _, path = family_dir
    messages = [{"role": "user", "content": "Count to 3."}, {"role": "assistant", "content": "1, 2,"}]
    ref = _reference(path).apply_chat_template(messages, tokenize=False, continue_final_message=True)
    out = ChatTemplate.from_dir(path).render(messages, add_generation_prompt=False, continue_final_message=True)
    assert out == ref
    assert out.endswith("1, 2,")


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "assistant", "content": "no query"}],
        [{"role": "user", "content": "hi"}, {"role": "system", "content": "late"}],
        [{"role": "user", "content": "hi"}, {"role": "critic", "content": "?"}],
    ],
    ids=["no_user_query", "late_system", "bad_role"],
)
def test_raise_exception_message(tmp_path, messages):
    path = write_tokenizer_files(tmp_path, "qwen3_5")
    with pytest.raises(jinja2.TemplateError) as ref:
        _reference(path).apply_chat_template(messages, tokenize=False)
    with pytest.raises(ChatTemplateError) as out:
        ChatTemplate.from_dir(path).render(messages)
    assert str(out.value) == ref.value.message


@pytest.mark.parametrize(
    "template",
    ["{{ messages.append(1) }}", "{% set ns = namespace() %}{% set ns._x = 1 %}", "{{ ''.__class__.__mro__ }}"],
    ids=["mutate_list", "namespace_underscore", "dunder"],
)
def test_sandbox_refuses(template):
    with pytest.raises(ChatTemplateError, match="failed"):
        ChatTemplate(template).render([{"role": "user", "content": "x"}])


def test_syntax_error_names_template():
    with pytest.raises(ChatTemplateError, match="'default' does not compile"):
        ChatTemplate("{% if %}")


def test_named_templates_from_tokenizer_config(tmp_path):
    templates = [
        {"name": "default", "template": "{{ 'D:' + messages[0].content }}"},
        {"name": "tool_use", "template": "{{ 'T:' + (tools | length | string) + messages[0].content }}"},
    ]
    write_tokenizer_files(tmp_path, "qwen3_5")
    (tmp_path / "chat_template.jinja").unlink()
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": templates}))
    reference, template = _reference(tmp_path), ChatTemplate.from_dir(tmp_path)
    messages = [{"role": "user", "content": "x"}]
    for tools in (None, [WEATHER]):
        ref = reference.apply_chat_template(messages, tools=tools, tokenize=False)
        assert template.render(messages, tools) == ref
    assert template.render(messages, [WEATHER]) == "T:1x"


def test_template_files_win_over_config(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "config"}))
    (tmp_path / "chat_template.jinja").write_text("file")
    (tmp_path / "additional_chat_templates").mkdir()
    (tmp_path / "additional_chat_templates" / "tool_use.jinja").write_text("tool file")
    template = ChatTemplate.from_dir(tmp_path)
    assert template.render([{"role": "user", "content": "x"}]) == "file"
    assert template.render([{"role": "user", "content": "x"}], tools=[]) == "tool file"


def test_missing_template_names_files(tmp_path):
    with pytest.raises(CheckpointError, match="chat_template.jinja"):
        ChatTemplate.from_dir(tmp_path)


@pytest.mark.parametrize(
    ("file", "expected"),
    [(FAMILY_TEMPLATES["qwen3_5"], "qwen_xml"), (FAMILY_TEMPLATES["qwen3_next"], "hermes")],
)
def test_tool_format_of_test_templates(file, expected):
    assert ChatTemplate((TEMPLATES_DIR / file).read_text()).tool_format == expected


def test_tool_format_none_without_tool_calls():
    plain = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    assert detect_tool_format(plain) is None
    assert ChatTemplate(plain).tool_format is None


def test_template_string_in_tokenizer_config(tmp_path):
    write_tokenizer_files(tmp_path, "qwen3_next")
    source = (tmp_path / "chat_template.jinja").read_text()
    (tmp_path / "chat_template.jinja").unlink()
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": source}))
    messages = CONVERSATIONS["tool_call_int_arg"]
    ref = _reference(tmp_path).apply_chat_template(messages, tools=TOOLS, tokenize=False, add_generation_prompt=True)
    assert ChatTemplate.from_dir(tmp_path).render(messages, TOOLS) == ref


def test_processor_chat_template_json_fallback(tmp_path):
    (tmp_path / "chat_template.json").write_text(json.dumps({"chat_template": "{{ messages[0].content }}!"}))
    assert ChatTemplate.from_dir(tmp_path).render([{"role": "user", "content": "hi"}]) == "hi!"
