"""The agent's HTTP side: a client of `qla-agent serve` that streams chat completions and manages sessions.

Only the server's wire format is known here (OpenAI chat chunks plus the `session_id` extension and
the `/v1/sessions` routes); the engine is never imported. Every failure becomes an `AgentError`
(`ServerError` when the server answered with an error body), never a raw httpx exception.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from qla_agent.errors import AgentError
from qla_agent.tools.parsers.types import ToolCall, new_call_id

logger = logging.getLogger(__name__)


class ServerError(AgentError):
    """The server refused a request: its HTTP status, OpenAI error `code` and message."""

    def __init__(self, message: str, *, status: int, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


@dataclass(frozen=True, slots=True)
class AgentEvent:
    """Something a user interface may show: `kind` is content, reasoning, tool_call, tool_result or notice."""

    kind: str
    text: str
    name: str = ""


@dataclass(frozen=True, slots=True)
class TurnUsage:
    """Token counts of one completion; `cached_tokens` of the prompt were reused from the session."""

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int


@dataclass(slots=True)
class AssistantTurn:
    """What one streamed completion produced (tool calls flagged by the server's parser keep their error)."""

    content: str = ""
    reasoning: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: str | None = None
    usage: TurnUsage | None = None
    session_id: str | None = None


def normalize_url(url: str) -> str:
    """The server's base URL without a trailing slash or `/v1` (users often paste the OpenAI base URL)."""
    url = url.strip().rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


class ChatClient:
    """Talks to one server: streamed chat completions and the sessions API."""

    def __init__(self, base_url: str, *, api_key: str | None = None, model: str | None = None,
                 timeout: float = 600.0) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.base_url = normalize_url(base_url)
        self.http = httpx.Client(base_url=self.base_url, headers=headers,
                                 timeout=httpx.Timeout(timeout, connect=10.0))
        self.model = model

    def close(self) -> None:
        self.http.close()

    def sessions(self) -> list[dict[str, Any]]:
        """Every session on the server, most recently updated first."""
        return self.request("GET", "/v1/sessions")["data"]

    def session(self, session_id: str) -> dict[str, Any] | None:
        """One session with its messages, or None when the server does not have it."""
        try:
            return self.request("GET", f"/v1/sessions/{session_id}")
        except ServerError as e:
            if e.status == 404:
                return None
            raise

    def create_session(self, session_id: str | None = None) -> str:
        """A new explicit session (kept until deleted, unlike the server's implicit ones); its id."""
        body = {} if session_id is None else {"id": session_id}
        return self.request("POST", "/v1/sessions", json=body)["id"]

    def fork(self, session_id: str) -> str:
        """A copy of a session; the id of the copy."""
        return self.request("POST", f"/v1/sessions/{session_id}/fork", json={})["id"]

    def delete_session(self, session_id: str) -> None:
        self.request("DELETE", f"/v1/sessions/{session_id}")

    def export_session(self, session_id: str) -> bytes:
        """A session as the bytes of a file that `import_session` (on any server of the model) takes back."""
        return self.send("GET", f"/v1/sessions/{session_id}/export").content

    def import_session(self, data: bytes, *, session_id: str | None = None) -> dict[str, Any]:
        """Load an exported session (under `session_id`, or its own id); the session as the server shows it."""
        params = {} if session_id is None else {"session_id": session_id}
        return self.send("POST", "/v1/sessions/import", content=data, params=params,
                         headers={"Content-Type": "application/octet-stream"}).json()

    def request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """One JSON request; connection failures and error answers become AgentError / ServerError."""
        return self.send(method, path, **kwargs).json()

    def send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request whose answer must be 200 (else ServerError; AgentError when unreachable)."""
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as e:
            raise AgentError(f"cannot reach the server at {self.base_url}: {e}") from e
        if response.status_code != 200:
            raise _server_error(f"{method} {path}", response)
        return response

    def stream_chat(self, body: dict[str, Any], on_event: Callable[[AgentEvent], None]) -> AssistantTurn:
        """Run one streamed completion, passing content and reasoning to `on_event` as they arrive."""
        body = {**body, "stream": True, "stream_options": {"include_usage": True}}
        if self.model is not None:
            body["model"] = self.model
        try:
            with self.http.stream("POST", "/v1/chat/completions", json=body) as response:
                if response.status_code != 200:
                    response.read()
                    raise _server_error("the chat request", response)
                assembler = TurnAssembler(on_event)
                for data in sse_data(response.iter_lines()):
                    if data == "[DONE]":
                        return assembler.finish()
                    assembler.feed(_decode_chunk(data))
        except httpx.HTTPError as e:
            raise AgentError(f"the connection to {self.base_url} failed during a completion: {e}") from e
        raise AgentError("the server closed the stream before it finished (no [DONE]); it may have stopped "
                         "or crashed, see its log")


def sse_data(lines: Iterable[str]) -> Iterator[str]:
    """The data of each server-sent event, its `data:` lines joined by newlines (comments skipped)."""
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield "\n".join(data)
                data = []
            continue
        name, _, value = line.partition(":")
        if name == "data":
            data.append(value[1:] if value.startswith(" ") else value)
    if data:
        yield "\n".join(data)


def _decode_chunk(data: str) -> dict[str, Any]:
    try:
        chunk = json.loads(data)
    except json.JSONDecodeError as e:
        raise AgentError(f"the server sent an event that is not JSON ({e.msg}): {data[:120]!r}") from e
    if not isinstance(chunk, dict):
        raise AgentError(f"the server sent an event that is not a JSON object: {data[:120]!r}")
    if "error" in chunk:
        error = chunk["error"] if isinstance(chunk["error"], dict) else {"message": str(chunk["error"])}
        raise ServerError(f"the server failed mid-answer: {error.get('message')}", status=500,
                          code=error.get("code"))
    return chunk


class TurnAssembler:
    """Folds chat.completion.chunk objects into an AssistantTurn (tool calls reassembled by index)."""

    def __init__(self, on_event: Callable[[AgentEvent], None]) -> None:
        self.turn = AssistantTurn()
        self.on_event = on_event
        self.calls: dict[int, dict[str, Any]] = {}

    def feed(self, chunk: dict[str, Any]) -> None:
        self.turn.session_id = chunk.get("session_id") or self.turn.session_id
        usage = chunk.get("usage")
        if usage:
            details = usage.get("prompt_tokens_details") or {}
            self.turn.usage = TurnUsage(usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0),
                                        details.get("cached_tokens") or 0)
        for choice in chunk.get("choices") or []:
            self._delta(choice.get("delta") or {})
            self.turn.finish_reason = choice.get("finish_reason") or self.turn.finish_reason

    def _delta(self, delta: dict[str, Any]) -> None:
        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
        if reasoning:
            self.turn.reasoning += reasoning
            self.on_event(AgentEvent("reasoning", reasoning))
        if delta.get("content"):
            self.turn.content += delta["content"]
            self.on_event(AgentEvent("content", delta["content"]))
        for call in delta.get("tool_calls") or []:
            slot = self.calls.setdefault(call.get("index", 0), {"id": "", "name": "", "arguments": "", "error": None})
            function = call.get("function") or {}
            slot["id"] = call.get("id") or slot["id"]
            slot["name"] += function.get("name") or ""
            slot["arguments"] += function.get("arguments") or ""
            slot["error"] = call.get("error") or slot["error"]

    def finish(self) -> AssistantTurn:
        """The turn once the stream said [DONE]; an answer without a finish reason is an error."""
        if self.turn.finish_reason is None:
            raise AgentError("the stream ended without a finish reason; the server may have stopped mid-answer")
        self.turn.tool_calls = [ToolCall(c["id"] or new_call_id(), c["name"], c["arguments"], c["error"])
                                for _, c in sorted(self.calls.items())]
        return self.turn


def _server_error(what: str, response: httpx.Response) -> ServerError:
    try:
        error = response.json()["error"]
        message, code = str(error["message"]), error.get("code")
    except (ValueError, KeyError, TypeError):
        message, code = response.text[:500] or response.reason_phrase, None
    return ServerError(f"{what} was refused ({response.status_code}): {message}", status=response.status_code,
                       code=code)
