"""An AgentMill API app per test, on SQLite and on the real PostgreSQL, driven with httpx."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from fastapi import FastAPI

from agentmill.api.app import create_app
from agentmill.config import Settings


@pytest.fixture
async def app(database_url: str) -> AsyncIterator[FastAPI]:
    application = create_app(Settings(max_body_bytes=64 * 1024), database_url=database_url)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://agentmill.test") as http:
        yield http


@dataclass
class Account:
    id: str
    email: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


async def signup(client: httpx.AsyncClient, name: str = "Ana") -> Account:
    email = f"{name.lower()}-{uuid.uuid4().hex[:10]}@example.com"
    created = await client.post(
        "/api/v1/auth/register", json={"email": email, "name": name, "password": "correct horse"}
    )
    assert created.status_code == 202, created.text
    login = await client.post(
        "/api/v1/auth/login", json={"email": email, "password": "correct horse"}
    )
    assert login.status_code == 200, login.text
    token = login.json()["access_token"]
    me = await client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"})
    return Account(id=me.json()["id"], email=email, token=token)


async def new_workspace(client: httpx.AsyncClient, owner: Account, name: str = "Acme") -> str:
    response = await client.post("/api/v1/workspaces", json={"name": name}, headers=owner.headers)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])
