"""Errors are JSON with the right status; big bodies are refused; /health tells the truth."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from agentmill.api.app import create_app
from agentmill.config import Settings
from agentmill.errors import ConfigError
from agentmill.queue import queue_backend
from agentmill.store.db import Database
from agentmill.tools.registry import python_tool
from tests.api.conftest import new_workspace, signup


@pytest.fixture
def database_url(own_database_url: str) -> str:
    """/health counts the whole step queue, so each test here has a database of its own
    (other tests' runs stay in the session's PostgreSQL database)."""
    return own_database_url


@asynccontextmanager
async def api_only(database_url: str, **settings: Any) -> AsyncIterator[httpx.AsyncClient]:
    """A client of an app that serves the API but runs no steps (like `agentmill api`)."""
    app = create_app(Settings(**settings), database_url=database_url, workers=False)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            yield http


async def _start_run(http: httpx.AsyncClient, steps: list[str]) -> None:
    owner = await signup(http)
    ws = await new_workspace(http, owner)
    workflow = await http.post(
        f"/api/v1/workspaces/{ws}/workflows",
        json={"name": "queued", "steps": [{"id": k, "value": 1} for k in steps]},
        headers=owner.headers,
    )
    await http.post(
        f"/api/v1/workflows/{workflow.json()['id']}/runs", json={}, headers=owner.headers
    )


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


async def test_health_reports_the_database_queue_and_worker(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    for _ in range(100):  # the embedded worker reports in as it starts
        ok = await client.get("/health")
        if ok.json()["workers"]["alive"]:
            break
        await asyncio.sleep(0.02)
    assert ok.status_code == 200
    workers = ok.json().pop("workers")
    assert workers["alive"] == 1
    assert workers["processes"][0]["name"] == "embedded"
    python = python_tool().status  # probed only once the tool is used in this process
    assert ok.json()["sandbox"] == (
        python.to_dict()
        if python is not None
        else {"state": "unchecked", "reason": "probed when the python tool is first used"}
    )
    assert ok.json() | {"workers": None, "sandbox": None} == {
        "workers": None,
        "sandbox": None,
        "status": "ok",
        "database": "ok",
        "queue": {
            "status": "ok",
            "backend": "sql",
            "ready": 0,
            "scheduled": 0,
            "running": 0,
            "oldest_ready_age_s": 0.0,
        },
        "worker": "running",
    }

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


async def test_health_is_unavailable_when_the_embedded_worker_stopped(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    running = app.state.worker
    crashed = asyncio.create_task(asyncio.sleep(0))
    await crashed
    app.state.worker = crashed
    try:
        response = await client.get("/health")
    finally:
        app.state.worker = running
    assert response.status_code == 503
    assert response.json()["worker"] == "stopped"


async def test_health_counts_ready_steps_of_an_api_only_process(database_url: str) -> None:
    async with api_only(database_url) as http:
        await _start_run(http, ["a", "b"])
        await asyncio.sleep(0.05)
        health = await http.get("/health")
    assert health.status_code == 200
    assert health.json()["worker"] == "off"
    queue = health.json()["queue"]
    assert (queue["ready"], queue["running"]) == (2, 0)
    assert queue["oldest_ready_age_s"] >= 0.05


async def test_metrics_report_the_queue_for_autoscaling(database_url: str) -> None:
    async with api_only(database_url) as http:
        await _start_run(http, ["a", "b", "c"])
        metrics = await http.get("/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    values = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in metrics.text.splitlines()
        if line and not line.startswith("#")
    }
    assert values["agentmill_queue_ready_steps"] >= 3
    assert values["agentmill_queue_in_flight_steps"] == 0
    assert values["agentmill_queue_lag_seconds"] > 0
    assert values["agentmill_workers_alive"] == 0  # an API-only process runs no steps


@pytest.mark.parametrize(
    ("queue_url", "status", "queue"),
    [("redis://127.0.0.1:6379/0", 200, "ok"), ("redis://127.0.0.1:1/0", 503, "down: ")],
    ids=["redis-up", "redis-down"],
)
async def test_health_reports_the_redis_queue(
    database_url: str, queue_url: str, status: int, queue: str
) -> None:
    async with api_only(database_url, queue_url=queue_url) as http:
        health = await http.get("/health")
    assert health.status_code == status
    assert health.json()["queue"]["backend"] == "redis"
    assert health.json()["queue"]["status"].startswith(queue)


def test_a_queue_url_that_is_no_queue_is_refused_clearly() -> None:
    with pytest.raises(ConfigError, match="AGENTMILL_QUEUE_URL 'amqp://x' is not a queue"):
        queue_backend("amqp://x")
    assert queue_backend(None) == queue_backend("sql") == "sql"
    assert queue_backend("redis://h:6379/0") == "redis"
