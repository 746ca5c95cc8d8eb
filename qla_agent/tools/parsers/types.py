"""Records a tool-call parser produces: the parsed message, its tool calls and streaming deltas."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


def new_call_id() -> str:
    """A fresh OpenAI-style tool-call id (`call_` + 24 hex digits)."""
    return "call_" + uuid.uuid4().hex[:24]


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One tool call; `arguments` is a JSON string as OpenAI sends it, `error` says why it must not run."""

    id: str
    name: str
    arguments: str
    error: str | None = None

    def to_openai(self, *, include_error: bool = False) -> dict[str, Any]:
        """The call as an entry of an OpenAI assistant message's `tool_calls`."""
        out: dict[str, Any] = {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }
        if include_error and self.error is not None:
            out["error"] = self.error
        return out


@dataclass(frozen=True, slots=True)
class ParsedMessage:
    """A model completion split into visible content, reasoning and tool calls."""

    content: str
    reasoning_content: str | None
    tool_calls: tuple[ToolCall, ...] = ()

    @property
    def valid_calls(self) -> tuple[ToolCall, ...]:
        """Calls without an error: the ones a client may execute."""
        return tuple(c for c in self.tool_calls if c.error is None)

    def to_openai(self, *, include_errors: bool = False) -> dict[str, Any]:
        """The message as an OpenAI assistant message (`content` is None when empty and calls exist)."""
        msg: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.tool_calls:
            msg["content"] = self.content or None
            msg["tool_calls"] = [c.to_openai(include_error=include_errors) for c in self.tool_calls]
        if self.reasoning_content is not None:
            msg["reasoning_content"] = self.reasoning_content
        return msg


@dataclass(frozen=True, slots=True)
class ContentDelta:
    """A piece of visible content."""

    text: str

    def to_openai(self) -> dict[str, Any]:
        """As the `delta` of an OpenAI chat.completion.chunk choice."""
        return {"content": self.text}


@dataclass(frozen=True, slots=True)
class ReasoningDelta:
    """A piece of reasoning (the text inside `<think>...</think>`)."""

    text: str

    def to_openai(self) -> dict[str, Any]:
        """As the `delta` of an OpenAI chat.completion.chunk choice."""
        return {"reasoning_content": self.text}


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A piece of tool call `index`: the first carries id and name, later ones argument text or an error."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""
    error: str | None = None

    def to_openai(self, *, include_error: bool = False) -> dict[str, Any]:
        """As the `delta` of an OpenAI chat.completion.chunk choice."""
        call: dict[str, Any] = {"index": self.index}
        function: dict[str, Any] = {"arguments": self.arguments}
        if self.id is not None:
            call["id"] = self.id
            call["type"] = "function"
            function["name"] = self.name
        call["function"] = function
        if include_error and self.error is not None:
            call["error"] = self.error
        return {"tool_calls": [call]}


Delta = ContentDelta | ReasoningDelta | ToolCallDelta


def merge_deltas(deltas: Iterable[Delta]) -> ParsedMessage:
    """Concatenate streamed deltas into the message they describe (what a client reassembles)."""
    content: list[str] = []
    reasoning: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    for delta in deltas:
        if isinstance(delta, ContentDelta):
            content.append(delta.text)
        elif isinstance(delta, ReasoningDelta):
            reasoning.append(delta.text)
        else:
            call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": [], "error": None})
            if delta.id is not None:
                call["id"], call["name"] = delta.id, delta.name or ""
            call["arguments"].append(delta.arguments)
            if delta.error is not None:
                call["error"] = delta.error
    tool_calls = tuple(
        ToolCall(id=c["id"], name=c["name"], arguments="".join(c["arguments"]), error=c["error"])
        for _, c in sorted(calls.items())
    )
    return ParsedMessage(
        content="".join(content), reasoning_content="".join(reasoning) or None, tool_calls=tool_calls
    )
