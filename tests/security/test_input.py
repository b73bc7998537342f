"""Input the API cannot store or parse is refused at the edge with 4xx, never a 500.

A lone surrogate in a run's inputs used to be stored and then break every listing of the
workspace; bytes that are not UTF-8, JSON nested 100,000 deep and integers beyond 64 bits
answered 500.
"""

from __future__ import annotations

import httpx
import pytest

from agentmill.api.app import create_app
from agentmill.config import Settings
from tests.api.conftest import Account, new_workspace, signup

WORKFLOW = {
    "name": "echo",
    "inputs": {"subject": {"type": "string"}},
    "steps": [{"id": "a", "value": "{{ inputs.subject }}"}],
}


async def _workflow(client: httpx.AsyncClient) -> tuple[Account, str, str]:
    owner = await signup(client)
    ws = await new_workspace(client, owner)
    created = await client.post(
        f"/api/v1/workspaces/{ws}/workflows", json=WORKFLOW, headers=owner.headers
    )
    assert created.status_code == 201, created.text
    return owner, ws, created.json()["id"]


def _post_raw(
    client: httpx.AsyncClient, url: str, body: str | bytes, owner: Account, method: str = "POST"
) -> object:
    headers = {**owner.headers, "Content-Type": "application/json"}
    return client.request(method, url, content=body, headers=headers)


async def test_a_lone_surrogate_in_run_inputs_is_refused_and_nothing_is_stored(
    client: httpx.AsyncClient,
) -> None:
    owner, ws, workflow_id = await _workflow(client)
    response = await client.post(
        f"/api/v1/workflows/{workflow_id}/runs",
        content='{"inputs": {"subject": "\\ud800"}}',
        headers={**owner.headers, "Content-Type": "application/json"},
    )
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert error["details"] == [
        {
            "field": "inputs.subject",
            "message": "string '\\ud800' holds a lone surrogate (not Unicode)",
        }
    ]
    listing = await client.get(f"/api/v1/workspaces/{ws}/runs", headers=owner.headers)
    assert listing.status_code == 200, listing.text
    assert listing.json()["runs"] == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ('{"\\udfff": 1}', ""),  # a key
        ('{"inputs": {"list": [1, "ok \\udc00 x"]}}', "inputs.list.1"),
        ('{"inputs": {"a": "\\ud83d"}}', "inputs.a"),  # a high surrogate with no low one
    ],
)
async def test_lone_surrogates_are_refused_anywhere_in_the_body(
    client: httpx.AsyncClient, body: str, field: str
) -> None:
    owner, _, workflow_id = await _workflow(client)
    response = await client.post(
        f"/api/v1/workflows/{workflow_id}/runs",
        content=body,
        headers={**owner.headers, "Content-Type": "application/json"},
    )
    assert response.status_code == 422, response.text
    assert response.json()["error"]["details"][0]["field"] == field
    assert "lone surrogate" in response.json()["error"]["message"]


async def test_a_surrogate_pair_and_an_escaped_backslash_u_are_accepted(
    client: httpx.AsyncClient,
) -> None:
    owner, _, workflow_id = await _workflow(client)
    # "\ud83d\ude00" is one character (an emoji); "\\ud800" is a backslash and five letters.
    response = await client.post(
        f"/api/v1/workflows/{workflow_id}/runs",
        content='{"inputs": {"subject": "\\ud83d\\ude00 \\\\ud800"}}',
        headers={**owner.headers, "Content-Type": "application/json"},
    )
    assert response.status_code == 202, response.text
    assert response.json()["inputs"] == {"subject": "\U0001f600 \\ud800"}


async def test_lone_surrogates_in_memory_metadata_and_json_workflows_are_refused(
    client: httpx.AsyncClient,
) -> None:
    owner = await signup(client)
    ws = await new_workspace(client, owner)
    headers = {**owner.headers, "Content-Type": "application/json"}
    memory = await client.post(
        f"/api/v1/workspaces/{ws}/memory",
        content='{"text": "a fact", "metadata": {"k": "\\udead"}}',
        headers=headers,
    )
    assert memory.status_code == 422, memory.text
    assert memory.json()["error"]["details"][0]["field"] == "metadata.k"
    workflow = await client.post(
        f"/api/v1/workspaces/{ws}/workflows",
        content='{"name": "x\\ud800", "steps": [{"id": "a", "value": 1}]}',
        headers=headers,
    )
    assert workflow.status_code == 422, workflow.text
    assert workflow.json()["error"]["details"][0]["field"] == "name"
    listed = await client.get(f"/api/v1/workspaces/{ws}/workflows", headers=owner.headers)
    assert listed.status_code == 200
    assert listed.json() == []


