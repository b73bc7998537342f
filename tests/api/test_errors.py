"""Errors are JSON with the right status; big bodies are refused; /health tells the truth."""

from __future__ import annotations

import httpx
from fastapi import FastAPI

from agentmill.store.db import Database


async def test_unknown_routes_and_methods_answer_json(client: httpx.AsyncClient) -> None:
    missing = await client.get("/api/v1/nothing-here")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    wrong_method = await client.put("/api/v1/auth/login")
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]["code"] == "method_not_allowed"


async def test_an_oversized_body_is_refused_with_413(client: httpx.AsyncClient) -> None:
    big = {"email": "a@example.com", "name": "x" * (70 * 1024), "password": "12345678"}
    response = await client.post("/api/v1/auth/register", json=big)
    assert response.status_code == 413
    assert response.json()["error"] == {
        "code": "payload_too_large",
        "message": "request body is larger than 65536 bytes",
        "details": None,
    }


async def test_an_oversized_streamed_body_without_length_is_refused_too(
    client: httpx.AsyncClient,
) -> None:
    async def chunks():  # type: ignore[no-untyped-def]
        for _ in range(80):
            yield b"x" * 1024

    response = await client.post(
        "/api/v1/auth/register", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413


async def test_health_reports_the_database(client: httpx.AsyncClient, app: FastAPI) -> None:
    ok = await client.get("/health")
    assert ok.status_code == 200
    assert ok.json() == {"status": "ok", "database": "ok"}

    working = app.state.db
    broken = Database("postgresql://postgres@127.0.0.1:1/nowhere")
    await broken.start()
    app.state.db = broken
    try:
        down = await client.get("/health")
    finally:
        app.state.db = working
        await broken.close()
    assert down.status_code == 503
    assert down.json()["status"] == "unavailable"
    assert down.json()["database"].startswith("down: ")


async def test_openapi_operation_ids_are_stable(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    ids = {op["operationId"] for path in schema["paths"].values() for op in path.values()}
    assert {
        "auth-login",
        "auth-register",
        "workspaces-create_workspace",
        "api-keys-create_api_key",
    } <= ids
