"""Tool-call parsers: model output (Qwen XML or Hermes JSON calls, `<think>` reasoning) to OpenAI messages.

Use `parser_for(template.tool_format, request_tools, starts_in_reasoning=opens_reasoning(prompt))`,
then `.parse(text)` for a whole completion or `.stream()` for deltas while it is generated.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from qla_agent.tools.parsers.calls import ToolSchemas
from qla_agent.tools.parsers.stream import THINK_CLOSE, THINK_OPEN, StreamParser
from qla_agent.tools.parsers.types import (
    ContentDelta,
    Delta,
    ParsedMessage,
    ReasoningDelta,
    ToolCall,
    ToolCallDelta,
    merge_deltas,
    new_call_id,
)

TOOL_FORMATS = ("qwen_xml", "hermes")

__all__ = [
    "TOOL_FORMATS",
    "ContentDelta",
    "Delta",
    "ParsedMessage",
    "ReasoningDelta",
    "StreamParser",
    "ToolCall",
    "ToolCallDelta",
    "ToolCallParser",
    "merge_deltas",
    "new_call_id",
    "opens_reasoning",
    "parser_for",
]


class ToolCallParser:
    """Parses completions of one request: its tools' schemas, its format, whether the prompt opened <think>."""

    def __init__(
        self,
        tools: Sequence[Mapping[str, Any]] | None = None,
        *,
        tool_format: str | None = "qwen_xml",
        starts_in_reasoning: bool = False,
        calls_in_reasoning: bool = False,
        new_id: Callable[[], str] = new_call_id,
    ):
        if tool_format is not None and tool_format not in TOOL_FORMATS:
            raise ValueError(f"unknown tool_format {tool_format!r}; use one of {TOOL_FORMATS} or None")
        self.tool_format = tool_format
        self.starts_in_reasoning = starts_in_reasoning
        self.calls_in_reasoning = calls_in_reasoning
        self._schemas = ToolSchemas(tools)
        self._new_id = new_id

    def stream(self) -> StreamParser:
        """A fresh incremental parser for one completion."""
        return StreamParser(
            self._schemas,
            parse_calls=self.tool_format is not None,
            starts_in_reasoning=self.starts_in_reasoning,
            new_id=self._new_id,
            calls_in_reasoning=self.calls_in_reasoning,
        )

    def parse(self, text: str) -> ParsedMessage:
        """Parse a whole completion (the same result as streaming it in any chunks)."""
        stream = self.stream()
        return merge_deltas(stream.feed(text) + stream.finish())


def parser_for(
    tool_format: str | None,
    tools: Sequence[Mapping[str, Any]] | None = None,
    *,
    starts_in_reasoning: bool = False,
    calls_in_reasoning: bool = False,
    new_id: Callable[[], str] = new_call_id,
) -> ToolCallParser:
    """The parser for a chat template's `tool_format` ("qwen_xml", "hermes", or None: reasoning only).

    `tools` is the request's OpenAI tools list: it gives the schemas that coerce XML values and
    flags unknown tools and missing arguments; None accepts any tool and keeps values as strings.
    `calls_in_reasoning` (off by default) lets a call inside `<think>` end the reasoning and count.
    """
    return ToolCallParser(
        tools, tool_format=tool_format, starts_in_reasoning=starts_in_reasoning,
        calls_in_reasoning=calls_in_reasoning, new_id=new_id,
    )


def opens_reasoning(prompt: str) -> bool:
    """True when a rendered prompt's last turn opened `<think>` without closing it (output starts in reasoning)."""
    turn = prompt[max(prompt.rfind("<|im_start|>"), 0) :]
    return turn.rfind(THINK_OPEN) > turn.rfind(THINK_CLOSE)
