"""The agent loop against the real server process: session kept on disk, only new messages sent,
continuation after a client restart, a server restart, and a session the server lost or shortened."""

import json

import httpx
import pytest

from qla_agent.agent import Agent, ChatClient
from qla_agent.errors import AgentError
from qla_agent.tools.registry import ToolRegistry
from tests.agent.server_process import OPTIONS

# <|endoftext|> and <|im_end|> of the embedded default model's tokenizer.
EOS_IDS = (256, 258)


def make_agent(server, path):
    return Agent(ChatClient(server.url), ToolRegistry(), path, request_options=OPTIONS)


def on_disk(path):
    return json.loads(path.read_text())


def roles(session):
    return [m["role"] for m in session["messages"]]


def assert_second_turn_continued(server, first, second):
    """The second turn went on in the first one's server session, from its checkpoint."""
    assert second.session_id == first.session_id
    assert second.usage.cached_tokens > 0
    assert roles(server.session(first.session_id)) == ["user", "assistant", "user", "assistant"]


def notices_into(notices):
    """An on_event callback that keeps the text of notice events."""
    return lambda e: notices.append(e.text) if e.kind == "notice" else None


def test_turns_keep_session_on_disk_and_send_only_new_messages(server, tmp_path):
    path = tmp_path / "t.json"
    with make_agent(server, path) as agent:
        first = agent.run("first question")
        saved = on_disk(path)
        assert saved["session_id"] == first.session_id is not None
        assert saved["sent"] == 2 and [m["role"] for m in saved["messages"]] == ["user", "assistant"]
        assert saved["messages"][1]["content"] == first.content
        # Change what the client remembers of message 0: if it were sent again, the server would show it.
        agent.transcript.messages[0]["content"] = "edited locally"
        reused_before = server.reused_tokens()
        second = agent.run("second question")
    assert second.session_id == first.session_id
    session = server.session(first.session_id)
    assert roles(session) == ["user", "assistant", "user", "assistant"]
    assert session["messages"][0]["content"] == "first question"
    assert session["messages"][2]["content"] == "second question"
    assert second.usage.cached_tokens > 0
    assert server.reused_tokens() - reused_before == second.usage.cached_tokens
    assert on_disk(path)["sent"] == 4


def test_client_restart_continues_the_session(server, tmp_path):
    path = tmp_path / "t.json"
    with make_agent(server, path) as agent:
        first = agent.run("before the restart")
    with make_agent(server, path) as agent:
        assert agent.transcript.session_id == first.session_id
        second = agent.run("after the restart")
    assert_second_turn_continued(server, first, second)


def test_second_agent_on_the_same_transcript_is_refused(server, tmp_path):
    path = tmp_path / "t.json"
    with make_agent(server, path):
        with pytest.raises(AgentError, match="another qla-agent is using the transcript"):
            make_agent(server, path)


def test_lost_session_is_recreated_with_the_whole_transcript(server, tmp_path):
    path = tmp_path / "t.json"
    notices = []
    with make_agent(server, path) as agent:
        first = agent.run("remember this")
        assert httpx.delete(f"{server.url}/v1/sessions/{first.session_id}", timeout=30).status_code == 200
        second = agent.run("still there?", notices_into(notices))
        transcript = agent.transcript.messages
    assert len(notices) == 1 and "gone from the server" in notices[0]
    assert second.session_id == first.session_id
    session = server.session(first.session_id)
    assert roles(session) == ["user", "assistant", "user", "assistant"]
    # The server holds the client's copy of the first answer, so the whole transcript was sent.
    assert session["messages"][:3] == [
        {"role": "user", "content": "remember this"},
        {"role": "assistant", "content": transcript[1]["content"]},
        {"role": "user", "content": "still there?"},
    ]
    assert second.usage.cached_tokens == 0
    assert second.usage.prompt_tokens > first.usage.prompt_tokens


def test_server_holding_fewer_messages_gets_the_whole_transcript(server, tmp_path):
    path = tmp_path / "t.json"
    with make_agent(server, path) as agent:
        first = agent.run("one")
        exported = httpx.get(f"{server.url}/v1/sessions/{first.session_id}/export", timeout=30).content
        agent.run("two")
    sid = first.session_id
    assert httpx.delete(f"{server.url}/v1/sessions/{sid}", timeout=30).status_code == 200
    imported = httpx.post(f"{server.url}/v1/sessions/import", params={"session_id": sid}, content=exported, timeout=30)
    assert imported.status_code == 200 and imported.json()["n_messages"] == 2
    notices = []
    with make_agent(server, path) as agent:
        third = agent.run("three", notices_into(notices))
    assert len(notices) == 1 and "fewer than the 4 sent" in notices[0]
    assert third.session_id == sid
    session = server.session(sid)
    assert [m["content"] for m in session["messages"] if m["role"] == "user"] == ["one", "two", "three"]
    assert len(session["messages"]) == 6


def test_failed_first_request_takes_the_user_message_back(server, tmp_path):
    path = tmp_path / "t.json"
    with Agent(ChatClient(server.url), ToolRegistry(), path, request_options={**OPTIONS, "max_tokens": 10**6}) as agent:
        with pytest.raises(AgentError, match="max_tokens=1000000 exceeds this server's limit"):
            agent.run("too greedy")
        assert agent.transcript.messages == []
    assert on_disk(path)["messages"] == []


def test_server_restart_continues_the_session(server, tmp_path):
    path = tmp_path / "t.json"
    with make_agent(server, path) as agent:
        first = agent.run("before the server restarts")
        server.restart()
        second = agent.run("after the server restarted")
    assert_second_turn_continued(server, first, second)


def test_server_crash_mid_answer_takes_the_turn_back_and_the_session_goes_on(server, tmp_path):
    path = tmp_path / "t.json"
    # End-of-text tokens banned: the answer cannot finish before the crash.
    endless = {**OPTIONS, "max_tokens": 20000, "logit_bias": {str(t): -100 for t in EOS_IDS}}

    def crash_on_first_piece(event):
        if event.kind in ("content", "reasoning"):
            server.kill()

    with make_agent(server, path) as agent:
        first = agent.run("before the crash")
        agent.options = endless
        with pytest.raises(AgentError, match="failed during a completion|closed the stream"):
            agent.run("during the crash", crash_on_first_piece)
        assert on_disk(path)["messages"] == agent.transcript.messages[:2] and on_disk(path)["sent"] == 2
        server.start()
        agent.options = OPTIONS
        second = agent.run("after the crash")
    assert second.session_id == first.session_id
    assert second.usage.cached_tokens > 0
    session = server.session(first.session_id)
    assert [m["content"] for m in session["messages"] if m["role"] == "user"] == ["before the crash", "after the crash"]
    assert len(session["messages"]) == 4


def test_resent_transcript_keeps_the_reasoning(server, tmp_path):
    # Thinking on: the answer starts inside <think>, so the server streams it as reasoning.
    options = {"max_tokens": 6, "seed": 7, "chat_template_kwargs": {"enable_thinking": True}}
    with Agent(ChatClient(server.url), ToolRegistry(), tmp_path / "t.json", request_options=options) as agent:
        first = agent.run("think first")
        kept = agent.transcript.messages[1]
        assert first.reasoning and kept == {"role": "assistant", "content": first.content,
                                            "reasoning_content": first.reasoning}
        assert httpx.delete(f"{server.url}/v1/sessions/{first.session_id}", timeout=30).status_code == 200
        agent.run("and again")
    assert server.session(first.session_id)["messages"][1] == kept
