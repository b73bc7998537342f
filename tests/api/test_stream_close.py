"""A WebSocket stream whose client is gone by the time it would close: the close is skipped
quietly, as when the client leaves mid-stream, rather than raising out of the route (uvicorn
then logs "Exception in ASGI application" with a traceback, which `agentmill up` printed once
on Ctrl-C when the server hung up on a socket a moment before the route closed it)."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from types import SimpleNamespace
from typing import Any

from starlette.websockets import WebSocket

from agentmill.api.closing import Closing
from agentmill.api.routes.streams import _send


async def one_event() -> AsyncGenerator[dict[str, Any] | None]:
    yield {
        "id": 1,
        "run_id": "run_x",
        "step_key": None,
        "type": "run.started",
        "level": "info",
        "ts": "2026-11-22T00:00:00+00:00",
        "data": {},
    }


async def test_closing_a_socket_whose_client_is_gone_ends_quietly() -> None:
    sent: list[dict[str, Any]] = []
    closing = Closing()
    closing.set()  # the server is stopping

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "websocket.close":
            # What the ASGI server does once the connection is gone (uvicorn's
            # ClientDisconnected is an OSError); Starlette turns it into WebSocketDisconnect.
            raise OSError("connection closed")
        sent.append(message)

    app = SimpleNamespace(state=SimpleNamespace(closing=closing))
    scope = {"type": "websocket", "path": "/", "headers": [], "app": app}
    websocket = WebSocket(scope, receive, send)
    await websocket.accept()

    await _send(websocket, one_event())  # returns instead of raising

    assert [m["type"] for m in sent] == ["websocket.accept", "websocket.send"]
    assert '"run.started"' in sent[1]["text"]
