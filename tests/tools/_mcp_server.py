"""A small MCP server for the tests, on the official SDK: stdio by default, or streamable HTTP
with ``--http PORT`` (on 127.0.0.1, path ``/mcp``)."""

from __future__ import annotations

import os
import sys
from typing import Annotated

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import Field

server = MCPServer("agentmill-test", log_level="WARNING")


@server.tool()
def add(a: int, b: int) -> int:
    """Add two whole numbers."""
    return a + b


@server.tool()
def shout(text: Annotated[str, Field(description="What to shout")]) -> str:
    """Upper-case text."""
    return text.upper() + "!"


@server.tool()
def divide(a: float, b: float) -> float:
    """Divide a by b."""
    if b == 0:
        raise ToolError("cannot divide by zero")
    return a / b


@server.tool()
def whoami(ctx: Context) -> dict[str, str | None]:
    """Where this server runs: its pid, an environment variable, the request's auth header."""
    request = ctx.request_context.request
    headers = getattr(request, "headers", None)
    return {
        "pid": str(os.getpid()),
        "greeting": os.environ.get("GREETING"),
        "authorization": headers.get("authorization") if headers is not None else None,
    }


@server.tool()
async def nap(seconds: float, marker: str = "") -> str:
    """Sleep, then say so (first creating the file ``marker``, if named, so a test can wait
    until the nap has begun)."""
    import anyio

    if marker:
        await anyio.Path(marker).touch()
    await anyio.sleep(seconds)
    return "rested"


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--http":
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        server.run()
