"""Workflows and runs over HTTP: validation with line numbers, versions, runs that execute."""

from __future__ import annotations

import asyncio
import textwrap
from typing import Any

import httpx

from tests.api.conftest import Account, new_workspace, signup

YAML = {"Content-Type": "application/yaml"}

GREETING = textwrap.dedent(
    """\
    name: greet
    inputs:
      who: {type: string}
    steps:
      - id: hello
        value: "hello {{ inputs.who }}"
    outputs:
      text: "{{ steps.hello.output }}"
    """
)

REVIEW = textwrap.dedent(
    """\
    name: review
    steps:
      - id: ask
        type: human
        message: ok?
      - id: after
        needs: [ask]
        value: "{{ steps.ask.output.approved }} {{ steps.ask.output.comment }}"
    outputs:
      result: "{{ steps.after.output }}"
    """
)


async def create(
    client: httpx.AsyncClient, who: Account, ws: str, text: str = GREETING
) -> dict[str, Any]:
    response = await client.post(
        f"/api/v1/workspaces/{ws}/workflows", content=text, headers={**who.headers, **YAML}
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


async def settle(
    client: httpx.AsyncClient,
    who: Account,
    run_id: str,
    until: tuple[str, ...] = ("COMPLETED", "FAILED", "CANCELLED"),
) -> dict[str, Any]:
    for _ in range(200):
        run = (await client.get(f"/api/v1/runs/{run_id}", headers=who.headers)).json()
        if run["status"] in until:
            return dict(run)
        await asyncio.sleep(0.02)
    raise AssertionError(f"run {run_id} stayed {run['status']}")


async def test_create_run_and_read_a_workflow(client: httpx.AsyncClient) -> None:
    ana = await signup(client, "Ana")
    ws = await new_workspace(client, ana)
    workflow = await create(client, ana, ws)
    assert (workflow["name"], workflow["latest_version"]) == ("greet", 1)

    started = await client.post(
        f"/api/v1/workflows/{workflow['id']}/runs",
        json={"inputs": {"who": "bees"}},
        headers=ana.headers,
    )
    assert started.status_code == 202
    run = await settle(client, ana, started.json()["id"])

    assert run["status"] == "COMPLETED"
    assert run["outputs"] == {"text": "hello bees"}
    steps = (await client.get(f"/api/v1/runs/{run['id']}/steps", headers=ana.headers)).json()
    assert [(s["key"], s["status"]) for s in steps] == [("hello", "SUCCEEDED")]
    metrics = (await client.get(f"/api/v1/runs/{run['id']}/metrics", headers=ana.headers)).json()
    assert [s["key"] for s in metrics["steps"]] == ["hello"]


async def test_yaml_errors_come_back_with_lines_and_nothing_is_saved(
    client: httpx.AsyncClient,
) -> None:
    ana = await signup(client, "Ana")
    ws = await new_workspace(client, ana)
    bad = "name: broken\nsteps:\n  - id: a\n    needs: [b]\n    value: 1\n  - id: b\n    needs: [a]\n    value: 2\n"

    response = await client.post(
        f"/api/v1/workspaces/{ws}/workflows", content=bad, headers={**ana.headers, **YAML}
    )

    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_workflow"
    assert error["details"] == [
        {"path": "steps[1].needs", "line": 7, "column": 5, "message": "cycle: b -> a -> b"}
    ]
    assert (
        await client.get(f"/api/v1/workspaces/{ws}/workflows", headers=ana.headers)
    ).json() == []
    syntax = await client.post(
        f"/api/v1/workspaces/{ws}/workflows",
        content="name: [unclosed",
        headers={**ana.headers, **YAML},
    )
    assert syntax.status_code == 422
    problem = syntax.json()["error"]["details"][0]
    assert problem["line"] == 2  # where PyYAML noticed: the end of the document
    assert "(it started at line 1, column 7)" in problem["message"]


async def test_a_template_escape_attempt_is_422_and_nothing_is_saved(
    client: httpx.AsyncClient,
) -> None:
    ana = await signup(client, "Ana")
    ws = await new_workspace(client, ana)
    bad = 'name: sneaky\nsteps:\n  - id: a\n    value: "{{ lipsum.__globals__ }}"\n'

    response = await client.post(
        f"/api/v1/workspaces/{ws}/workflows", content=bad, headers={**ana.headers, **YAML}
    )

    assert response.status_code == 422
    assert response.json()["error"]["details"] == [
        {
            "path": "steps[0].value",
            "line": 4,
            "column": 5,
            "message": "not allowed in a template: '__globals__' is a Python internal",
        }
    ]
    assert (
        await client.get(f"/api/v1/workspaces/{ws}/workflows", headers=ana.headers)
    ).json() == []


async def test_json_bodies_work_too_and_duplicates_conflict(client: httpx.AsyncClient) -> None:
    ana = await signup(client, "Ana")
    ws = await new_workspace(client, ana)
    spec = {"name": "j", "steps": [{"id": "a", "value": 1}]}

    first = await client.post(f"/api/v1/workspaces/{ws}/workflows", json=spec, headers=ana.headers)
    again = await client.post(f"/api/v1/workspaces/{ws}/workflows", json=spec, headers=ana.headers)

    assert first.status_code == 201
    assert again.status_code == 409


async def test_updating_makes_a_version_and_runs_keep_theirs(client: httpx.AsyncClient) -> None:
    ana = await signup(client, "Ana")
    ws = await new_workspace(client, ana)
    workflow = await create(client, ana, ws, REVIEW)
    started = (
        await client.post(f"/api/v1/workflows/{workflow['id']}/runs", json={}, headers=ana.headers)
    ).json()
    await settle(client, ana, started["id"], until=("WAITING",))

    changed = REVIEW.replace(
        '"{{ steps.ask.output.approved }} {{ steps.ask.output.comment }}"', '"v2"'
    )
    updated = await client.put(
        f"/api/v1/workflows/{workflow['id']}", content=changed, headers={**ana.headers, **YAML}
    )
    assert updated.json()["latest_version"] == 2
    versions = (
        await client.get(f"/api/v1/workflows/{workflow['id']}/versions", headers=ana.headers)
    ).json()
    assert [v["version"] for v in versions] == [1, 2]

    approved = await client.post(
        f"/api/v1/runs/{started['id']}/steps/ask/approve",
        json={"comment": "fine"},
        headers=ana.headers,
    )
    assert approved.status_code == 200
    run = await settle(client, ana, started["id"])
    assert run["outputs"] == {"result": "True fine"}  # version 1's template, not "v2"
    again = await client.post(
        f"/api/v1/runs/{started['id']}/steps/ask/approve", json={}, headers=ana.headers
    )
    assert again.status_code == 409


async def test_reject_and_cancel(client: httpx.AsyncClient) -> None:
    ana = await signup(client, "Ana")
    ws = await new_workspace(client, ana)
    workflow = await create(client, ana, ws, REVIEW)
    one = (
        await client.post(f"/api/v1/workflows/{workflow['id']}/runs", json={}, headers=ana.headers)
    ).json()
    two = (
        await client.post(f"/api/v1/workflows/{workflow['id']}/runs", json={}, headers=ana.headers)
    ).json()
    await settle(client, ana, one["id"], until=("WAITING",))

    await client.post(
        f"/api/v1/runs/{one['id']}/steps/ask/reject", json={"comment": "no"}, headers=ana.headers
    )
    cancelled = await client.post(f"/api/v1/runs/{two['id']}/cancel", headers=ana.headers)

    assert (await settle(client, ana, one["id"]))["outputs"] == {"result": "False no"}
    assert cancelled.json()["status"] == "CANCELLED"
    assert cancelled.json()["error"] == f"cancelled by {ana.email}"


async def test_run_inputs_are_checked(client: httpx.AsyncClient) -> None:
    ana = await signup(client, "Ana")
    ws = await new_workspace(client, ana)
    workflow = await create(client, ana, ws)

    missing = await client.post(
        f"/api/v1/workflows/{workflow['id']}/runs", json={"inputs": {}}, headers=ana.headers
    )
    wrong = await client.post(
        f"/api/v1/workflows/{workflow['id']}/runs",
        json={"inputs": {"who": 3, "x": 1}},
        headers=ana.headers,
    )

    assert missing.status_code == wrong.status_code == 422
    assert missing.json()["error"]["details"] == ["missing required input 'who' (string)"]
    assert sorted(wrong.json()["error"]["details"]) == [
        "input 'who': 3 is not of type string",
        "unknown input 'x' (inputs: who)",
    ]
    runs = (await client.get(f"/api/v1/workspaces/{ws}/runs", headers=ana.headers)).json()
    assert runs["runs"] == []  # nothing was started


async def test_listing_runs_pages_through_all_of_them_once(client: httpx.AsyncClient) -> None:
    ana = await signup(client, "Ana")
    ws = await new_workspace(client, ana)
    workflow = await create(client, ana, ws)
    ids = []
    for i in range(7):
        run = await client.post(
            f"/api/v1/workflows/{workflow['id']}/runs",
            json={"inputs": {"who": str(i)}},
            headers=ana.headers,
        )
        ids.append(run.json()["id"])

    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = (
            await client.get(f"/api/v1/workspaces/{ws}/runs", params=params, headers=ana.headers)
        ).json()
        seen += [r["id"] for r in page["runs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break

    assert seen == list(reversed(ids))  # newest first, each once
    bad = await client.get(
        f"/api/v1/workspaces/{ws}/runs", params={"cursor": "nope"}, headers=ana.headers
    )
    assert bad.status_code == 400


async def test_other_tenants_cannot_see_or_touch_workflows_and_runs(
    client: httpx.AsyncClient,
) -> None:
    victim = await signup(client, "Victim")
    ws = await new_workspace(client, victim)
    workflow = await create(client, victim, ws, REVIEW)
    run = (
        await client.post(
            f"/api/v1/workflows/{workflow['id']}/runs", json={}, headers=victim.headers
        )
    ).json()
    await settle(client, victim, run["id"], until=("WAITING",))
    intruder = await signup(client, "Intruder")
    await new_workspace(client, intruder)
    wid, rid = workflow["id"], run["id"]

    probes = [
        ("GET", f"/api/v1/workflows/{wid}", None),
        ("PUT", f"/api/v1/workflows/{wid}", REVIEW),
        ("DELETE", f"/api/v1/workflows/{wid}", None),
        ("GET", f"/api/v1/workflows/{wid}/versions", None),
        ("POST", f"/api/v1/workflows/{wid}/runs", "{}"),
        ("GET", f"/api/v1/runs/{rid}", None),
        ("GET", f"/api/v1/runs/{rid}/steps", None),
        ("GET", f"/api/v1/runs/{rid}/metrics", None),
        ("POST", f"/api/v1/runs/{rid}/cancel", None),
        ("POST", f"/api/v1/runs/{rid}/steps/ask/approve", "{}"),
        ("POST", f"/api/v1/runs/{rid}/steps/ask/reject", "{}"),
        ("GET", f"/api/v1/workspaces/{ws}/workflows", None),
        ("GET", f"/api/v1/workspaces/{ws}/runs", None),
    ]
    for method, path, body in probes:
        headers = {
            **intruder.headers,
            "Content-Type": "application/yaml" if method == "PUT" else "application/json",
        }
        response = await client.request(method, path, content=body, headers=headers)
        assert response.status_code == 404, (method, path, response.text)

    still = (await client.get(f"/api/v1/runs/{rid}", headers=victim.headers)).json()
    assert still["status"] == "WAITING"
    assert (await client.get(f"/api/v1/workflows/{wid}", headers=victim.headers)).json()[
        "latest_version"
    ] == 1


async def test_viewers_read_but_cannot_start_runs(client: httpx.AsyncClient) -> None:
    owner = await signup(client, "Owner")
    viewer = await signup(client, "Viewer")
    ws = await new_workspace(client, owner)
    await client.post(
        f"/api/v1/workspaces/{ws}/members",
        json={"email": viewer.email, "role": "viewer"},
        headers=owner.headers,
    )
    workflow = await create(client, owner, ws)

    assert (
        await client.get(f"/api/v1/workflows/{workflow['id']}", headers=viewer.headers)
    ).status_code == 200
    start = await client.post(
        f"/api/v1/workflows/{workflow['id']}/runs",
        json={"inputs": {"who": "x"}},
        headers=viewer.headers,
    )
    assert start.status_code == 403
