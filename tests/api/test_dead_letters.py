"""Dead letters over HTTP: listed page by page, re-driven, and private to their workspace."""

from __future__ import annotations

import asyncio
import textwrap

import httpx

from tests.api.conftest import Account, new_workspace, signup
from tests.api.test_events import read_stream
from tests.api.test_workflows_and_runs import create, settle

FAILS_ONCE = textwrap.dedent(
    """\
    name: fails-once
    agents:
      m: {model: scripted/m, options: {fail_attempts: 1, fail_with: bad_request, reply: fine}}
    steps:
      - id: call
        agent: m
        prompt: x
      - id: after
        needs: [call]
        value: "{{ steps.call.output }}!"
    outputs:
      result: "{{ steps.after.output }}"
    """
)


async def failed_run(client: httpx.AsyncClient, who: Account, workflow_id: str) -> str:
    started = await client.post(
        f"/api/v1/workflows/{workflow_id}/runs", json={}, headers=who.headers
    )
    run = await settle(client, who, started.json()["id"])
    assert run["status"] == "FAILED", run
    return str(run["id"])


async def test_dead_letters_are_listed_page_by_page_and_a_redrive_completes_the_run(
    client: httpx.AsyncClient,
) -> None:
    ana = await signup(client, "Ana")
    ws = await new_workspace(client, ana)
    workflow = await create(client, ana, ws, FAILS_ONCE)
    run_ids = [await failed_run(client, ana, workflow["id"]) for _ in range(3)]
    url = f"/api/v1/workspaces/{ws}/dead-letters"

    first = await client.get(url, params={"limit": 2}, headers=ana.headers)
    assert first.status_code == 200, first.text
    cursor = first.json()["next_cursor"]
    assert cursor is not None
    second = (
        await client.get(url, params={"limit": 2, "cursor": cursor}, headers=ana.headers)
    ).json()
    assert second["next_cursor"] is None
    letters = first.json()["dead_letters"] + second["dead_letters"]
    assert [d["root_run_id"] for d in letters] == run_ids[::-1]  # newest first, each once
    newest = letters[0]
    assert {k: v for k, v in newest.items() if k not in ("step_id", "failed_at")} == {
        "run_id": run_ids[-1],
        "root_run_id": run_ids[-1],
        "workflow": "fails-once",
        "workflow_id": workflow["id"],
        "step_key": "call",
        "kind": "agent",
        "attempts": 1,
        "error": "400 Bad Request (scripted failure)",
        "redrivable": True,
    }

    redriven = await client.post(
        f"/api/v1/dead-letters/{newest['step_id']}/redrive", headers=ana.headers
    )

    assert redriven.status_code == 200, redriven.text
    assert redriven.json()["id"] == run_ids[-1]
    assert redriven.json()["status"] in ("RUNNING", "COMPLETED")  # the worker may be quick
    run = await settle(client, ana, run_ids[-1])
    assert (run["status"], run["outputs"], run["error"]) == ("COMPLETED", {"result": "fine!"}, None)
    steps = (await client.get(f"/api/v1/runs/{run['id']}/steps", headers=ana.headers)).json()
    assert [(s["key"], s["status"], s["attempt"]) for s in steps] == [
        ("call", "SUCCEEDED", 2),
        ("after", "SUCCEEDED", 1),
    ]
    again = await client.post(
        f"/api/v1/dead-letters/{newest['step_id']}/redrive", headers=ana.headers
    )
    assert again.status_code == 409
    assert again.json()["error"] == {
        "code": "conflict",
        "message": "step 'call' is SUCCEEDED, not FAILED: only a step that failed for good can "
        "be re-driven",
        "details": None,
    }
    left = (await client.get(url, headers=ana.headers)).json()
    assert [d["root_run_id"] for d in left["dead_letters"]] == run_ids[1::-1]
    bad = await client.get(url, params={"cursor": "nonsense"}, headers=ana.headers)
    assert bad.status_code == 400
    assert bad.json()["error"]["message"] == "cursor is not one this server gave out"


async def test_a_stream_replays_a_redriven_run_to_its_end(client: httpx.AsyncClient) -> None:
    ana = await signup(client, "Ana")
    ws = await new_workspace(client, ana)
    workflow = await create(client, ana, ws, FAILS_ONCE)
    run_id = await failed_run(client, ana, workflow["id"])
    before = await asyncio.wait_for(read_stream(client, ana, run_id), timeout=20)
    letters = await client.get(f"/api/v1/workspaces/{ws}/dead-letters", headers=ana.headers)
    step_id = letters.json()["dead_letters"][0]["step_id"]

    await client.post(f"/api/v1/dead-letters/{step_id}/redrive", headers=ana.headers)
    await settle(client, ana, run_id)
    after = await asyncio.wait_for(read_stream(client, ana, run_id), timeout=20)

    assert before[-1]["type"] == "run.failed"  # a failed run's stream ends
    runs = [e["type"] for e in after if e["type"].startswith("run.")]
    assert runs == ["run.created", "run.started", "run.failed", "run.resumed", "run.completed"]
    assert after[-1]["type"] == "run.completed"  # the replay went on past the failure
    assert [e["id"] for e in after[: len(before)]] == [e["id"] for e in before]
    redriven = next(e for e in after if e["type"] == "step.redriven")
    assert (redriven["step"], redriven["data"]["by"]) == ("call", ana.email)


async def test_another_tenants_dead_letters_are_not_found_and_stay(
    client: httpx.AsyncClient,
) -> None:
    victim = await signup(client, "Victim")
    theirs = await new_workspace(client, victim, "Secret Co")
    workflow = await create(client, victim, theirs, FAILS_ONCE)
    run_id = await failed_run(client, victim, workflow["id"])
    url = f"/api/v1/workspaces/{theirs}/dead-letters"
    step_id = (await client.get(url, headers=victim.headers)).json()["dead_letters"][0]["step_id"]
    intruder = await signup(client, "Intruder")
    await new_workspace(client, intruder, "Mine")

    listed = await client.get(url, headers=intruder.headers)
    redrive = await client.post(f"/api/v1/dead-letters/{step_id}/redrive", headers=intruder.headers)
    missing = await client.post("/api/v1/dead-letters/stp_nope/redrive", headers=victim.headers)

    assert listed.status_code == redrive.status_code == missing.status_code == 404
    assert redrive.json()["error"]["message"] == f"step {step_id!r} not found"
    run = (await client.get(f"/api/v1/runs/{run_id}", headers=victim.headers)).json()
    assert run["status"] == "FAILED"
    still = (await client.get(url, headers=victim.headers)).json()["dead_letters"]
    assert [d["step_id"] for d in still] == [step_id]
