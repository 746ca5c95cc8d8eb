"""The tools package's parser, set up for one request: its tools, the template's format, `<think>` state."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any, Protocol

from qla_agent.server.convert import ChatPlan
from qla_agent.tools.parsers import Delta, ParsedMessage, opens_reasoning, parser_for

_PROBE = ({"role": "user", "content": "."},)


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


def output_parser(engine: Any, plan: ChatPlan) -> RequestParser:
    """The parser for a planned request: tool calls only when the policy parses them."""
    tool_format = engine.tool_format if plan.policy.parse else None
    kwargs_json = json.dumps(plan.template_kwargs, sort_keys=True, default=str)
    starts = starts_in_reasoning(engine.template, kwargs_json)
    return RequestParser(tool_format, plan.tools, starts_in_reasoning=starts)


@lru_cache(maxsize=64)
def starts_in_reasoning(template: Any, kwargs_json: str) -> bool:
    """Whether the template's generation prompt (with these kwargs) leaves `<think>` open."""
    prompt = template.render(list(_PROBE), None, add_generation_prompt=True, **json.loads(kwargs_json))
    return opens_reasoning(prompt)
