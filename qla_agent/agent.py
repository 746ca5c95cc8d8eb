"""The agent loop: an HTTP client of `qla-agent serve` that runs tools and keeps a persistent session.

The loop never imports the engine: it speaks the server's OpenAI chat API plus its `session_id`
extension. Each turn sends only the messages the server has not seen yet; the server resumes the
session's state. The transcript and session id live in a JSON file, so a conversation survives a
restart of either side: if the server lost the session, the loop resends the whole transcript.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from qla_agent.errors import QlaError
from qla_agent.tools.registry import ToolRegistry

logger = logging.getLogger(__name__)


class AgentError(QlaError):
    """The server could not be reached or answered with an error, or the step limit was hit."""


@dataclass(slots=True)
class ToolCall:
    """One call the model asked for, as the server returned it."""

    id: str
    name: str
    arguments: str


@dataclass(slots=True)
class AssistantTurn:
    """What one completion produced."""

    content: str = ""
    reasoning: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: str | None = None

    def as_message(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.reasoning:
            message["reasoning_content"] = self.reasoning
        if self.tool_calls:
            message["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                for c in self.tool_calls
            ]
        return message


@dataclass(frozen=True, slots=True)
class AgentEvent:
    """Something the user interface may show: `kind` is content, reasoning, tool_call or tool_result."""

    kind: str
    text: str
    name: str = ""


@dataclass(slots=True)
class Transcript:
    """The conversation as the client knows it; `sent` counts messages the server has seen."""

    session_id: str | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)
    sent: int = 0

    @classmethod
    def load(cls, path: Path) -> Transcript:
        if not path.exists():
            return cls()
        data = json.loads(path.read_text())
        return cls(data.get("session_id"), data.get("messages", []), data.get("sent", 0))

    def save(self, path: Path) -> None:
        """Atomically replace `path` so a crash never leaves half a transcript."""
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = json.dumps({"session_id": self.session_id, "messages": self.messages, "sent": self.sent})
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


class ChatClient:
    """Streams chat completions from the server and assembles content, reasoning and tool calls."""

    def __init__(self, base_url: str, *, api_key: str | None = None, model: str | None = None,
                 timeout: float = 600.0) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout)
        self.model = model

    def close(self) -> None:
        self.http.close()

    def model_id(self) -> str:
        if self.model is None:
            self.model = self._json("GET", "/v1/models")["data"][0]["id"]
        return self.model

    def sessions(self) -> list[dict[str, Any]]:
        return self._json("GET", "/v1/sessions")["data"]

    def fork(self, session_id: str) -> str:
        return self._json("POST", f"/v1/sessions/{session_id}/fork")["id"]

    def session_exists(self, session_id: str) -> bool:
        return self.http.get(f"/v1/sessions/{session_id}").status_code == 200

    def complete(self, body: dict[str, Any], on_event: Callable[[AgentEvent], None]) -> tuple[AssistantTurn, str | None]:
        """Run one streamed completion; returns the turn and the session id the server used."""
        turn = AssistantTurn()
        partial: dict[int, dict[str, str]] = {}
        body = {**body, "model": self.model_id(), "stream": True}
        with self.http.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                response.read()
                raise AgentError(f"server answered {response.status_code}: {_error_message(response)}")
            session_id = response.headers.get("x-session-id")
            for chunk in _sse_chunks(response.iter_lines()):
                session_id = chunk.get("session_id", session_id)
                for choice in chunk.get("choices", []):
                    _merge_delta(turn, partial, choice.get("delta", {}), on_event)
                    turn.finish_reason = choice.get("finish_reason") or turn.finish_reason
        turn.tool_calls = [ToolCall(p["id"], p["name"], p["arguments"]) for _, p in sorted(partial.items())]
        return turn, session_id

    def _json(self, method: str, path: str) -> dict[str, Any]:
        try:
            response = self.http.request(method, path)
        except httpx.HTTPError as e:
            raise AgentError(f"cannot reach the server at {self.http.base_url}: {e}") from e
        if response.status_code != 200:
            raise AgentError(f"{method} {path} answered {response.status_code}: {_error_message(response)}")
        return response.json()


def _sse_chunks(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    for line in lines:
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        chunk = json.loads(data)
        if "error" in chunk:
            raise AgentError(f"server error mid-stream: {chunk['error'].get('message')}")
        yield chunk


def _merge_delta(turn: AssistantTurn, partial: dict[int, dict[str, str]], delta: dict[str, Any],
                 on_event: Callable[[AgentEvent], None]) -> None:
    if delta.get("reasoning_content"):
        turn.reasoning += delta["reasoning_content"]
        on_event(AgentEvent("reasoning", delta["reasoning_content"]))
    if delta.get("content"):
        turn.content += delta["content"]
        on_event(AgentEvent("content", delta["content"]))
    for call in delta.get("tool_calls") or []:
        slot = partial.setdefault(call["index"], {"id": "", "name": "", "arguments": ""})
        slot["id"] = call.get("id") or slot["id"]
        function = call.get("function") or {}
        slot["name"] += function.get("name") or ""
        slot["arguments"] += function.get("arguments") or ""


def _error_message(response: httpx.Response) -> str:
    try:
        return response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return response.text[:500]


class Agent:
    """Runs turns: sends new messages, executes the tool calls it gets back, repeats until an answer."""

    def __init__(self, client: ChatClient, tools: ToolRegistry, transcript_path: Path, *, max_steps: int = 16,
                 system_prompt: str | None = None, request_options: dict[str, Any] | None = None) -> None:
        self.client = client
        self.tools = tools
        self.path = transcript_path
        self.transcript = Transcript.load(transcript_path)
        self.max_steps = max_steps
        self.options = request_options or {}
        if system_prompt and not self.transcript.messages:
            self.transcript.messages.append({"role": "system", "content": system_prompt})

    def new_session(self) -> None:
        """Forget the current conversation; the next turn starts a new server session."""
        self.transcript = Transcript()
        self.transcript.save(self.path)

    def fork(self) -> str:
        """Continue in a copy of the current server session; the original stays as it is."""
        if self.transcript.session_id is None:
            raise AgentError("nothing to fork yet: send a message first")
        self.transcript.session_id = self.client.fork(self.transcript.session_id)
        self.transcript.save(self.path)
        return self.transcript.session_id

    def run(self, user_text: str, on_event: Callable[[AgentEvent], None] = lambda e: None) -> AssistantTurn:
        """One user turn: loops model → tools → model until the model answers without calls."""
        self.transcript.messages.append({"role": "user", "content": user_text})
        for _ in range(self.max_steps):
            turn = self._complete(on_event)
            self.transcript.messages.append(turn.as_message())
            self.transcript.sent = len(self.transcript.messages)
            self.transcript.save(self.path)
            if not turn.tool_calls:
                return turn
            self.transcript.messages.extend(self._run_tools(turn.tool_calls, on_event))
            self.transcript.save(self.path)
        raise AgentError(f"no answer after {self.max_steps} steps; raise --max-steps or simplify the task")

    def _complete(self, on_event: Callable[[AgentEvent], None]) -> AssistantTurn:
        t = self.transcript
        if t.session_id is not None and not self.client.session_exists(t.session_id):
            logger.info("session %s is gone from the server; resending the whole transcript", t.session_id)
            t.session_id, t.sent = None, 0
        body: dict[str, Any] = {**self.options, "messages": t.messages[t.sent:]}
        if t.session_id is not None:
            body["session_id"] = t.session_id
        schemas = self.tools.openai_tools()
        if schemas:
            body["tools"] = schemas
        turn, session_id = self.client.complete(body, on_event)
        t.session_id = session_id or t.session_id
        return turn

    def _run_tools(self, calls: list[ToolCall], on_event: Callable[[AgentEvent], None]) -> list[dict[str, Any]]:
        for call in calls:
            on_event(AgentEvent("tool_call", call.arguments, call.name))
        with ThreadPoolExecutor(max_workers=min(8, len(calls))) as pool:
            results = list(pool.map(lambda c: self.tools.call(c.name, c.arguments, call_id=c.id).content, calls))
        messages = []
        for call, result in zip(calls, results):
            on_event(AgentEvent("tool_result", result, call.name))
            messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
        return messages
