"""A real uvicorn server on loopback, in the test's own event loop."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@asynccontextmanager
async def serving(app: Any, config: uvicorn.Config | None = None) -> AsyncIterator[int]:
    """Serve ``app`` (or ``config``'s app) on a free loopback port until the block ends."""
    port = free_port()
    if config is None:
        config = uvicorn.Config(app, log_level="warning", lifespan="on")
    config.host, config.port = "127.0.0.1", port
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()  # raises why the server did not start
            await asyncio.sleep(0.02)
        yield port
    finally:
        server.should_exit = True
        await task
