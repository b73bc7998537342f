"""The SSE stream: replay, then live; Last-Event-ID resumes with no gap and no duplicate."""

from __future__ import annotations

import asyncio
import json
import textwrap
from typing import Any

import httpx

from tests.api.conftest import Account, new_workspace, signup
from tests.api.test_workflows_and_runs import create, settle

SLOW = textwrap.dedent(
    """\
    name: slow
    agents:
      m: {model: scripted/m, options: {latency: 0.15}}
    steps:
      - id: a
        agent: m
        prompt: one
      - id: b
        needs: [a]
        agent: m
        prompt: two
      - id: c
        needs: [b]
        agent: m
        prompt: three
    """
)


async def read_stream(
    client: httpx.AsyncClient,
    who: Account,
    run_id: str,
    *,
    last_id: int | None = None,
    stop_after: int | None = None,
    params: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    headers = dict(who.headers)
    if last_id is not None:
        headers["Last-Event-ID"] = str(last_id)
    events: list[dict[str, Any]] = []
    async with client.stream(
        "GET", f"/api/v1/runs/{run_id}/events", headers=headers, params=params
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                event = json.loads(line[len("data: ") :])
                if event.get("ephemeral"):  # live deltas: tests/api/test_live_events.py
                    continue
                events.append(event)
                if stop_after is not None and len(events) >= stop_after:
                    break
    return events


async def test_a_stream_replays_follows_and_resumes_without_gaps(client: httpx.AsyncClient) -> None:
    ana = await signup(client, "Ana")
    ws = await new_workspace(client, ana)
    workflow = await create(client, ana, ws, SLOW)
    run = (
        await client.post(f"/api/v1/workflows/{workflow['id']}/runs", json={}, headers=ana.headers)
    ).json()

    first = await asyncio.wait_for(read_stream(client, ana, run["id"], stop_after=4), timeout=20)
    # the run is still going: reconnect from the last event seen
    rest = await asyncio.wait_for(
        read_stream(client, ana, run["id"], last_id=first[-1]["id"]), timeout=20
    )
    full = await asyncio.wait_for(read_stream(client, ana, run["id"]), timeout=20)

    assert (await settle(client, ana, run["id"]))["status"] == "COMPLETED"
    ids = [e["id"] for e in first + rest]
    assert ids == sorted(set(ids))  # no duplicate, in order
    assert ids == [e["id"] for e in full]  # no gap: the same as one uninterrupted read
    assert full[0]["type"] == "run.created"
    assert full[-1]["type"] == "run.completed"  # the stream ended by itself with the run
    assert [e["step"] for e in full if e["type"] == "step.succeeded"] == ["a", "b", "c"]


async def test_streams_filter_by_level_and_source(client: httpx.AsyncClient) -> None:
    ana = await signup(client, "Ana")
    ws = await new_workspace(client, ana)
    workflow = await create(client, ana, ws, SLOW.replace("latency: 0.15", "latency: 0"))
    run = (
        await client.post(f"/api/v1/workflows/{workflow['id']}/runs", json={}, headers=ana.headers)
    ).json()
    await settle(client, ana, run["id"])

    llm_only = await read_stream(client, ana, run["id"], params={"source": "llm"})
    warnings = await read_stream(client, ana, run["id"], params={"level": "warning"})

    assert [e["type"] for e in llm_only] == ["llm.call"] * 3
    assert warnings == []


async def test_another_tenant_cannot_stream(client: httpx.AsyncClient) -> None:
    ana = await signup(client, "Ana")
    ws = await new_workspace(client, ana)
    workflow = await create(client, ana, ws, SLOW)
    run = (
        await client.post(f"/api/v1/workflows/{workflow['id']}/runs", json={}, headers=ana.headers)
    ).json()
    eve = await signup(client, "Eve")

    response = await client.get(f"/api/v1/runs/{run['id']}/events", headers=eve.headers)
    assert response.status_code == 404
