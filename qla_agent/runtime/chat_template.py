"""A checkpoint's Jinja chat template, rendered the way transformers' `apply_chat_template` renders it.

Reproduces transformers 5.23 (`utils/chat_template_utils.py`): the sandboxed environment and its globals
and filters, template selection, message preparation and `continue_final_message`. Not reproduced:
Python functions as tools (pass JSON schemas), `sanitize_control_tokens` and assistant-token masks.
"""

import dataclasses
import json
import logging
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from qla_agent.errors import CheckpointError, ChatTemplateError
from qla_agent.runtime.tokenizer import read_json, special_tokens_map

logger = logging.getLogger(__name__)

ToolFormat = Literal["qwen_xml", "hermes"]
# Names a message's reasoning may come under; templates read the first (transformers fills it from the others).
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")
_CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "
_HERMES_CALL = re.compile(r'<tool_call>(?:\\n|\n)\{|"arguments"')


class _TemplateRaised(jinja2.TemplateError):
    """What the template's raise_exception(message) throws."""


def _raise_exception(message: str) -> None:
    raise _TemplateRaised(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None, sort_keys: bool = False):
    # Unlike Jinja's own tojson: no HTML escaping, non-ASCII kept, options exposed (transformers' filter).
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


class _TemplateDict:
    """`dict(...)` inside templates without exposing the dict type itself."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict:
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
    """Jinja's namespace() refusing underscore-prefixed attribute names (a sandbox escape route)."""

    def __init__(*args: Any, **kwargs: Any) -> None:
        # Same signature trick as Jinja's Namespace, so that namespace(self=...) works.
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"chat templates cannot set attribute {name!r} on a namespace")


