"""The incremental parser of a completion: reasoning, content and tool calls, chunk by chunk.

Rules shared by both call formats (each pinned by tests/data/tool_calls):
- `<think>...</think>` is reasoning. `<think>` counts only before any content, call or reasoning;
  with `starts_in_reasoning` (the prompt opened `<think>`) the output starts inside reasoning and
  one leading `<think>` is dropped. Reasoning without `</think>` runs to the end of output.
- Content and reasoning are stripped of whitespace at both ends (as the chat template does when
  the message comes back as history); whitespace between pieces is kept.
- `<tool_call>` starts a call only outside reasoning and outside ``` code fences (every ```
  toggles), and only when followed (after whitespace) by `<function=` (XML) or `{` (JSON); both
  bodies are read whatever the template's format. Otherwise `<tool_call>` is literal text.
- With `calls_in_reasoning` (opt-in; vLLM #39056: Qwen3.5 sometimes calls before `</think>`) a
  call inside reasoning ends the reasoning; a later stray `</think>` is dropped.
- After a call, whitespace (and, for JSON, stray `}`) and one `</tool_call>` are consumed.
- Text that might be the start of a tag is held back until the next chunk decides it, so the
  deltas of any chunking concatenate to the same message as one `feed` of the whole text.
"""

from __future__ import annotations

from collections.abc import Callable

from qla_agent.tools.parsers.calls import TOOL_CLOSE, TOOL_OPEN, ToolSchemas
from qla_agent.tools.parsers.hermes import HermesCall
from qla_agent.tools.parsers.qwen_xml import FUNCTION_OPEN, XmlCall
from qla_agent.tools.parsers.scan import find_first, partial_suffix
from qla_agent.tools.parsers.types import ContentDelta, Delta, ReasoningDelta, ToolCallDelta

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
FENCE = "```"


class _Channel:
    """One output channel (content or reasoning) with its ends stripped, incrementally."""

    def __init__(self, make: Callable[[str], Delta]):
        self._make = make
        self.started = False
        self._pending = ""

    def push(self, text: str, out: list[Delta]) -> None:
        if not self.started:
            text = text.lstrip()
            self.started = bool(text)
        body = text.rstrip()
        if not body:
            self._pending += text
            return
        out.append(self._make(self._pending + body))
        self._pending = text[len(body) :]


