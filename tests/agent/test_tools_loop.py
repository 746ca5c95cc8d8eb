"""The loop's tool path with the real ToolRegistry, real workspace files and (where a model is needed) the
real server.

The embedded default model has random weights and never emits a tool call by itself, so no test here has
the model choose a call. What is tested instead: the loop runs calls the way it runs parsed ones
(concurrently, results in call order, flagged and failing calls answered with errors), and a conversation
whose last assistant message holds calls with no results (the client stopped between the answer and the
tools) is finished against the real server: the calls run on real files, their results reach the
server's session through the real chat template, and the model answers. The model-driven round trip
(the model itself emits the call) waits for the demo-model issue.
"""

import json
import threading

import pytest

from qla_agent.agent import NOT_RUN, Agent, ChatClient, Transcript
from qla_agent.errors import AgentError
from qla_agent.tools import ToolCall, ToolRegistry, ToolSettings, build_registry, tool_from_function
from tests.agent.server_process import OPTIONS

UNUSED_URL = "http://127.0.0.1:9"


@pytest.fixture()
def workspace(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "notes.txt").write_text("hello from the workspace")
    (tmp_path / "secret.txt").write_text("TOP SECRET")
    return ws


def assistant_with_calls(*calls):
    return {"role": "assistant", "content": "", "tool_calls": [
        {"id": call_id, "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}
        for call_id, name, args in calls]}


def test_run_tools_concurrently_with_results_in_call_order(tmp_path, workspace):
    # Three calls wait for each other: they pass only if they run at the same time.
    barrier = threading.Barrier(3, timeout=20)

    def rendezvous(tag: str) -> str:
        """Wait until three calls run at once."""
        barrier.wait()
        return f"met {tag}"

    registry = build_registry(ToolSettings(workspace=workspace))
    registry.add(tool_from_function(rendezvous))
    calls = [
        ToolCall("c1", "rendezvous", '{"tag": "a"}'),
        ToolCall("c2", "read_file", '{"path": "notes.txt"}'),
        ToolCall("c3", "rendezvous", '{"tag": "b"}'),
        ToolCall("c4", "read_file", '{"path": "../secret.txt"}'),
        ToolCall("c5", "calculator", '{"expression": "6*7"}'),
        ToolCall("c6", "rendezvous", '{"tag": "c"}'),
        ToolCall("c7", "no_such_tool", "{}"),
        ToolCall("c8", "calculator", "{}", error="missing required argument 'expression'"),
    ]
    events = []
    with Agent(ChatClient(UNUSED_URL), registry, tmp_path / "t.json") as agent:
        out = agent._run_tools(calls, events.append)
    assert [m["role"] for m in out] == ["tool"] * 8
    assert [m["tool_call_id"] for m in out] == [c.id for c in calls]
    contents = [m["content"] for m in out]
    assert contents[0] == "met a" and contents[2] == "met b" and contents[5] == "met c"
    assert contents[1] == "hello from the workspace"
    assert contents[3].startswith("error:") and "is outside the workspace" in contents[3]
    assert "TOP SECRET" not in contents[3]
    assert contents[4] == "42"
    assert contents[6].startswith("error:") and "unknown tool 'no_such_tool'" in contents[6]
    assert contents[7] == "error: tool call not run: missing required argument 'expression'"
    assert [(e.kind, e.name) for e in events] == [("tool_call", c.name) for c in calls] + [
        ("tool_result", c.name) for c in calls]


def test_pending_calls_are_the_ones_without_results(tmp_path):
    path = tmp_path / "t.json"
    calls = assistant_with_calls(("a", "calculator", {"expression": "1"}), ("b", "calculator", {"expression": "2"}))
    answered = {"role": "tool", "tool_call_id": "a", "content": "1"}
    Transcript(messages=[{"role": "user", "content": "go"}, calls, answered]).save(path)
    with Agent(ChatClient(UNUSED_URL), ToolRegistry(), path) as agent:
        assert [(c.id, c.arguments) for c in agent.pending_calls()] == [("b", '{"expression": "2"}')]
        agent.transcript.messages.append({"role": "user", "content": "later"})
        assert agent.pending_calls() == []


def test_resume_runs_pending_calls_and_the_results_reach_the_server(server, tmp_path, workspace):
    path = tmp_path / "t.json"
    user = {"role": "user", "content": "What does notes.txt say, and what is 6*7?"}
    calls = assistant_with_calls(("call_read", "read_file", {"path": "notes.txt"}),
                                 ("call_calc", "calculator", {"expression": "6*7"}))
    Transcript(messages=[user, calls]).save(path)
    registry = build_registry(ToolSettings(workspace=workspace))
    with Agent(ChatClient(server.url), registry, path, request_options=OPTIONS) as agent:
        turn = agent.resume()
        transcript = agent.transcript
    assert transcript.messages[2:4] == [
        {"role": "tool", "tool_call_id": "call_read", "content": "hello from the workspace"},
        {"role": "tool", "tool_call_id": "call_calc", "content": "42"},
    ]
    assert transcript.sent == len(transcript.messages) and transcript.messages[-1]["role"] == "assistant"
    session = server.session(turn.session_id)
    stored = session["messages"]
    assert stored[0] == user
    assert [c["function"] for c in stored[1]["tool_calls"]] == [
        {"name": "read_file", "arguments": {"path": "notes.txt"}},
        {"name": "calculator", "arguments": {"expression": "6*7"}},
    ]
    assert stored[2:4] == transcript.messages[2:4]
    assert [t["function"]["name"] for t in session["tools"]] == registry.names()


def test_new_message_answers_interrupted_calls_as_not_run(server, tmp_path, workspace):
    path = tmp_path / "t.json"
    (workspace / "keep.txt").write_text("original")
    calls = assistant_with_calls(("call_w", "write_file", {"path": "keep.txt", "content": "overwritten"}))
    Transcript(messages=[{"role": "user", "content": "overwrite keep.txt"}, calls]).save(path)
    registry = build_registry(ToolSettings(workspace=workspace))
    with Agent(ChatClient(server.url), registry, path, request_options=OPTIONS) as agent:
        turn = agent.run("no, leave it")
    assert (workspace / "keep.txt").read_text() == "original"
    stored = server.session(turn.session_id)["messages"]
    assert stored[2] == {"role": "tool", "tool_call_id": "call_w", "content": NOT_RUN}
    assert stored[3] == {"role": "user", "content": "no, leave it"}


def test_resume_with_nothing_pending_sends_nothing(tmp_path):
    path = tmp_path / "t.json"
    Transcript(session_id="sess_x", messages=[{"role": "user", "content": "hi"},
                                              {"role": "assistant", "content": "hello"}], sent=2).save(path)
    with Agent(ChatClient(UNUSED_URL), ToolRegistry(), path) as agent:
        assert agent.resume() is None


@pytest.mark.parametrize("text, problem", [
    ("{not json", "cannot read the transcript"),
    ('{"session_id": null, "messages": [], "sent": 3}', "sent=3 must be a count between 0 and 0"),
    ('{"session_id": 5, "messages": [], "sent": 0}', "session_id 5 is not a string"),
    ('{"session_id": null, "messages": [{"content": "x"}], "sent": 0}', "messages must be a list of message objects"),
    ('{"version": 9, "session_id": null, "messages": [], "sent": 0}', "version 9"),
])
def test_bad_transcript_is_refused_with_its_path(tmp_path, text, problem):
    path = tmp_path / "t.json"
    path.write_text(text)
    with pytest.raises(AgentError, match=problem) as info:
        Agent(ChatClient(UNUSED_URL), ToolRegistry(), path)
    assert str(path) in str(info.value)
    # The lock was released: a fixed file can be opened right away.
    path.write_text('{"session_id": null, "messages": [], "sent": 0}')
    Agent(ChatClient(UNUSED_URL), ToolRegistry(), path).close()