class _GenerationTag(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` (assistant-mask markers): renders its body unchanged."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render_body"), [], [], body).set_lineno(lineno)

    def _render_body(self, caller: Any) -> str:
        return caller()


def _environment() -> ImmutableSandboxedEnvironment:
    """The Jinja environment transformers 5.23 renders chat templates in."""
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = _TemplateNamespace
    return env


def plain_data(value: Any) -> Any:
    """Rebuild `value` from plain JSON types (what templates may see); other objects become "<TypeName>"."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {plain_data(k): plain_data(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain_data(v) for v in value]
    if isinstance(value, tuple):
        return tuple(plain_data(v) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain_data(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if callable(getattr(value, "model_dump", None)):
        return plain_data(value.model_dump())
    return f"<{type(value).__name__}>"


def _prepare_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Drop None-valued keys, convert to plain data and alias reasoning fields, as apply_chat_template does."""
    if not messages:
        raise ChatTemplateError("cannot render an empty conversation; pass at least one message")
    prepared = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ChatTemplateError(f"message {i} is a {type(message).__name__}, expected a dict with a 'role'")
        message = plain_data({k: v for k, v in message.items() if v is not None})
        reasoning = next((message[k] for k in _REASONING_FIELDS if message.get(k) is not None), None)
        if reasoning is not None:
            message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
        prepared.append(message)
    return prepared


def _mark_continuation(messages: list[dict[str, Any]], source: str) -> str:
    """Append the continuation tag to the final message's content; return the text to continue."""
    final = messages[-1].get("content")
    if final is None:
        raise ChatTemplateError("continue_final_message is set but the final message has no content")
    if "content" not in source:
        raise ChatTemplateError("continue_final_message is set but the template never reads 'content'")
    if isinstance(final, (list, tuple)):
        for block in reversed(final):
            if "text" in block:
                text = block["text"]
                block["text"] = text + _CONTINUE_TAG
                return text
        raise ChatTemplateError("continue_final_message is set but the final message has no text part")
    messages[-1]["content"] = final + _CONTINUE_TAG
    return final


def _cut_continuation(rendered: str, final: str) -> str:
    """Cut the rendering right after the final message's text (drop the turn's closing markup)."""
    tag = _CONTINUE_TAG.strip()
    if final.strip() not in rendered or tag not in rendered:
        raise ChatTemplateError("continue_final_message is set but the template drops part of the final message")
    at = rendered.rindex(tag)
    if rendered[at : at + len(_CONTINUE_TAG)] == _CONTINUE_TAG:
        return rendered[:at]
    return rendered[:at].rstrip()


def detect_tool_format(source: str) -> ToolFormat | None:
    """Tool-call syntax a template teaches: Qwen XML (`<function=`), Hermes JSON, or None."""
    if "<function=" in source:
        return "qwen_xml"
    if "<tool_call>" in source and _HERMES_CALL.search(source):
        return "hermes"
    return None


def _load_templates(path: Path, tokenizer_config: Mapping[str, Any]) -> dict[str, str]:
    """Templates of a checkpoint folder by name, found where transformers looks for them."""
    templates: dict[str, str] = {}
    if (path / "chat_template.jinja").is_file():
        templates["default"] = (path / "chat_template.jinja").read_text(encoding="utf-8")
    extra_dir = path / "additional_chat_templates"
    if extra_dir.is_dir():
        for file in sorted(extra_dir.glob("*.jinja")):
            templates[file.name.removesuffix(".jinja")] = file.read_text(encoding="utf-8")
    if templates:
        # Template files take priority over tokenizer_config.json entries, as in transformers.
        return templates
    configured = tokenizer_config.get("chat_template")
    if configured is None:
        # Processor-level file of older multimodal checkpoints.
        configured = read_json(path / "chat_template.json").get("chat_template")
        logger.debug("%s: chat template from chat_template.json: %s", path, configured is not None)
    if isinstance(configured, str):
        return {"default": configured}
    if isinstance(configured, list):
        try:
            return {entry["name"]: entry["template"] for entry in configured}
        except (TypeError, KeyError) as e:
            raise CheckpointError(f"chat_template list in {path} needs 'name' and 'template' in each entry") from e
    raise CheckpointError(
        f"{path} has no chat template: expected chat_template.jinja or 'chat_template' in tokenizer_config.json"
    )


class ChatTemplate:
    """A model's chat template(s), compiled once; `render` gives what apply_chat_template(tokenize=False) gives."""

    __slots__ = ("templates", "special_tokens", "_compiled")

    def __init__(self, template: str | Mapping[str, str], *, special_tokens: Mapping[str, str] | None = None) -> None:
        self.templates: dict[str, str] = {"default": template} if isinstance(template, str) else dict(template)
        # Named special tokens (bos_token, eos_token, ...) that transformers passes to every rendering.
        self.special_tokens: dict[str, str] = dict(special_tokens or {})
        env = _environment()
        self._compiled: dict[str, jinja2.Template] = {}
        for name, source in self.templates.items():
            try:
                self._compiled[name] = env.from_string(source)
            except jinja2.TemplateSyntaxError as e:
                raise ChatTemplateError(f"chat template {name!r} does not compile: {e.message} (line {e.lineno})") from e

    @classmethod
    def from_dir(cls, path: str | Path) -> "ChatTemplate":
        """Load chat_template.jinja (+ additional_chat_templates/) or tokenizer_config.json's chat_template."""
        path = Path(path)
        tokenizer_config = read_json(path / "tokenizer_config.json")
        return cls(_load_templates(path, tokenizer_config), special_tokens=special_tokens_map(tokenizer_config))

    def _pick(self, tools: object | None) -> str:
        """Name of the template transformers would use (tool_use when tools are given, else default)."""
        if tools is not None and "tool_use" in self.templates:
            return "tool_use"
        if "default" in self.templates:
            return "default"
        raise ChatTemplateError(f"no 'default' chat template among {sorted(self.templates)}; name one 'default'")

    @property
    def source(self) -> str:
        """Text of the template used when tools are given."""
        return self.templates[self._pick(tools=())]

    @property
    def tool_format(self) -> ToolFormat | None:
        """Tool-call syntax the template teaches: "qwen_xml", "hermes" or None."""
        return detect_tool_format(self.source)

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]] | None = None,
        add_generation_prompt: bool = True,
        *,
        continue_final_message: bool = False,
        documents: Sequence[Mapping[str, Any]] | None = None,
        **kwargs: Any,
    ) -> str:
        """Render a conversation; kwargs (enable_thinking, preserve_thinking, ...) reach the template."""
        if continue_final_message and add_generation_prompt:
            raise ChatTemplateError("continue_final_message and add_generation_prompt cannot both be set")
        name = self._pick(tools)
        if tools is not None:
            bad = [i for i, tool in enumerate(tools) if not isinstance(tool, Mapping)]
            if bad:
                raise ChatTemplateError(f"tools {bad} are not JSON-schema dicts")
        chat = _prepare_messages(messages)
        final = _mark_continuation(chat, self.templates[name]) if continue_final_message else None
        template_kwargs = plain_data({**self.special_tokens, **kwargs})
        try:
            rendered = self._compiled[name].render(
                messages=chat,
                tools=plain_data(tools),
                documents=plain_data(documents),
                add_generation_prompt=add_generation_prompt,
                **template_kwargs,
            )
        except _TemplateRaised as e:
            raise ChatTemplateError(e.message or str(e)) from e
        except (jinja2.TemplateError, TypeError, ValueError, LookupError, AttributeError) as e:
            raise ChatTemplateError(f"chat template {name!r} failed: {type(e).__name__}: {e}") from e
        return _cut_continuation(rendered, final) if final is not None else rendered
