"""Tool-call parsers: model output (Qwen XML or Hermes JSON calls, `<think>` reasoning) to OpenAI messages.

Use `parser_for(template.tool_format, request_tools, starts_in_reasoning=opens_reasoning(prompt))`,
then `.parse(text)` for a whole completion or `.stream()` for deltas while it is generated.
`parse` is `stream` fed the whole text, so both give the same message for any chunking.

Malformed output never raises. The rule for each case (details in stream.py, qwen_xml.py, hermes.py):
- `<tool_call>` not followed by `<function=` or `{`, or a `<function=` name that runs into a
  newline or the end of output, or a JSON body that does not parse and names no tool: text.
- Output ending inside a call whose name was read: the call, with the arguments read so far and
  an error saying it was truncated.
- Invalid JSON after a readable `"name"`: the call, arguments `{}`, error "invalid JSON ...".
- Unknown tool, missing required argument, a value its schema cannot take, an argument given
  twice: the call, with an error naming the problem.
A call with `error` set must not be run; the agent loop sends the error back as the tool result
(`ToolRegistry.run_call` does this).
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
