"""The engine's raw completion text → OpenAI message, stream deltas and finish reason.

Parsing (reasoning and tool-call markup) is the tools package's job; this module applies the
request's tool policy to what the parser found and writes the OpenAI wire objects.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from qla_agent import __version__
from qla_agent.runtime.requests import Finished, Usage
from qla_agent.server.convert import ToolPolicy
from qla_agent.server.errors import ApiError, error_body
from qla_agent.tools.parsers.types import Delta, ParsedMessage, ToolCall, ToolCallDelta

FINGERPRINT = f"qla-agent-{__version__}"
DONE = b"data: [DONE]\n\n"


class CallFilter:
    """Keeps the tool calls the policy allows (the named function; only the first without
    parallel calls) and renumbers the kept ones 0, 1, ... in the order they start."""

    def __init__(self, policy: ToolPolicy) -> None:
        self.policy = policy
        self.kept = 0
        self._index: dict[int, int | None] = {}

    def _admit(self, name: str | None) -> bool:
        if self.policy.mode == "named" and name != self.policy.name:
            return False
        return self.policy.parallel or self.kept == 0

    def deltas(self, deltas: list[Delta]) -> list[Delta]:
        """Filter streamed deltas; a call is kept or dropped as a whole, decided by its first delta."""
        out: list[Delta] = []
        for delta in deltas:
            if not isinstance(delta, ToolCallDelta):
                out.append(delta)
                continue
            if delta.index not in self._index:
                keep = self._admit(delta.name)
                self._index[delta.index] = self.kept if keep else None
                self.kept += keep
            index = self._index[delta.index]
            if index is not None:
                out.append(dataclasses.replace(delta, index=index))
        return out

    def message(self, parsed: ParsedMessage) -> ParsedMessage:
        """Filter the calls of a fully parsed message."""
        calls: list[ToolCall] = []
        for call in parsed.tool_calls:
            if self._admit(call.name):
                calls.append(call)
                self.kept += 1
        return dataclasses.replace(parsed, tool_calls=tuple(calls))


def finish_reason(finished: Finished, *, has_calls: bool) -> str:
    """OpenAI's finish_reason; engine errors and cancellations become an ApiError instead."""
    if finished.finish_reason == "length":
        return "length"
    if finished.finish_reason == "stop":
        return "tool_calls" if has_calls else "stop"
    if finished.finish_reason == "cancelled":
        raise ApiError(503, "the generation was cancelled (the server is shutting down); retry",
                       code="cancelled")
    raise ApiError(500, "the engine failed while generating; see the server log", code="generation_failed")


def usage_dict(usage: Usage) -> dict[str, Any]:
    """OpenAI's usage object, with the tokens reused from a session checkpoint as cached_tokens."""
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
    }


def delta_dict(delta: Delta) -> dict[str, Any]:
    """One parser delta as the `delta` of a chunk choice (tool-call errors included for the client)."""
    if isinstance(delta, ToolCallDelta):
        return delta.to_openai(include_error=True)
    return delta.to_openai()


@dataclass(slots=True)
class Completion:
    """Identity of one completion: what every response object and chunk repeats.

    `include_usage` (stream_options.include_usage): every chunk carries `"usage": null`, and
    `usage_chunk` the totals at the end.
    """

    model: str
    session_id: str | None
    include_usage: bool = False
    id: str = dataclasses.field(default_factory=lambda: "chatcmpl-" + uuid.uuid4().hex)
    created: int = dataclasses.field(default_factory=lambda: int(time.time()))

    def response(self, message: ParsedMessage, finished: Finished, reason: str) -> dict[str, Any]:
        """The non-streamed chat.completion object."""
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": FINGERPRINT,
            "choices": [{"index": 0, "message": message.to_openai(include_errors=True),
                         "logprobs": None, "finish_reason": reason}],
            "usage": usage_dict(finished.usage),
            "session_id": finished.session_id,
        }

    def chunk(self, delta: dict[str, Any], *, reason: str | None = None) -> bytes:
        """One SSE `data:` line holding a chat.completion.chunk with one choice."""
        body = self._chunk_head([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}])
        if self.include_usage:
            body["usage"] = None
        if self.session_id is not None:
            body["session_id"] = self.session_id
        return sse(body)

    def usage_chunk(self, usage: Usage) -> bytes:
        """The extra last chunk `stream_options.include_usage` asks for: no choices, only usage."""
        body = self._chunk_head([])
        body["usage"] = usage_dict(usage)
        body["session_id"] = self.session_id
        return sse(body)

    def _chunk_head(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.model, "system_fingerprint": FINGERPRINT, "choices": choices}


def sse(obj: dict[str, Any]) -> bytes:
    """One server-sent event carrying a JSON object."""
    return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


def sse_error(exc: ApiError) -> bytes:
    """An in-stream error event (OpenAI's error body), for failures after the stream started."""
    return sse(error_body(exc.status, exc.message, param=exc.param, code=exc.code))
