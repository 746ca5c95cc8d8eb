"""16 clients × 5 turns at once, each on its own session: no cross-talk, no lost turn, and (greedy)
the sessions' answers equal those of the same conversations run alone."""

import asyncio

import httpx
import openai

from tests.server.live import APPEND_ONLY, MODEL_ID, digit_bias

CLIENTS = 16
TURNS = 5


async def conversation(server, tiny, client_index):
    """Create a session and run TURNS turns on it; return (session id, answers)."""
    async with httpx.AsyncClient(timeout=300) as http:
        created = await http.post(server.v1 + "/sessions", json={**APPEND_ONLY, "messages": [
            {"role": "system", "content": f"You are counter number {client_index}."}]})
    sid = created.json()["id"]
    client = openai.AsyncOpenAI(base_url=server.v1, api_key="x", max_retries=0, timeout=300)
    answers = []
    for turn in range(TURNS):
        out = await client.chat.completions.create(
            model=MODEL_ID, messages=[{"role": "user", "content": f"client {client_index} turn {turn}: {client_index * 7 + turn}"}],
            max_tokens=3, temperature=0, logit_bias=digit_bias(tiny), extra_body={"session_id": sid})
        assert out.model_extra["session_id"] == sid
        answers.append(out.choices[0].message.content)
    return sid, answers


def test_sixteen_clients_five_turns_each(server, tiny):
    async def all_clients():
        return await asyncio.gather(*(conversation(server, tiny, i) for i in range(CLIENTS)))

    runs = asyncio.run(all_clients())
    for i, (sid, answers) in enumerate(runs):
        stored = httpx.get(f"{server.v1}/sessions/{sid}", timeout=30).json()["messages"]
        assert [m["content"] for m in stored[1::2]] == [
            f"client {i} turn {t}: {i * 7 + t}" for t in range(TURNS)], f"client {i} lost or mixed a turn"
        assert [m["content"] for m in stored[2::2]] == answers
    # The same conversations one at a time: the sequential reference.
    for i in range(CLIENTS):
        _, ref = asyncio.run(conversation(server, tiny, i))
        assert runs[i][1] == ref, f"client {i}: concurrent answers differ from the sequential run"
