"""Real servers for tests: an ASGI app under uvicorn in a thread, on a free loopback port."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import uvicorn

from tests.cli.test_up import free_port


@contextlib.contextmanager
def serving(app: Any) -> Iterator[str]:
    """Serve ``app`` until the block ends; yields its base URL once ``/health`` answers 200."""
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", loop="asyncio", ws="none"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            assert thread.is_alive(), "the server stopped"
            assert time.monotonic() < deadline, "the server never became healthy"
            time.sleep(0.02)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        assert not thread.is_alive()