async def test_a_body_that_is_not_utf8_is_refused_on_workflow_create_and_update(
    client: httpx.AsyncClient,
) -> None:
    owner, ws, workflow_id = await _workflow(client)
    headers = {**owner.headers, "Content-Type": "application/json"}
    created = await client.post(
        f"/api/v1/workspaces/{ws}/workflows", content=b"\xff", headers=headers
    )
    updated = await client.put(f"/api/v1/workflows/{workflow_id}", content=b"\xff", headers=headers)
    for response in (created, updated):
        assert response.status_code == 422, response.text
        assert response.json()["error"] == {
            "code": "validation_error",
            "message": "request body is not valid UTF-8 (byte 0)",
            "details": [{"field": "", "message": "request body is not valid UTF-8 (byte 0)"}],
        }


async def test_json_nested_100000_deep_is_refused(database_url: str) -> None:
    # 200 kB: the default body limit (1 MiB) lets it through to the JSON parser.
    app = create_app(Settings(), database_url=database_url)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            await _deep(client)


async def _deep(client: httpx.AsyncClient) -> None:
    owner, ws, workflow_id = await _workflow(client)
    headers = {**owner.headers, "Content-Type": "application/json"}
    deep = "[" * 100_000 + "]" * 100_000
    created = await client.post(f"/api/v1/workspaces/{ws}/workflows", content=deep, headers=headers)
    updated = await client.put(f"/api/v1/workflows/{workflow_id}", content=deep, headers=headers)
    for response in (created, updated):
        assert response.status_code == 422, response.text
        assert response.json()["error"]["message"] == "JSON nested deeper than 64 levels"


async def test_json_nested_a_little_deeper_than_allowed_is_refused_with_its_path(
    client: httpx.AsyncClient,
) -> None:
    owner, ws, _ = await _workflow(client)
    body = '{"a": ' + "[" * 70 + "]" * 70 + "}"
    response = await client.post(
        f"/api/v1/workspaces/{ws}/workflows",
        content=body,
        headers={**owner.headers, "Content-Type": "application/json"},
    )
    assert response.status_code == 422, response.text
    assert response.json()["error"]["details"][0]["field"].startswith("a.0.0.0")


@pytest.mark.parametrize("number", ["9223372036854775808", "-9223372036854775809", "1" * 40])
async def test_integers_beyond_64_bits_are_refused(client: httpx.AsyncClient, number: str) -> None:
    owner, _, workflow_id = await _workflow(client)
    response = await client.post(
        f"/api/v1/workflows/{workflow_id}/runs",
        content=f'{{"version": {number}}}',
        headers={**owner.headers, "Content-Type": "application/json"},
    )
    assert response.status_code == 422, response.text
    assert response.json()["error"]["details"] == [
        {"field": "version", "message": f"integer {int(number)} is out of range (64-bit signed)"}
    ]


async def test_versions_beyond_the_32_bit_column_are_refused(client: httpx.AsyncClient) -> None:
    owner, _, workflow_id = await _workflow(client)
    url = f"/api/v1/workflows/{workflow_id}/runs"
    largest = await client.post(url, json={"version": 2**31 - 1}, headers=owner.headers)
    assert largest.status_code == 404, largest.text
    for version in (2**31, 2**63 - 1):
        response = await client.post(url, json={"version": version}, headers=owner.headers)
        assert response.status_code == 422, response.text
        assert response.json()["error"]["details"][0]["field"] == "version"


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
async def test_nan_and_infinity_are_refused(client: httpx.AsyncClient, constant: str) -> None:
    owner, _, workflow_id = await _workflow(client)
    response = await client.post(
        f"/api/v1/workflows/{workflow_id}/runs",
        content=f'{{"inputs": {{"subject": {constant}}}}}',
        headers={**owner.headers, "Content-Type": "application/json"},
    )
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "validation_error"


async def test_a_last_event_id_beyond_64_bits_is_refused(client: httpx.AsyncClient) -> None:
    owner, _, workflow_id = await _workflow(client)
    run = await client.post(
        f"/api/v1/workflows/{workflow_id}/runs",
        json={"inputs": {"subject": "x"}},
        headers=owner.headers,
    )
    run_id = run.json()["id"]
    response = await client.get(
        f"/api/v1/runs/{run_id}/events",
        headers={**owner.headers, "Last-Event-ID": str(2**63)},
    )
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "validation_error"
    assert response.json()["error"]["details"][0]["field"] == "header.Last-Event-ID"


async def test_a_body_without_content_type_is_checked_as_json(client: httpx.AsyncClient) -> None:
    owner, ws, _ = await _workflow(client)
    url = f"/api/v1/workspaces/{ws}/workflows"
    for body in (b"\xff", b"[" * 20_000):
        response = await client.post(url, content=body, headers=owner.headers)
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "validation_error"
