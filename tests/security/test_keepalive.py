"""A bug answers a normal JSON 500 and the connection stays open for the next request.

Starlette's outermost middleware re-raises after sending the 500 of the ``Exception`` handler,
and uvicorn closes the connection of a request whose exception escaped: a client's next
request on that keep-alive connection failed.
"""

from __future__ import annotations

import httpx
from fastapi import FastAPI

from agentmill.api.app import create_app
from agentmill.config import Settings
from tests.security.serving import serving


def _app(database_url: str) -> FastAPI:
    app = create_app(Settings(), database_url=database_url, workers=False)

    @app.get("/test-only/fail")
    async def fail() -> None:  # a bug, as any route might have one
        raise RuntimeError("boom")

    return app


async def test_a_500_is_json_and_keeps_the_connection_open(database_url: str) -> None:
    async with (
        serving(_app(database_url)) as port,
        httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", limits=httpx.Limits(max_connections=1)
        ) as http,
    ):
        failed = await http.get("/test-only/fail")
        assert failed.status_code == 500
        assert failed.headers["content-type"] == "application/json"
        error = failed.json()["error"]
        assert error["code"] == "internal"
        assert error["details"]["request_id"].startswith("req_")
        assert "connection" not in failed.headers  # no "Connection: close"
        first = failed.extensions["network_stream"].get_extra_info("client_addr")
        after = await http.get("/health")
        assert after.status_code == 200
        # The same local port: the second request went over the first one's connection.
        assert after.extensions["network_stream"].get_extra_info("client_addr") == first
