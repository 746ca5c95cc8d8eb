"""The body of a Qwen3.5/3.6 and Qwen3-Coder XML call, parsed incrementally.

    <tool_call>
    <function=NAME>
    <parameter=ARG>
    value
    </parameter>
    </function>
    </tool_call>

Rules (each pinned by tests/data/tool_calls):
- A value is the text between `<parameter=ARG>` and the structural `</parameter>`, minus exactly one
  leading and one trailing newline. `</parameter>` is structural only when followed (after
  whitespace) by `<parameter=`, `</function>`, `</tool_call>` or the end of output; a `</function>`
  followed by `</tool_call>` or the end, or a `</tool_call>` followed by `<tool_call>` or the end,
  also ends a value whose `</parameter>` is missing. Any other closing tag inside a value is literal
  text (so is `<parameter=`: a value missing its `</parameter>` runs on to the next structural tag).
- Values are coerced by the tool's JSON schema (`qla_agent.tools.schema.coerce_text`); plain-string
  and unknown parameters stream as they arrive, typed ones are emitted when complete.
- `</function>` ends the call; `</tool_call>` is optional and also ends a call missing `</function>`.
- `<function=` whose name runs into a newline or `<`, or never closes before the end, is not a
  call: the text goes to content. Text before the first `<parameter=` is ignored.
- Output that ends inside the call yields the call with the parameters read so far and an error.
"""

from __future__ import annotations

import json

from qla_agent.tools.parsers.calls import (
    TOOL_CLOSE,
    TOOL_OPEN,
    Announce,
    ArgsWriter,
    CallRecord,
    Step,
    ToolSchemas,
    json_fragment,
)
from qla_agent.tools.parsers.scan import Verdict, starts_with_tag
from qla_agent.tools.parsers.types import ToolCallDelta
from qla_agent.tools.schema import coerce_text, is_plain_string

FUNCTION_OPEN = "<function="
FUNCTION_CLOSE = "</function>"
PARAM_OPEN = "<parameter="
PARAM_CLOSE = "</parameter>"
_BODY_TAGS = (PARAM_OPEN, FUNCTION_CLOSE, TOOL_CLOSE)
_MAX_NAME = 200


