"""Security headers on every response; /metrics and /health's details for operators only."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from fastapi import FastAPI

from agentmill.api.app import create_app
from agentmill.config import Settings
from tests.api.conftest import signup

OUTSIDE = ("203.0.113.9", 40000)  # a documentation address: not loopback


def _sha256(text: bytes) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text).digest()).decode() + "'"


@asynccontextmanager
async def _client(
    database_url: str, client: tuple[str, int] = ("127.0.0.1", 1234), **settings: object
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    app = create_app(
        Settings(**settings),  # type: ignore[arg-type]
        database_url=database_url,
        workers=False,
    )

    @app.get("/test-only/fail")
    async def fail() -> None:
        raise RuntimeError("boom")

    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False, client=client)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            yield app, http


def _assert_common(response: httpx.Response) -> None:
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]


async def test_every_kind_of_api_answer_carries_the_headers(database_url: str) -> None:
    async with _client(database_url, max_body_bytes=100) as (_, http):
        answers = [
            await http.get("/health"),
            await http.get("/api/v1/nothing-here"),  # 404
            await http.get("/api/v1/workspaces"),  # 401
            await http.post("/api/v1/auth/login", json={}),  # 422
            await http.post("/api/v1/auth/login", content=b"x" * 200),  # 413
            await http.get("/test-only/fail"),  # 500
            await http.get("/openapi.json"),
        ]
        assert [a.status_code for a in answers] == [200, 404, 401, 422, 413, 500, 200]
        for answer in answers:
            _assert_common(answer)
            policy = answer.headers["content-security-policy"]
            assert policy == "default-src 'none'; frame-ancestors 'none'; sandbox"


async def test_the_home_page_has_a_strict_csp_allowing_only_its_own_style(
    database_url: str,
) -> None:
    async with _client(database_url) as (_, http):
        page = await http.get("/")
        assert page.status_code == 200
        _assert_common(page)
        policy = page.headers["content-security-policy"]
        style = re.search(rb"<style>(.*?)</style>", page.content, re.DOTALL)
        assert style is not None
        assert f"style-src 'self' {_sha256(style.group(1))};" in policy
        assert policy.startswith("default-src 'none'; script-src 'self';")
        assert "unsafe-inline" not in policy
        assert "unsafe-eval" not in policy


async def test_the_swagger_ui_keeps_working_under_its_csp(database_url: str) -> None:
    async with _client(database_url) as (_, http):
        docs = await http.get("/docs")
        assert docs.status_code == 200
        _assert_common(docs)
        policy = docs.headers["content-security-policy"]
        inline = re.search(rb"<script>(.*?)</script>", docs.content, re.DOTALL)
        assert inline is not None
        # The page's own script by hash, the bundle and its stylesheet from the CDN, and the
        # schema fetched from this server.
        assert f"script-src 'self' {_sha256(inline.group(1))} https://cdn.jsdelivr.net;" in policy
        assert "style-src 'self' https://cdn.jsdelivr.net;" in policy
        assert "connect-src 'self';" in policy
        assert "unsafe-inline" not in policy
        for src in re.findall(rb'(?:src|href)="(https://[^"]+)"', docs.content):
            host = "/".join(src.decode().split("/")[:3])
            assert host in policy


async def test_metrics_are_for_operators_only(database_url: str) -> None:
    async with _client(database_url, client=OUTSIDE, ops_token="ops-secret") as (_, http):
        refused = await http.get("/metrics")
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "permission_denied"
        owner = await signup(http)  # a signed-in user is not an operator
        assert (await http.get("/metrics", headers=owner.headers)).status_code == 403
        wrong = await http.get("/metrics", headers={"Authorization": "Bearer ops-secreT"})
        assert wrong.status_code == 403
        allowed = await http.get("/metrics", headers={"Authorization": "Bearer ops-secret"})
        assert allowed.status_code == 200
        assert allowed.headers["content-type"].startswith("text/plain")
        assert "agentmill_queue_ready_steps" in allowed.text


async def test_metrics_from_an_allowed_network(database_url: str) -> None:
    async with _client(database_url, client=OUTSIDE, ops_networks=["203.0.113.0/24"]) as (_, http):
        assert (await http.get("/metrics")).status_code == 200
    async with _client(database_url) as (_, http):  # loopback, the default
        assert (await http.get("/metrics")).status_code == 200


@pytest.mark.parametrize("operator", [False, True])
async def test_health_details_are_for_operators_only(database_url: str, operator: bool) -> None:
    networks = ["203.0.113.0/24"] if operator else ["127.0.0.0/8"]
    async with _client(database_url, client=OUTSIDE, ops_networks=networks) as (_, http):
        health = await http.get("/health")
        assert health.status_code == 200
        if operator:
            assert set(health.json()) >= {"status", "database", "queue", "worker", "workers"}
        else:
            assert health.json() == {"status": "ok"}
