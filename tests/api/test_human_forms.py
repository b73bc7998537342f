"""Answering a human step's form over HTTP: the answer is checked, then becomes the output."""

from __future__ import annotations

import textwrap

import httpx
from fastapi import FastAPI

from tests.api.conftest import new_workspace, signup
from tests.api.test_workflows_and_runs import REVIEW, create, settle

TRIAGE = textwrap.dedent(
    """\
    name: triage
    steps:
      - id: triage
        type: human
        message: Triage it
        form:
          type: object
          properties:
            priority: {type: string, enum: [low, high]}
            tags: {type: array, items: {type: string}}
          required: [priority]
      - id: route
        needs: [triage]
        value: "{{ steps.triage.output.priority }} {{ steps.triage.output.tags | join(',') }}"
    outputs:
      routed: "{{ steps.route.output }}"
    """
)


async def test_a_form_is_answered_over_http_and_a_bad_answer_changes_nothing(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    ana = await signup(client, "Ana")
    ws = await new_workspace(client, ana)
    workflow = await create(client, ana, ws, TRIAGE)
    run = (
        await client.post(f"/api/v1/workflows/{workflow['id']}/runs", json={}, headers=ana.headers)
    ).json()
    await settle(client, ana, run["id"], until=("WAITING",))
    respond = f"/api/v1/runs/{run['id']}/steps/triage/respond"
    engine = app.state.engine
    events_before = await engine.events(run_id=run["id"])

    bad = await client.post(
        respond, json={"answer": {"priority": "high", "tags": ["a", 3]}}, headers=ana.headers
    )
    assert bad.status_code == 422
    assert bad.json() == {
        "error": {
            "code": "invalid_answer",
            "message": "answer to step 'triage' is invalid at $.tags[1]: 3 is not of type 'string'",
            "details": {"path": "$.tags[1]"},
        }
    }
    no_answer = await client.post(
        f"/api/v1/runs/{run['id']}/steps/triage/approve", json={}, headers=ana.headers
    )
    assert no_answer.status_code == 422
    assert no_answer.json()["error"]["message"] == (
        f"step 'triage' asks for a form: send its answer "
        f"(POST /api/v1/runs/{run['id']}/steps/triage/respond)"
    )
    steps = (await client.get(f"/api/v1/runs/{run['id']}/steps", headers=ana.headers)).json()
    assert [s["status"] for s in steps] == ["WAITING"]
    assert await engine.events(run_id=run["id"]) == events_before

    good = await client.post(
        respond,
        json={"answer": {"priority": "high", "tags": ["a", "b"]}, "comment": "urgent"},
        headers=ana.headers,
    )
    assert good.status_code == 200, good.text
    done = await settle(client, ana, run["id"])
    assert done["outputs"] == {"routed": "high a,b"}
    steps = (await client.get(f"/api/v1/runs/{run['id']}/steps", headers=ana.headers)).json()
    assert steps[0]["output"] == {
        "priority": "high",
        "tags": ["a", "b"],
        "approved": True,
        "by": ana.email,
        "comment": "urgent",
    }


async def test_responding_to_a_step_without_a_form_conflicts(client: httpx.AsyncClient) -> None:
    ana = await signup(client, "Ana")
    ws = await new_workspace(client, ana)
    workflow = await create(client, ana, ws, REVIEW)
    run = (
        await client.post(f"/api/v1/workflows/{workflow['id']}/runs", json={}, headers=ana.headers)
    ).json()
    await settle(client, ana, run["id"], until=("WAITING",))

    answer = await client.post(
        f"/api/v1/runs/{run['id']}/steps/ask/respond", json={"answer": {}}, headers=ana.headers
    )
    missing = await client.post(
        f"/api/v1/runs/{run['id']}/steps/ask/respond", json={}, headers=ana.headers
    )

    assert answer.status_code == 409
    assert answer.json()["error"]["message"] == (
        "step 'ask' has no form to answer; approve or reject it"
    )
    assert missing.status_code == 422
    assert missing.json()["error"]["details"][0]["field"] == "answer"
