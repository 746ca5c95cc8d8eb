"""The client's stream reading as pure functions (SSE framing, chunk folding), plus streaming from the real server.

The real server sends one `data:` line per event and well-formed chunks; the framing cases it never
produces (comments, multi-line data, a stream cut short) are checked on literal input here.
"""

import pytest

from qla_agent.agent_cli import default_session_file, printable
from qla_agent.agent_client import ChatClient, TurnAssembler, normalize_url, sse_data
from qla_agent.errors import AgentError
from tests.agent.server_process import OPTIONS


def test_sse_data_joins_data_lines_and_skips_comments_and_other_fields():
    lines = [": keep-alive", "", "event: message", 'data: {"a":', "data: 1}", "", "id: 7", "data:[DONE]", ""]
    assert list(sse_data(lines)) == ['{"a":\n1}', "[DONE]"]


def test_sse_data_yields_a_last_event_without_blank_line():
    assert list(sse_data(["data: x"])) == ["x"]


def chunk(delta=None, finish=None, **extra):
    return {"choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}], **extra}


def test_assembler_folds_content_reasoning_and_calls_by_index():
    events = []
    folder = TurnAssembler(events.append)
    folder.feed(chunk({"role": "assistant", "content": ""}))
    folder.feed(chunk({"reasoning_content": "think "}))
    folder.feed(chunk({"content": "Let me look."}))
    folder.feed(chunk({"tool_calls": [{"index": 1, "id": "call_b", "type": "function",
                                       "function": {"name": "calculator", "arguments": ""}}]}))
    folder.feed(chunk({"tool_calls": [{"index": 0, "id": "call_a", "type": "function",
                                       "function": {"name": "read_file", "arguments": '{"path":'}}]}))
    folder.feed(chunk({"tool_calls": [{"index": 0, "function": {"arguments": ' "a.txt"}'}}]}))
    folder.feed(chunk({"tool_calls": [{"index": 1, "function": {"arguments": "{}"},
                                       "error": "missing required argument 'expression'"}]}))
    folder.feed(chunk(finish="tool_calls", session_id="sess_1"))
    folder.feed({"choices": [], "usage": {"prompt_tokens": 30, "completion_tokens": 9,
                                          "prompt_tokens_details": {"cached_tokens": 20}}, "session_id": "sess_1"})
    turn = folder.finish()
    assert (turn.content, turn.reasoning, turn.finish_reason, turn.session_id) == (
        "Let me look.", "think ", "tool_calls", "sess_1")
    assert [(c.id, c.name, c.arguments, c.error) for c in turn.tool_calls] == [
        ("call_a", "read_file", '{"path": "a.txt"}', None),
        ("call_b", "calculator", "{}", "missing required argument 'expression'"),
    ]
    assert (turn.usage.prompt_tokens, turn.usage.completion_tokens, turn.usage.cached_tokens) == (30, 9, 20)
    assert [(e.kind, e.text) for e in events] == [("reasoning", "think "), ("content", "Let me look.")]


def test_assembler_refuses_a_stream_without_finish_reason():
    folder = TurnAssembler(lambda e: None)
    folder.feed(chunk({"content": "half an ans"}))
    with pytest.raises(AgentError, match="without a finish reason"):
        folder.finish()


@pytest.mark.parametrize("url, ref", [
    ("http://127.0.0.1:8000", "http://127.0.0.1:8000"),
    ("http://127.0.0.1:8000/", "http://127.0.0.1:8000"),
    ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000"),
    (" http://h:1/v1/ ", "http://h:1"),
])
def test_normalize_url(url, ref):
    assert normalize_url(url) == ref


def test_printable_drops_terminal_controls_but_keeps_text():
    assert printable("a\x1b[2Jb\x07c\r\n\td\x9bé🙂") == "a[2Jbc\n\tdé🙂"


def test_default_session_file_is_per_workspace_and_outside_it(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    assert default_session_file(one) == default_session_file(one / ".." / "one")
    assert default_session_file(one) != default_session_file(two)
    assert default_session_file(one).is_relative_to(tmp_path / "state" / "qla-agent" / "transcripts")


def test_stream_from_the_real_server_arrives_in_pieces(server):
    events = []
    client = ChatClient(server.url)
    session_id = client.create_session()
    turn = client.stream_chat({**OPTIONS, "session_id": session_id,
                               "messages": [{"role": "user", "content": "Count to ten."}]}, events.append)
    client.close()
    assert turn.session_id == session_id and turn.finish_reason in {"stop", "length"}
    pieces = [e.text for e in events if e.kind == "content"]
    assert len(pieces) >= 2 and "".join(pieces) == turn.content
    assert turn.usage.completion_tokens >= len(pieces)
