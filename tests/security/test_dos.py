"""Denial of service through work: a template that spins, a workflow too big or too deep to
validate cheaply. Each is refused with a clear message and leaves the server answering."""

from __future__ import annotations

import json
import threading
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from agentmill.api.routes import workflows as workflow_routes
from agentmill.config import Settings
from agentmill.domain.source import Positions
from agentmill.domain.templates import TemplateError, render_value
from agentmill.domain.validation import MAX_SUBWORKFLOW_DEPTH, parse_spec
from tests.api.conftest import new_workspace, signup
from tests.api.test_workflows_and_runs import settle

SPIN = "{% for i in range(100000) %}{% for j in range(500) %}{% endfor %}{% endfor %}done"


def chain(n: int, *, reverse: bool = False) -> dict[str, Any]:
    steps: list[dict[str, Any]] = [
        {
            "id": f"s{i}",
            "value": f"{{{{ steps.s{i - 1}.output }}}}" if i else "start",
            **({"needs": [f"s{i - 1}"]} if i else {}),
        }
        for i in range(n)
    ]
    return {"name": "chain", "steps": steps[::-1] if reverse else steps}


def nested(depth: int) -> dict[str, Any]:
    spec: dict[str, Any] = {"name": "leaf", "steps": [{"id": "s", "value": "x"}]}
    for level in range(depth):
        spec = {"name": f"level{level}", "steps": [{"id": "sub", "workflow": None, "spec": spec}]}
        del spec["steps"][0]["workflow"]
    return spec


# ---------------------------------------------------------------- templates


def test_a_template_that_spins_is_stopped_by_its_work_budget() -> None:
    with pytest.raises(TemplateError, match="more than 200,000 loop iterations"):
        render_value(SPIN, {})


def test_a_filter_over_a_big_collection_in_a_loop_is_charged() -> None:
    with pytest.raises(TemplateError, match="loop iterations and filtered items"):
        render_value("{% for i in range(1000) %}{{ range(1000)|sum }}{% endfor %}", {})


def test_ordinary_loops_fit_the_budget_and_each_render_has_its_own() -> None:
    template = "{% for i in range(300) %}{% for j in range(300) %}{% endfor %}{% endfor %}ok"
    for _ in range(5):  # 90,000 iterations each: a shared budget would run out
        assert render_value(template, {}) == "ok"
    assert render_value("{{ inputs.xs|sort|join(',') }}", {"inputs": {"xs": [3, 1, 2]}}) == "1,2,3"


async def test_a_run_with_a_spinning_template_fails_with_the_reason(
    client: httpx.AsyncClient,
) -> None:
    ana = await signup(client)
    ws = await new_workspace(client, ana)
    spec = {"name": "spin", "steps": [{"id": "spin", "value": SPIN}]}
    created = await client.post(
        f"/api/v1/workspaces/{ws}/workflows", json=spec, headers=ana.headers
    )
    assert created.status_code == 201, created.text
    started = await client.post(
        f"/api/v1/workflows/{created.json()['id']}/runs", json={}, headers=ana.headers
    )
    run = await settle(client, ana, started.json()["id"])
    assert run["status"] == "FAILED"
    steps = (await client.get(f"/api/v1/runs/{run['id']}/steps", headers=ana.headers)).json()
    assert [s["attempt"] for s in steps] == [1]  # not retried
    assert "200,000 loop iterations" in json.dumps(steps)


# ---------------------------------------------------------------- big and deep workflows


def test_a_20000_step_chain_validates_in_either_order_without_recursion() -> None:
    for reverse in (False, True):
        spec = parse_spec(chain(20_000, reverse=reverse), Positions(source="big"))
        assert len(spec.steps) == 20_000


def test_a_reference_to_a_step_that_is_not_upstream_is_still_found() -> None:
    data = chain(50)
    data["steps"].append({"id": "side", "value": "{{ steps.s49.output }}"})
    with pytest.raises(Exception, match="not upstream of it"):
        parse_spec(data, Positions(source="x"))


def test_the_step_limit_defaults_to_5000() -> None:
    assert Settings().max_workflow_steps == 5_000


async def test_past_the_step_limit_is_422_and_nothing_is_saved(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    # The test app takes 64 KiB bodies: a lower limit shows the same rule on a smaller body.
    app.state.settings = app.state.settings.model_copy(update={"max_workflow_steps": 40})
    ana = await signup(client)
    ws = await new_workspace(client, ana)
    url = f"/api/v1/workspaces/{ws}/workflows"
    assert (await client.post(url, json=chain(40), headers=ana.headers)).status_code == 201
    too_many = chain(41)
    too_many["name"] = "longer"
    response = await client.post(url, json=too_many, headers=ana.headers)
    assert response.status_code == 422, response.text
    assert "at most 40 steps" in response.text
    assert response.json()["error"]["details"][0]["path"] == "steps[40]"
    assert [w["name"] for w in (await client.get(url, headers=ana.headers)).json()] == ["chain"]


async def test_a_reverse_ordered_chain_of_1000_is_saved(client: httpx.AsyncClient) -> None:
    ana = await signup(client)
    ws = await new_workspace(client, ana)
    response = await client.post(
        f"/api/v1/workspaces/{ws}/workflows", json=chain(1_000, reverse=True), headers=ana.headers
    )
    assert response.status_code == 201, response.text


async def test_inline_sub_workflows_nested_too_deep_are_422(client: httpx.AsyncClient) -> None:
    ana = await signup(client)
    ws = await new_workspace(client, ana)
    url = f"/api/v1/workspaces/{ws}/workflows"
    ok = await client.post(url, json=nested(MAX_SUBWORKFLOW_DEPTH), headers=ana.headers)
    assert ok.status_code == 201, ok.text
    assert (
        await client.get(f"/api/v1/workflows/{ok.json()['id']}", headers=ana.headers)
    ).is_success
    deep = nested(MAX_SUBWORKFLOW_DEPTH + 1)
    deep["name"] = "deep"
    response = await client.post(url, json=deep, headers=ana.headers)
    assert response.status_code == 422, response.text
    assert f"nested more than {MAX_SUBWORKFLOW_DEPTH} levels deep" in response.text
    # 100 levels are past the JSON body's own nesting limit already: 422 before parsing.
    deepest = nested(100)
    deepest["name"] = "deepest"
    response = await client.post(url, json=deepest, headers=ana.headers)
    assert response.status_code == 422, response.text
    names = [w["name"] for w in (await client.get(url, headers=ana.headers)).json()]
    assert names == ["level9"]


async def test_workflows_are_parsed_off_the_event_loop(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[threading.Thread] = []
    original = workflow_routes.parse_spec

    def recording(*args: Any, **kwargs: Any) -> Any:
        threads.append(threading.current_thread())
        return original(*args, **kwargs)

    monkeypatch.setattr(workflow_routes, "parse_spec", recording)
    ana = await signup(client)
    ws = await new_workspace(client, ana)
    response = await client.post(
        f"/api/v1/workspaces/{ws}/workflows", json=chain(3), headers=ana.headers
    )
    assert response.status_code == 201, response.text
    assert threads
    assert all(t is not threading.main_thread() for t in threads)