class XmlCall:
    """Incremental parser of one `<function=...>...</function>` body (the text after `<function=`)."""

    trailing = " \t\r\n"

    def __init__(self, schemas: ToolSchemas, announce: Announce):
        self._call = CallRecord(schemas, announce)
        self._args = ArgsWriter()
        self._stage = self._name
        self._param = ""
        self._schema = None
        self._streaming = False
        self._lead_pending = False
        self._value: list[str] = []

    def step(self, buf: str, final: bool) -> Step:
        """Consume what can be decided of `buf`; at `final` the call must finish."""
        step = Step()
        while not step.done and not step.literal:
            stage = self._stage
            n = stage(buf[step.consumed :], final, step)
            step.consumed += n
            if n == 0 and stage is self._stage and not step.done:
                break
        return step

    def _name(self, buf: str, final: bool, step: Step) -> int:
        end = buf.find(">")
        head = buf if end < 0 else buf[:end]
        if "\n" in head or "<" in head or len(head) > _MAX_NAME or (end < 0 and final):
            step.literal = True
            return 0
        if end < 0:
            return 0
        if not head.strip():
            step.literal = True
            return 0
        step.deltas.append(self._call.start(head.strip()))
        self._stage = self._body
        return end + 1

    def _body(self, buf: str, final: bool, step: Step) -> int:
        rest = buf.lstrip()
        skipped = len(buf) - len(rest)
        if rest.startswith(PARAM_OPEN):
            self._stage = self._param_name
            return skipped + len(PARAM_OPEN)
        if rest.startswith(FUNCTION_CLOSE):
            step.deltas.append(self._finish())
            step.done = True
            return skipped + len(FUNCTION_CLOSE)
        if rest.startswith(TOOL_CLOSE):
            # </function> missing: the call still ends; the caller consumes </tool_call>.
            step.deltas.append(self._finish())
            step.done = True
            return skipped
        if final and not rest:
            step.deltas.append(self._finish(truncated=True))
            step.done = True
            return skipped
        if starts_with_tag(buf, 0, _BODY_TAGS, final) is Verdict.WAIT:
            return 0
        # Stray text between parameters: skip to the next tag.
        nxt = rest.find("<", 1)
        return skipped + (len(rest) if nxt < 0 else nxt)

    def _param_name(self, buf: str, final: bool, step: Step) -> int:
        end = buf.find(">")
        if end < 0:
            if final:
                step.deltas.append(self._finish(truncated=True))
                step.done = True
                return len(buf)
            return 0
        self._open_param(buf[:end].strip(), step)
        self._stage = self._value_text
        return end + 1

    def _open_param(self, name: str, step: Step) -> None:
        if name in self._args.keys:
            self._call.errors.append(f"argument {name!r} given twice")
        self._param = name
        self._schema = self._call.schemas.param_schema(self._call.name, name)
        self._streaming = is_plain_string(self._schema)
        self._lead_pending = True
        self._value = []
        prefix = self._args.key(name)
        if self._streaming:
            step.deltas.append(self._delta(prefix + '"'))
        else:
            self._value.append(prefix)

    def _value_text(self, buf: str, final: bool, step: Step) -> int:
        skipped = 0
        if self._lead_pending:
            if not buf and not final:
                return 0
            self._lead_pending = False
            skipped = 1 if buf.startswith("\n") else 0
            buf = buf[skipped:]
        safe, resume = _scan_value(buf, final)
        if resume is None and not final:
            if buf[:safe].endswith("\n"):
                # Hold back a newline that may be the one stripped before </parameter>.
                safe -= 1
            self._push_value(buf[:safe], step)
            return skipped + safe
        text = buf[:safe]
        self._push_value(text[:-1] if text.endswith("\n") else text, step)
        step.deltas.append(self._delta(self._close_value()))
        self._stage = self._body
        return skipped + (len(buf) if resume is None else resume)

    def _push_value(self, text: str, step: Step) -> None:
        if not text:
            return
        if self._streaming:
            step.deltas.append(self._delta(json_fragment(text)))
        else:
            self._value.append(text)

    def _close_value(self) -> str:
        if self._streaming:
            return '"'
        prefix, raw = self._value[0], "".join(self._value[1:])
        value, error = coerce_text(raw, self._schema)
        if error:
            self._call.errors.append(f"argument {self._param!r}: {error}")
        return prefix + json.dumps(value, ensure_ascii=False)

    def _delta(self, text: str) -> ToolCallDelta:
        assert self._call.index is not None
        return ToolCallDelta(index=self._call.index, arguments=text)

    def _finish(self, *, truncated: bool = False) -> ToolCallDelta:
        return self._call.finish(self._args.close(), self._args.keys, truncated=truncated)


def _scan_value(buf: str, final: bool) -> tuple[int, int | None]:
    """(safe, resume): `buf[:safe]` is value text; resume is where the body continues, None if not yet known."""
    pos = 0
    while True:
        p = buf.find("</", pos)
        if p < 0:
            hold = 1 if buf.endswith("<") and not final else 0
            return len(buf) - hold, None
        tail = buf[p:]
        if tail.startswith(PARAM_CLOSE):
            verdict = starts_with_tag(buf, p + len(PARAM_CLOSE), _BODY_TAGS, final)
            if verdict is Verdict.YES:
                return p, p + len(PARAM_CLOSE)
        elif tail.startswith(FUNCTION_CLOSE):
            verdict = starts_with_tag(buf, p + len(FUNCTION_CLOSE), (TOOL_CLOSE,), final)
            if verdict is Verdict.YES:
                return p, p
        elif tail.startswith(TOOL_CLOSE):
            verdict = starts_with_tag(buf, p + len(TOOL_CLOSE), (TOOL_OPEN,), final)
            if verdict is Verdict.YES:
                return p, p
        else:
            partial = any(tag.startswith(tail) for tag in (PARAM_CLOSE, FUNCTION_CLOSE, TOOL_CLOSE))
            verdict = Verdict.WAIT if partial and not final else Verdict.NO
        if verdict is Verdict.WAIT:
            return p, None
        pos = p + 1
