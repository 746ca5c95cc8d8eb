"""Wire schemas of the OpenAI chat API (pydantic): validated at the edge, then converted to records.

Unknown top-level fields are rejected (422). Every field the official `openai` client can send is
accepted; those this server cannot honour are refused with a 400 by `convert.py` rather than ignored
silently, and the purely informational ones (`user`, `metadata`, `store`, ...) are accepted and ignored.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SESSION_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
FUNCTION_NAME_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"
_SESSION_ID = re.compile(SESSION_ID_PATTERN)


def valid_session_id(value: str) -> bool:
    """Whether a string can name a session: letters, digits, '_', '-', '.'; at most 128."""
    return bool(_SESSION_ID.match(value)) and ".." not in value


class Wire(BaseModel):
    """Base of every request schema: unknown fields are an error."""

    model_config = ConfigDict(extra="forbid")


class FunctionCall(Wire):
    name: str = Field(pattern=FUNCTION_NAME_PATTERN)
    arguments: str | dict[str, Any] = "{}"


class ToolCall(Wire):
    id: str = Field(default="", max_length=256)
    type: Literal["function"] = "function"
    function: FunctionCall
    # Some clients echo the streaming `index` back when they replay an assistant turn.
    index: int | None = None


class Message(Wire):
    """One chat message; `content` is a string or a list of text parts."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    reasoning_content: str | None = None
    # Output-only fields a client sends back when it replays a response message (`model_dump()`).
    reasoning: str | None = None
    refusal: str | None = None
    annotations: list[Any] | None = None
    audio: Any = None
    function_call: Any = None

    @field_validator("content")
    @classmethod
    def _text_parts_only(cls, value: Any) -> Any:
        if isinstance(value, list):
            for i, part in enumerate(value):
                kind = part.get("type")
                if kind != "text" or not isinstance(part.get("text"), str):
                    raise ValueError(f"content part {i} has type {kind!r}; this model takes only "
                                     "{'type': 'text', 'text': '...'} parts")
        return value

    @model_validator(mode="after")
    def _content_where_needed(self) -> Message:
        if self.role in ("system", "developer", "user", "tool") and self.content is None:
            raise ValueError(f"a {self.role} message needs content")
        if self.role != "assistant" and self.tool_calls:
            raise ValueError(f"a {self.role} message cannot carry tool_calls; only assistant messages do")
        return self

    def text(self) -> str | None:
        """The content as one string (text parts joined by newlines), None if absent."""
        if isinstance(self.content, list):
            return "\n".join(part["text"] for part in self.content)
        return self.content


class FunctionDef(Wire):
    name: str = Field(pattern=FUNCTION_NAME_PATTERN)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(Wire):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(Wire):
    name: str


class NamedToolChoice(Wire):
    type: Literal["function"]
    function: NamedFunction


class StreamOptions(Wire):
    include_usage: bool | None = None
    include_obfuscation: bool | None = None


class ResponseFormat(Wire):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None


class ChatCompletionRequest(Wire):
    """POST /v1/chat/completions."""

    messages: list[Message] = Field(default_factory=list, max_length=100_000)
    model: str | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=-1)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    repetition_penalty: float | None = Field(default=None, gt=0.0, le=10.0)
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**64)
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = Field(default=None, max_length=64)
    n: int | None = Field(default=None, ge=1)
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    enable_thinking: bool | None = None
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    session_id: str | None = Field(default=None, pattern=SESSION_ID_PATTERN)
    keep_messages: int | None = Field(default=None, ge=0)
    memory_policy: Literal["full", "bounded"] | None = None
    response_format: ResponseFormat | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    logit_bias: dict[str, float] | None = Field(default=None, max_length=1024)
    # Accepted so any official client works; refused with a 400 in convert.py when they ask for
    # something this server cannot do.
    functions: list[Any] | None = None
    function_call: Any = None
    audio: Any = None
    modalities: list[str] | None = None
    prediction: Any = None
    web_search_options: Any = None
    # Informational: accepted and ignored.
    user: str | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    prompt_cache_options: Any = None
    verbosity: str | None = None
    moderation: Any = None

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else value or []
        if len(stops) > 16:
            raise ValueError(f"{len(stops)} stop sequences given; at most 16 are allowed")
        if any(not s for s in stops):
            raise ValueError("stop sequences must not be empty strings")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _token_ids(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for key, bias in (value or {}).items():
            if not key.isdigit():
                raise ValueError(f"logit_bias key {key[:40]!r} is not a token id (a non-negative integer)")
            if not -100.0 <= bias <= 100.0:
                raise ValueError(f"logit_bias for token {key} is {bias}; use -100 to 100")
        return value


class CreateSession(Wire):
    """POST /v1/sessions: a new session, optionally holding messages (prefilled by its first request)."""

    id: str | None = Field(default=None, pattern=SESSION_ID_PATTERN)
    messages: list[Message] = Field(default_factory=list)
    tools: list[Tool] | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    enable_thinking: bool | None = None
    memory_policy: Literal["full", "bounded"] | None = None


class ForkSession(Wire):
    """POST /v1/sessions/{id}/fork: a copy of the whole session, or of its first `at_message` messages."""

    id: str | None = Field(default=None, pattern=SESSION_ID_PATTERN)
    at_message: int | None = Field(default=None, ge=0)
