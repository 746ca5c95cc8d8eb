"""The agent loop: sends a conversation to `qla-agent serve`, runs the tool calls it gets back, repeats.

The loop talks HTTP only (`agent_client.ChatClient`). The conversation lives in a transcript file
(`Transcript`: messages, the server's session id, and `sent`, how many of the messages the server's
session holds). Each request names the session and sends only `messages[sent:]`, with
`keep_messages=sent` so a retry after a failure can never duplicate messages on the server. When the
server no longer has the session (deleted, or its sessions dir was wiped) the loop re-creates it and
resends the whole transcript; after a restart of the client the server's copy is checked first.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qla_agent.agent_client import AgentEvent, AssistantTurn, ChatClient, ServerError
from qla_agent.errors import AgentError
from qla_agent.tools.parsers.types import ToolCall
from qla_agent.tools.registry import ToolRegistry, ToolResult

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; two agents on one transcript are not detected there.
    fcntl = None

logger = logging.getLogger(__name__)

__all__ = ["Agent", "AgentError", "AgentEvent", "AssistantTurn", "ChatClient", "Transcript"]

TRANSCRIPT_VERSION = 1
# Function names the server accepts back in an assistant message's tool_calls.
_CALL_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
NOT_RUN = "error: not run: the turn was interrupted before this call ran; call it again if it is still needed"


def _ignore(event: AgentEvent) -> None:
    del event


@dataclass(slots=True)
class Transcript:
    """The conversation as the client knows it; the server's session holds `messages[:sent]`."""

    session_id: str | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)
    sent: int = 0

    @classmethod
    def load(cls, path: Path) -> Transcript:
        """Read a transcript file (an empty transcript when there is none)."""
        if not path.exists():
            return cls()
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise AgentError(f"cannot read the transcript {path}: {e}; move it away or pass another "
                             "--session-file") from e
        problem = _transcript_problem(data)
        if problem is not None:
            raise AgentError(f"the transcript {path} is not valid ({problem}); move it away or pass another "
                             "--session-file")
        return cls(data["session_id"], data["messages"], data["sent"])

    def save(self, path: Path) -> None:
        """Atomically replace `path` (temp file, fsync, rename), so a crash never leaves half a transcript."""
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = json.dumps({"version": TRANSCRIPT_VERSION, "session_id": self.session_id,
                              "sent": self.sent, "messages": self.messages}, ensure_ascii=False)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(payload)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _transcript_problem(data: Any) -> str | None:
    if not isinstance(data, dict):
        return "not a JSON object"
    if data.get("version", TRANSCRIPT_VERSION) != TRANSCRIPT_VERSION:
        return f"version {data.get('version')!r}, this qla-agent reads {TRANSCRIPT_VERSION}"
    messages, sent, session_id = data.get("messages"), data.get("sent"), data.get("session_id")
    if not isinstance(messages, list) or not all(isinstance(m, dict) and "role" in m for m in messages):
        return "messages must be a list of message objects"
    if not isinstance(sent, int) or not 0 <= sent <= len(messages):
        return f"sent={sent!r} must be a count between 0 and {len(messages)}"
    if session_id is not None and not isinstance(session_id, str):
        return f"session_id {session_id!r} is not a string"
    return None


