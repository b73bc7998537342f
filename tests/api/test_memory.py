"""/api/v1/workspaces/{ws}/memory: store, search (by meaning with an embedding model, by words
without), list newest first, forget; one workspace never sees another's memories."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from agentmill.api.app import create_app
from agentmill.config import Settings
from agentmill.store.db import Database
from agentmill.store.models import llm_calls
from tests.api.conftest import signup


@pytest.fixture(params=["scripted/embed", None], ids=["semantic", "full-text"])
async def app(request: pytest.FixtureRequest, database_url: str) -> AsyncIterator[FastAPI]:
    settings = Settings(embedding_model=request.param)
    application = create_app(settings, database_url=database_url, workers=False)
    async with application.router.lifespan_context(application):
        yield application


async def test_memory_is_found_closest_first_and_only_in_its_workspace(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    owner = await signup(client)
    headers = owner.headers
    ws, other = [
        (await client.post("/api/v1/workspaces", json={"name": n}, headers=headers)).json()["id"]
        for n in ("Mine", "Other")
    ]
    base = f"/api/v1/workspaces/{ws}/memory"
    await client.post(
        f"/api/v1/workspaces/{other}/memory",
        json={"text": "the office wifi password is hunter2"},
        headers=headers,
    )
    created = []
    for text in ["the office opens at nine", "the office wifi is slow on fridays", "lunch is free"]:
        response = await client.post(
            base, json={"text": text, "metadata": {"n": 1}}, headers=headers
        )
        assert response.status_code == 201, response.text
        created.append(response.json())
    model = app.state.settings.embedding_model
    assert [m["embedding_model"] for m in created] == [model] * 3

    found = (await client.get(base, params={"q": "office wifi password"}, headers=headers)).json()
    assert found[0]["text"] == "the office wifi is slow on fridays"
    assert found[0]["score"] > found[1]["score"]
    assert all("hunter2" not in m["text"] for m in found)  # the other workspace's memory

    listed = (await client.get(base, params={"limit": 2}, headers=headers)).json()
    assert [m["text"] for m in listed] == ["lunch is free", "the office wifi is slow on fridays"]
    assert listed[0]["score"] is None

    gone = await client.delete(f"{base}/{created[1]['id']}", headers=headers)
    assert gone.status_code == 204
    again = await client.delete(
        f"/api/v1/workspaces/{other}/memory/{created[0]['id']}", headers=headers
    )
    assert again.status_code == 404  # an id from another workspace is not found there
    found = (await client.get(base, params={"q": "office wifi"}, headers=headers)).json()
    assert "the office wifi is slow on fridays" not in [m["text"] for m in found]

    db: Database = app.state.db
    await app.state.gateway.recorder.flush()  # usage records are written in batches
    embeds = await db.read(
        lambda tx: tx.conn.execute(
            select(llm_calls.c.user_id).where(
                llm_calls.c.workspace_id == ws, llm_calls.c.model == "scripted/embed"
            )
        ).all()
    )
    # Three stores and two searches, each embedded once and accounted to the caller.
    assert [row.user_id for row in embeds] == ([owner.id] * 5 if model else [])


async def test_invalid_requests_are_refused(client: httpx.AsyncClient) -> None:
    owner = await signup(client)
    ws = (await client.post("/api/v1/workspaces", json={"name": "W"}, headers=owner.headers)).json()
    base = f"/api/v1/workspaces/{ws['id']}/memory"
    for body in ({"text": ""}, {"text": "x", "extra": 1}, {"text": "x", "metadata": [1]}):
        response = await client.post(base, json=body, headers=owner.headers)
        assert response.status_code == 422, body
    response = await client.get(base, params={"limit": 51}, headers=owner.headers)
    assert response.status_code == 422
