"""A Python client for the AgentMill HTTP API (httpx), in sync and async flavours.

    from agentmill.client import Client

    with Client("http://127.0.0.1:8000", api_key="am_…") as am:
        workflow = am.push_workflow(ws, open("flow.yaml").read())
        run = am.start_run(workflow["id"], {"topic": "bees"})
        print(am.wait(run["id"])["outputs"])

:class:`AsyncClient` has the same methods, awaitable (``iter_runs`` and ``events`` are async
iterators). Both cover the whole HTTP API except the WebSockets (``events`` follows the same
stream). Answers are the server's JSON, as dicts and lists. Errors from the server raise
:class:`ApiError` with its status, code, message and details.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agentmill.client._calls import ApiError

if TYPE_CHECKING:
    from agentmill.client._clients import AsyncClient, Client

__all__ = ["ApiError", "AsyncClient", "Client"]


def __getattr__(name: str) -> Any:
    # The clients load httpx; the CLI imports ApiError at start-up and a client only when a
    # command talks to a server (PEP 562).
    if name in ("AsyncClient", "Client"):
        from agentmill.client import _clients

        value = getattr(_clients, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