class TranscriptLock:
    """An exclusive lock on `<transcript>.lock`, so two agents never drive one conversation at once."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path.with_name(path.name + ".lock"), "a")  # noqa: SIM115 - held until release()
        if fcntl is None:
            return
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            self._file.close()
            raise AgentError(f"another qla-agent is using the transcript {path}; close it or pass another "
                             "--session-file") from e

    def release(self) -> None:
        self._file.close()


def assistant_message(turn: AssistantTurn) -> dict[str, Any]:
    """The turn as the transcript keeps it: an OpenAI assistant message the server accepts back."""
    message: dict[str, Any] = {"role": "assistant", "content": turn.content}
    if turn.reasoning:
        message["reasoning_content"] = turn.reasoning
    # A call whose name the server would refuse is left out; its error result still follows.
    calls = [c for c in turn.tool_calls if _CALL_NAME.match(c.name)]
    if calls:
        message["tool_calls"] = [c.to_openai() for c in calls]
    return message


class Agent:
    """Runs user turns: model → tools → model ... until the model answers without calls (see module doc)."""

    def __init__(self, client: ChatClient, tools: ToolRegistry, transcript_path: Path, *, max_steps: int = 16,
                 system_prompt: str | None = None, request_options: dict[str, Any] | None = None) -> None:
        if max_steps < 1:
            raise AgentError(f"max_steps={max_steps} must be at least 1")
        self.client = client
        self.tools = tools
        self.path = transcript_path
        self.max_steps = max_steps
        self.system_prompt = system_prompt
        self.options = request_options or {}
        self._lock = TranscriptLock(transcript_path)
        try:
            self.transcript = Transcript.load(transcript_path)
        except BaseException:
            self._lock.release()
            raise
        # Whether the server's copy of the session was checked since this client started.
        self._verified = False
        if not self.transcript.messages:
            self.transcript.messages = self._system_messages()

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the transcript (the client belongs to the caller)."""
        self._lock.release()

    def save(self) -> None:
        self.transcript.save(self.path)

    def _system_messages(self) -> list[dict[str, Any]]:
        return [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []

    def new_session(self) -> None:
        """Forget the conversation; the next turn starts a new server session (the old one stays there)."""
        self.transcript = Transcript(messages=self._system_messages())
        self.save()

    def fork(self) -> str:
        """Continue in a copy of the current server session; the original stays as it is. The copy's id."""
        if self.transcript.session_id is None:
            raise AgentError("nothing to fork yet: send a message first")
        self.transcript.session_id = self.client.fork(self.transcript.session_id)
        self.save()
        return self.transcript.session_id

    def pending_calls(self) -> list[ToolCall]:
        """Calls of the last assistant message that have no result yet (the client stopped in between)."""
        messages = self.transcript.messages
        last = len(messages) - 1
        while last >= 0 and messages[last]["role"] == "tool":
            last -= 1
        if last < 0 or messages[last]["role"] != "assistant":
            return []
        answered = {m.get("tool_call_id") for m in messages[last + 1:]}
        return [ToolCall(c["id"], c["function"]["name"], c["function"]["arguments"])
                for c in messages[last].get("tool_calls") or [] if c["id"] not in answered]

    def run(self, user_text: str, on_event: Callable[[AgentEvent], None] = _ignore) -> AssistantTurn:
        """One user turn; returns the model's final answer. Calls left pending by an interrupted turn are
        answered as not run (never silently re-run). If the first request fails the user message is
        taken back out of the transcript."""
        t = self.transcript
        skipped = self.pending_calls()
        if skipped:
            t.messages.extend(ToolResult(c.name, NOT_RUN, error=True, call_id=c.id).to_message() for c in skipped)
        mark = len(t.messages)
        t.messages.append({"role": "user", "content": user_text})
        return self._loop(on_event, rollback_to=mark)

    def resume(self, on_event: Callable[[AgentEvent], None] = _ignore) -> AssistantTurn | None:
        """Finish an interrupted turn: run its pending calls and send what the server has not seen.
        None when there is nothing to finish."""
        t = self.transcript
        calls = self.pending_calls()
        if calls:
            t.messages.extend(self._run_tools(calls, on_event))
            self.save()
        if t.sent >= len(t.messages):
            return None
        return self._loop(on_event, rollback_to=None)

    def _loop(self, on_event: Callable[[AgentEvent], None], *, rollback_to: int | None) -> AssistantTurn:
        t = self.transcript
        for step in range(self.max_steps):
            try:
                turn = self._complete(on_event)
            except BaseException:
                # The server records a turn only when it finishes, so nothing of this request is there.
                self._verified = False
                if step == 0 and rollback_to is not None:
                    del t.messages[rollback_to:]
                    t.sent = min(t.sent, len(t.messages))
                self.save()
                raise
            t.messages.append(assistant_message(turn))
            t.sent = len(t.messages)
            self.save()
            if not turn.tool_calls:
                return turn
            t.messages.extend(self._run_tools(turn.tool_calls, on_event))
            self.save()
        raise AgentError(f"no answer after {self.max_steps} model calls; raise --max-steps or simplify the task "
                         "(the tool results so far are kept and sent with your next message)")

    def _complete(self, on_event: Callable[[AgentEvent], None]) -> AssistantTurn:
        t = self.transcript
        if t.session_id is None:
            t.session_id, t.sent = self.client.create_session(), 0
            self._verified = True
        elif not self._verified:
            self._verify(on_event)
        try:
            turn = self.client.stream_chat(self._body(), on_event)
        except ServerError as e:
            if e.code != "session_not_found":
                raise
            self._replace_lost_session(on_event)
            turn = self.client.stream_chat(self._body(), on_event)
        self._verified = True
        if turn.session_id is not None and turn.session_id != t.session_id:
            logger.warning("the server answered in session %s instead of %s", turn.session_id, t.session_id)
            t.session_id = turn.session_id
        return turn

    def _body(self) -> dict[str, Any]:
        t = self.transcript
        body: dict[str, Any] = {**self.options, "session_id": t.session_id, "keep_messages": t.sent,
                                "messages": t.messages[t.sent:]}
        schemas = self.tools.openai_tools()
        if schemas:
            body["tools"] = schemas
        return body

    def _verify(self, on_event: Callable[[AgentEvent], None]) -> None:
        """Check the server still holds what the transcript says it sent (first request of this client)."""
        t = self.transcript
        assert t.session_id is not None
        info = self.client.session(t.session_id)
        if info is None:
            self._replace_lost_session(on_event)
        elif info["n_messages"] < t.sent:
            # keep_messages=0 makes the request replace the session's messages with the whole transcript.
            on_event(AgentEvent("notice", f"session {t.session_id} holds {info['n_messages']} messages, fewer than "
                                f"the {t.sent} sent; resending the whole conversation"))
            t.sent = 0
        self._verified = True

    def _replace_lost_session(self, on_event: Callable[[AgentEvent], None]) -> None:
        t = self.transcript
        old = t.session_id
        try:
            t.session_id = self.client.create_session(old)
        except ServerError:
            t.session_id = self.client.create_session()
        t.sent = 0
        logger.debug("session %s is gone from the server; resending %d messages in %s", old, len(t.messages),
                    t.session_id)
        on_event(AgentEvent("notice", f"session {old} is gone from the server; resending the whole conversation "
                            f"({len(t.messages)} messages) in session {t.session_id}"))

    def _run_tools(self, calls: list[ToolCall], on_event: Callable[[AgentEvent], None]) -> list[dict[str, Any]]:
        """Run the calls concurrently (flagged ones are reported, not run); tool messages in call order."""
        for call in calls:
            on_event(AgentEvent("tool_call", call.arguments, call.name))
        results = self.tools.run_calls(calls)
        for result in results:
            on_event(AgentEvent("tool_result", result.content, result.name))
        return [result.to_message() for result in results]
