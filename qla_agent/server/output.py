"""The answer's shape for one request: the start that forces a tool call, and the tools package's
parser set up with the request's tools, the template's format and its `<think>` state."""

from __future__ import annotations

import dataclasses
import json
from functools import lru_cache
from typing import Any, Protocol

from qla_agent.server.convert import ChatPlan, ToolPolicy
from qla_agent.tools.parsers import TOOL_FORMATS, Delta, ParsedMessage, opens_reasoning, parser_for
from qla_agent.tools.parsers.calls import TOOL_OPEN

_PROBE = ({"role": "user", "content": "."},)
# Ends an open `<think>` the way the templates render an empty reasoning: `<think>\n\n</think>\n\n`.
CLOSE_REASONING = "\n</think>\n\n"


class OutputParser(Protocol):
    """What the chat route needs of a parser: whole-text parse and incremental feed/finish."""

    def parse(self, text: str) -> ParsedMessage: ...

    def feed(self, chunk: str) -> list[Delta]: ...

    def finish(self) -> list[Delta]: ...


class RequestParser:
    """One request's parser: `parse` for a whole completion, `feed`/`finish` while streaming."""

    def __init__(self, tool_format: str | None, tools: list[dict[str, Any]] | None, *,
                 starts_in_reasoning: bool) -> None:
        self._parser = parser_for(tool_format, tools, starts_in_reasoning=starts_in_reasoning)
        self._stream = self._parser.stream()

    def parse(self, text: str) -> ParsedMessage:
        return self._parser.parse(text)

    def feed(self, chunk: str) -> list[Delta]:
        return self._stream.feed(chunk)

    def finish(self) -> list[Delta]:
        return self._stream.finish()


def call_prefix(policy: ToolPolicy, tool_format: str | None) -> str:
    """The start of an answer that leaves the model no choice but a tool call ("" when none is forced).

    `required`: `<tool_call>\\n`; a named function also names it: `<function=NAME>\\n` (qwen_xml) or
    `{"name": "NAME", "arguments": ` (hermes). Templates without a tool format force nothing.
    """
    if policy.mode not in ("required", "named") or tool_format not in TOOL_FORMATS:
        return ""
    if policy.mode == "required":
        return TOOL_OPEN + "\n"
    if tool_format == "qwen_xml":
        return f"{TOOL_OPEN}\n<function={policy.name}>\n"
    return f'{TOOL_OPEN}\n{{"name": {json.dumps(policy.name)}, "arguments": '


def shape_output(engine: Any, plan: ChatPlan) -> tuple[ChatPlan, RequestParser]:
    """The plan with a forced tool call started, and the parser for its answer.

    For tool_choice "required" or a named function the answer is started by `call_prefix`; when the
    generation prompt leaves `<think>` open, the prefix closes it first: a forced call skips the
    reasoning (the engine cannot insert the call after reasoning the model writes). The parser reads
    tool calls only when the policy parses them.
    """
    starts = starts_in_reasoning(engine.template, _kwargs_json(plan))
    prefix = call_prefix(plan.policy, engine.tool_format)
    if prefix:
        if starts:
            prefix = CLOSE_REASONING + prefix
        plan = dataclasses.replace(plan, request=dataclasses.replace(plan.request, assistant_prefix=prefix))
    tool_format = engine.tool_format if plan.policy.parse else None
    return plan, RequestParser(tool_format, plan.tools, starts_in_reasoning=starts)


def _kwargs_json(plan: ChatPlan) -> str:
    return json.dumps(plan.template_kwargs, sort_keys=True, default=str)


@lru_cache(maxsize=64)
def starts_in_reasoning(template: Any, kwargs_json: str) -> bool:
    """Whether the template's generation prompt (with these kwargs) leaves `<think>` open."""
    prompt = template.render(list(_PROBE), None, add_generation_prompt=True, **json.loads(kwargs_json))
    return opens_reasoning(prompt)
