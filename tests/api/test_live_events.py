"""Live step events over SSE, against a real server (uvicorn on loopback, embedded workers):
token deltas and tool notices arrive while the step runs, without ids, and are not stored."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from agentmill.api.app import create_app
from agentmill.client import AsyncClient
from agentmill.config import Settings
from agentmill.store import queries
from agentmill.store.db import Database
from tests.api.conftest import Account, new_workspace, signup
from tests.api.test_workflows_and_runs import create
from tests.servers import serving

ANSWER = " ".join(f"word{i}" for i in range(60))
LIVE = f"""\
name: live
agents:
  writer:
    model: scripted/writer
    tools: ["tests.engine.agent_tools:add"]
    options:
      stream_delay: 0.02
      replies:
        - {{tool_calls: [{{name: add, arguments: {{a: 2, b: 3}}}}]}}
        - "{ANSWER}"
steps:
  - id: go
    type: human
    message: start writing?
  - id: write
    needs: [go]
    agent: writer
    prompt: Write.
"""


class Message(dict[str, Any]):
    """One SSE message: its fields (``id``, ``event``) and its parsed ``data``."""


async def messages(client: httpx.AsyncClient, who: Account, run_id: str) -> AsyncIterator[Message]:
    """The run's SSE messages as they come (the stream ends with the run)."""
    async with client.stream("GET", f"/api/v1/runs/{run_id}/events", headers=who.headers) as r:
        assert r.status_code == 200
        fields: dict[str, str] = {}
        async for line in r.aiter_lines():
            if line == "":
                if "data" in fields:
                    yield Message(fields, data=json.loads(fields["data"]))
                fields = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(": ")
                fields[name] = value


async def follow_while_it_runs(
    client: httpx.AsyncClient, who: Account, run_id: str
) -> list[Message]:
    seen: list[Message] = []
    async for message in messages(client, who, run_id):
        seen.append(message)
        if message["event"] == "step.waiting":  # following now: let the agent start
            approved = await client.post(
                f"/api/v1/runs/{run_id}/steps/go/approve", json={}, headers=who.headers
            )
            assert approved.status_code == 200, approved.text
    return seen


async def log_only(url: str, who: Account, run_id: str, waiting: asyncio.Event) -> list[Any]:
    seen = []
    async with AsyncClient(url, token=who.token) as am:
        async for event in am.events(run_id, live=False):
            seen.append(event)
            if event["type"] == "step.waiting":
                waiting.set()
    return seen


async def test_deltas_and_tool_notices_stream_live_over_sse(
    database_url: str, db: Database
) -> None:
    app = create_app(Settings(), database_url=database_url)
    with serving(app) as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            ana = await signup(client, "Ana")
            ws = await new_workspace(client, ana)
            workflow = await create(client, ana, ws, LIVE)
            run = (
                await client.post(
                    f"/api/v1/workflows/{workflow['id']}/runs", json={}, headers=ana.headers
                )
            ).json()
            # The Python client, following with live=False at the same time: the log alone.
            waiting = asyncio.Event()
            plain = asyncio.create_task(log_only(url, ana, run["id"], waiting))
            await asyncio.wait_for(waiting.wait(), 30)
            live = await asyncio.wait_for(follow_while_it_runs(client, ana, run["id"]), 30)
            logged = await asyncio.wait_for(plain, 30)
            replay = [m async for m in messages(client, ana, run["id"])]
    stored = await db.read(lambda tx: queries.list_events(tx, root_run_id=run["id"]))

    events = [m["event"] for m in live]
    assert events[-1] == "run.completed"
    succeeded = next(
        i
        for i, m in enumerate(live)
        if m["event"] == "step.succeeded" and m["data"]["step"] == "write"
    )
    deltas = [m for m in live if m["event"] == "step.delta"]
    assert len(deltas) >= 3
    assert all(live.index(m) < succeeded for m in deltas)
    assert "".join(m["data"]["data"]["text"] for m in deltas) == ANSWER
    assert live[succeeded]["data"]["data"]["output"] == ANSWER
    tools = [m for m in live if m["event"] == "step.tool"]
    assert [m["data"]["data"]["phase"] for m in tools] == ["start", "end"]
    assert all(live.index(m) < succeeded for m in tools)
    # live messages carry no id, so Last-Event-ID stays on the durable log
    for message in deltas + tools:
        assert "id" not in message
        assert message["data"]["ephemeral"] is True
        assert "id" not in message["data"]
        assert message["data"]["step"] == "write"
    durable = [m for m in live if m not in deltas + tools]
    assert all(m["id"] == str(m["data"]["id"]) for m in durable)
    # a replay is the log alone: no deltas, nothing stored for them
    assert [m["data"]["id"] for m in replay] == [m["data"]["id"] for m in durable]
    assert not [e for e in stored if e["type"] in ("step.delta", "step.tool")]
    assert [e["id"] for e in logged] == [m["data"]["id"] for m in durable]