class StreamParser:
    """Feed completion text in chunks of any size; get OpenAI-style deltas back."""

    def __init__(
        self,
        schemas: ToolSchemas,
        *,
        parse_calls: bool,
        starts_in_reasoning: bool,
        new_id: Callable[[], str],
        calls_in_reasoning: bool = False,
    ):
        self._schemas = schemas
        self._parse_calls = parse_calls
        self._new_id = new_id
        self._buf = ""
        self._content = _Channel(ContentDelta)
        self._reasoning = _Channel(ReasoningDelta)
        self._step = self._reasoning_step if starts_in_reasoning else self._content_step
        self._skip_think_open = starts_in_reasoning
        self._think_allowed = not starts_in_reasoning
        self._in_code = False
        self._open_text = ""
        self._calls_in_reasoning = calls_in_reasoning and parse_calls
        self._from_reasoning = False
        self._stray_think_close = False
        self._call: XmlCall | HermesCall | None = None
        self._n_calls = 0
        self._finished = False

    def feed(self, chunk: str) -> list[Delta]:
        """Take the next piece of output; return the deltas it settles."""
        if self._finished:
            raise RuntimeError("feed() after finish(): start a new StreamParser for a new completion")
        self._buf += chunk
        return self._run(final=False)

    def finish(self) -> list[Delta]:
        """The output has ended: settle everything held back (truncated calls get an error)."""
        out = self._run(final=True)
        self._finished = True
        assert not self._buf, "final pass left text unparsed"
        return out

    def _run(self, final: bool) -> list[Delta]:
        out: list[Delta] = []
        while self._step(final, out):
            pass
        return out

    def _announce(self, name: str) -> ToolCallDelta:
        index, self._n_calls = self._n_calls, self._n_calls + 1
        self._think_allowed = False
        return ToolCallDelta(index=index, id=self._new_id(), name=name)

    def _emit_content(self, text: str, out: list[Delta]) -> None:
        if text.strip():
            self._think_allowed = False
        self._content.push(text, out)

    def _take(self, n: int) -> str:
        text, self._buf = self._buf[:n], self._buf[n:]
        return text

    def _content_step(self, final: bool, out: list[Delta]) -> bool:
        markers = [FENCE]
        if self._parse_calls and not self._in_code:
            markers.append(TOOL_OPEN)
        if self._think_allowed:
            markers.append(THINK_OPEN)
        if self._stray_think_close:
            markers.append(THINK_CLOSE)
        hit = find_first(self._buf, markers)
        if hit is None:
            keep = 0 if final else partial_suffix(self._buf, markers)
            self._emit_content(self._take(len(self._buf) - keep), out)
            return False
        i, marker = hit
        if marker == THINK_OPEN and self._buf[:i].strip():
            # <think> after content is literal text.
            self._emit_content(self._take(i + len(marker)), out)
            return True
        self._emit_content(self._take(i), out)
        self._take(len(marker))
        if marker == FENCE:
            self._in_code = not self._in_code
            self._emit_content(marker, out)
        elif marker == THINK_OPEN:
            self._think_allowed = False
            self._step = self._reasoning_step
        elif marker == THINK_CLOSE:
            self._stray_think_close = False
        else:
            self._open_text = marker
            self._step = self._open_step
        return True

    def _reasoning_step(self, final: bool, out: list[Delta]) -> bool:
        if self._skip_think_open:
            head = self._buf.lstrip()
            if not final and THINK_OPEN.startswith(head):
                return False
            self._skip_think_open = False
            if head.startswith(THINK_OPEN):
                self._buf = head[len(THINK_OPEN) :]
            return True
        markers = [THINK_CLOSE, TOOL_OPEN] if self._calls_in_reasoning else [THINK_CLOSE]
        hit = find_first(self._buf, markers)
        if hit is None:
            keep = 0 if final else partial_suffix(self._buf, markers)
            self._reasoning.push(self._take(len(self._buf) - keep), out)
            return False
        i, marker = hit
        self._reasoning.push(self._take(i), out)
        self._take(len(marker))
        if marker == TOOL_OPEN:
            self._open_text, self._from_reasoning = marker, True
            self._step = self._open_step
        else:
            self._step = self._content_step
        return True

    def _open_step(self, final: bool, out: list[Delta]) -> bool:
        rest = self._buf.lstrip()
        ws = len(self._buf) - len(rest)
        if rest.startswith(FUNCTION_OPEN):
            self._open_text += self._take(ws + len(FUNCTION_OPEN))
            self._call = XmlCall(self._schemas, self._announce)
        elif rest.startswith("{"):
            self._open_text += self._take(ws)
            self._call = HermesCall(self._schemas, self._announce)
        elif not final and FUNCTION_OPEN.startswith(rest):
            return False
        else:
            self._replay_open(out)
            return True
        self._step = self._call_step
        return True

    def _replay_open(self, out: list[Delta]) -> None:
        """Not a call after all: `<tool_call>...` is literal text of the channel it appeared in."""
        if self._from_reasoning:
            self._reasoning.push(self._open_text, out)
            self._step = self._reasoning_step
        else:
            self._emit_content(self._open_text, out)
            self._step = self._content_step
        self._from_reasoning = False

    def _call_step(self, final: bool, out: list[Delta]) -> bool:
        assert self._call is not None
        step = self._call.step(self._buf, final)
        out.extend(step.deltas)
        if step.literal:
            self._replay_open(out)
            return True
        self._take(step.consumed)
        if step.done:
            self._stray_think_close = self._stray_think_close or self._from_reasoning
            self._from_reasoning = False
            self._step = self._after_call_step
        return step.done

    def _after_call_step(self, final: bool, out: list[Delta]) -> bool:
        assert self._call is not None
        rest = self._buf.lstrip(self._call.trailing)
        skipped = len(self._buf) - len(rest)
        if rest.startswith(TOOL_CLOSE):
            self._take(skipped + len(TOOL_CLOSE))
        elif not rest and final:
            self._take(skipped)
        elif not final and TOOL_CLOSE.startswith(rest):
            return False
        self._step = self._content_step
        return True
