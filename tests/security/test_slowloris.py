"""A client that sends its request headers too slowly is cut off (slowloris).

uvicorn itself has no header timeout: a connection with half a header stayed open for ever.
Real uvicorn on loopback, with the configuration `agentmill up` and `agentmill api` use and a
short header timeout; each test waits for the server to close the connection (no timing
assertion: the generous wait_for only keeps a broken server from hanging the suite).
"""

from __future__ import annotations

import asyncio

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from agentmill.api.app import create_app
from agentmill.cli.http_server import HeaderDeadline, server_config
from agentmill.config import Settings
from tests.security.serving import serving

TIMEOUT = 0.5


@pytest.fixture
def app(database_url: str) -> FastAPI:
    return create_app(Settings(), database_url=database_url, workers=False)


def _config(app: FastAPI) -> uvicorn.Config:
    return server_config(
        app, host="127.0.0.1", port=0, header_timeout=TIMEOUT, keep_alive=60, max_connections=None
    )


async def _closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sent until it closed the connection."""
    return await asyncio.wait_for(reader.read(), timeout=30)


async def test_half_a_header_is_closed(app: FastAPI) -> None:
    async with serving(app, _config(app)) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /health HTTP/1.1\r\nHost: agentmill\r\nX-Slow: ")
        await writer.drain()
        assert await _closed(reader) == b""
        writer.close()


async def test_a_silent_connection_is_closed(app: FastAPI) -> None:
    async with serving(app, _config(app)) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await _closed(reader) == b""
        writer.close()


async def test_half_a_header_after_a_keep_alive_request_is_closed(app: FastAPI) -> None:
    async with serving(app, _config(app)) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /health HTTP/1.1\r\nHost: agentmill\r\n\r\n")
        await writer.drain()
        status = await asyncio.wait_for(reader.readline(), timeout=30)
        assert status.startswith(b"HTTP/1.1 200")
        await asyncio.sleep(TIMEOUT * 2)  # idle between requests: keep-alive's business (60 s)
        writer.write(b"GET /health HTTP/1.1\r\nHost: ")
        await writer.drain()
        rest = await _closed(reader)
        assert rest.count(b"HTTP/1.1") == 0  # the first response's body, then nothing
        writer.close()


async def test_requests_that_send_their_headers_are_served(app: FastAPI) -> None:
    async with (
        serving(app, _config(app)) as port,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http,
    ):
        for _ in range(3):
            assert (await http.get("/health")).status_code == 200


def test_the_cli_settings_give_uvicorn_its_limits() -> None:
    settings = Settings()
    assert settings.http_header_timeout == 10.0
    config = server_config(
        None,
        host="127.0.0.1",
        port=8000,
        header_timeout=settings.http_header_timeout,
        keep_alive=settings.http_keep_alive,
        max_connections=7,
    )
    assert isinstance(config.http, type)
    assert issubclass(config.http, HeaderDeadline)
    assert config.http.header_timeout == 10.0
    assert config.timeout_keep_alive == 5
    assert config.limit_concurrency == 7
    assert config.h11_max_incomplete_event_size == 16 * 1024
