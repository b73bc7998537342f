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

from agentmill.client._calls import ApiError
from agentmill.client._clients import AsyncClient, Client

__all__ = ["ApiError", "AsyncClient", "Client"]
