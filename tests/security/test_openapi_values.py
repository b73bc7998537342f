"""What the schemathesis probe found accepted or mis-documented: invalid query values are
refused with 422 naming the parameter, and the schema says what the API really answers."""

from __future__ import annotations

import httpx
import pytest

from tests.api.conftest import new_workspace, signup


@pytest.mark.parametrize(
    ("path", "param"),
    [
        ("/events?source=true", "source"),
        ("/events?level=false", "level"),
    ],
)
async def test_event_filters_take_only_known_values(
    client: httpx.AsyncClient, path: str, param: str
) -> None:
    owner = await signup(client)
    response = await client.get(f"/api/v1/runs/run_x{path}", headers=owner.headers)
    assert response.status_code == 422
    assert param in response.text


@pytest.mark.parametrize(
    ("route", "param"),
    [("runs?created_before=0.5", "created_before"), ("usage?until=0.5", "until")],
)
async def test_times_are_iso_text_not_numbers(
    client: httpx.AsyncClient, route: str, param: str
) -> None:
    owner = await signup(client)
    ws = await new_workspace(client, owner)
    response = await client.get(f"/api/v1/workspaces/{ws}/{route}", headers=owner.headers)
    assert response.status_code == 422
    assert param in response.text
    assert "ISO 8601" in response.text
    iso = route.replace("0.5", "2026-01-31T12:00:00Z")
    assert (
        await client.get(f"/api/v1/workspaces/{ws}/{iso}", headers=owner.headers)
    ).status_code == 200


async def test_the_schema_documents_errors_and_the_metrics_format(
    client: httpx.AsyncClient,
) -> None:
    schema = (await client.get("/openapi.json")).json()
    metrics = schema["paths"]["/metrics"]["get"]["responses"]
    assert "application/json" not in metrics["200"]["content"]
    assert any(kind.startswith("text/plain") for kind in metrics["200"]["content"])
    for path, operations in schema["paths"].items():
        if not path.startswith("/api/v1"):
            continue
        for method, operation in operations.items():
            for status in ("401", "404", "422", "503"):
                body = operation["responses"][status]["content"]["application/json"]["schema"]
                assert body == {"$ref": "#/components/schemas/ErrorBody"}, (method, path, status)
