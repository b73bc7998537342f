"""Starting the test MCP server (``_mcp_server.py``): over stdio, the client starts it itself;
over streamable HTTP, :func:`http_server` runs it as a process on a free loopback port."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

SCRIPT = str(Path(__file__).with_name("_mcp_server.py"))
STDIO_COMMAND = [sys.executable, SCRIPT]
ALLOW_PYTHON = {"commands": [sys.executable]}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def http_server() -> Iterator[str]:
    """The server's endpoint URL while it runs; it is stopped (and reaped) afterwards."""
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, SCRIPT, "--http", str(port)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:  # ready when it accepts connections
            if process.poll() is not None:
                raise RuntimeError(f"the MCP test server exited with {process.returncode}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        process.terminate()
        process.wait(timeout=10)


def is_running(pid: int) -> bool:
    """Whether a process with this id exists (our children are reaped when they exit)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
