"""`GET /workspaces/{ws}/usage`: a workspace's model calls, tokens and cost, by model and
workflow, over a period, and never another workspace's."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx

from tests.api.conftest import Account, new_workspace, signup

PRICED = {
    "name": "priced",
    "agents": {
        "cheap": {
            "model": "scripted/cheap",
            "options": {"reply": "a fairly short answer", "price": {"input": 1, "output": 2}},
        },
        "dear": {
            "model": "scripted/dear",
            "options": {"reply": "another answer", "price": {"input": 10, "output": 20}},
        },
    },
    "steps": [
        {"id": "one", "agent": "cheap", "prompt": "first question"},
        {"id": "two", "agent": "dear", "prompt": "second question", "needs": ["one"]},
        {"id": "three", "agent": "cheap", "prompt": "third", "needs": ["two"]},
    ],
}


async def _workflow(client: httpx.AsyncClient, owner: Account, ws: str) -> str:
    workflow = await client.post(
        f"/api/v1/workspaces/{ws}/workflows", json=PRICED, headers=owner.headers
    )
    assert workflow.status_code == 201, workflow.text
    return str(workflow.json()["id"])


async def _finished_run(
    client: httpx.AsyncClient, owner: Account, workflow_id: str
) -> dict[str, Any]:
    run = await client.post(f"/api/v1/workflows/{workflow_id}/runs", json={}, headers=owner.headers)
    for _ in range(500):
        body: dict[str, Any] = (
            await client.get(f"/api/v1/runs/{run.json()['id']}", headers=owner.headers)
        ).json()
        if body["status"] == "COMPLETED":
            return body
        await asyncio.sleep(0.01)
    raise AssertionError(f"run did not finish: {body}")


async def test_usage_adds_up_the_workspace_calls_by_model_and_workflow(
    client: httpx.AsyncClient,
) -> None:
    owner = await signup(client)
    ws = await new_workspace(client, owner)
    workflow_id = await _workflow(client, owner, ws)
    runs = [await _finished_run(client, owner, workflow_id) for _ in range(2)]
    steps = await client.get(f"/api/v1/runs/{runs[0]['id']}/steps", headers=owner.headers)
    by_step = {s["key"]: s for s in steps.json()}

    usage = await client.get(f"/api/v1/workspaces/{ws}/usage", headers=owner.headers)

    assert usage.status_code == 200, usage.text
    body = usage.json()
    total = body["total"]
    assert total["calls"] == 6
    assert total["failed_calls"] == 0
    assert total["input_tokens"] == sum(r["input_tokens"] for r in runs)
    assert total["output_tokens"] == sum(r["output_tokens"] for r in runs)
    assert Decimal(total["cost"]) == sum(Decimal(r["cost"]) for r in runs) > 0
    models = {line["key"]: line for line in body["by_model"]}
    assert set(models) == {"scripted/cheap", "scripted/dear"}
    assert models["scripted/dear"]["calls"] == 2
    assert Decimal(models["scripted/dear"]["cost"]) == 2 * Decimal(by_step["two"]["cost"])
    assert [(line["key"], line["calls"]) for line in body["by_workflow"]] == [("priced", 6)]


async def test_usage_is_limited_to_the_period_and_to_the_workspace(
    client: httpx.AsyncClient,
) -> None:
    owner = await signup(client)
    ws = await new_workspace(client, owner)
    await _finished_run(client, owner, await _workflow(client, owner, ws))
    stranger = await signup(client, "Eve")
    other_ws = await new_workspace(client, stranger)

    theirs = await client.get(f"/api/v1/workspaces/{other_ws}/usage", headers=stranger.headers)
    assert theirs.json()["total"]["calls"] == 0
    assert theirs.json()["by_model"] == []
    probe = await client.get(f"/api/v1/workspaces/{ws}/usage", headers=stranger.headers)
    assert probe.status_code == 404

    last_week = datetime.now(UTC) - timedelta(days=7)
    past = await client.get(
        f"/api/v1/workspaces/{ws}/usage",
        params={
            "since": (last_week - timedelta(days=1)).isoformat(),
            "until": last_week.isoformat(),
        },
        headers=owner.headers,
    )
    assert past.json()["total"]["calls"] == 0
    naive_now = datetime.now(UTC).replace(tzinfo=None)
    recent = await client.get(
        f"/api/v1/workspaces/{ws}/usage",
        params={"since": (naive_now - timedelta(hours=1)).isoformat()},
        headers=owner.headers,
    )
    assert recent.json()["total"]["calls"] == 3


async def test_an_empty_period_is_a_validation_error(client: httpx.AsyncClient) -> None:
    owner = await signup(client)
    ws = await new_workspace(client, owner)
    now = datetime.now(UTC).isoformat()

    response = await client.get(
        f"/api/v1/workspaces/{ws}/usage", params={"since": now, "until": now}, headers=owner.headers
    )

    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["field"] == "query.since"
