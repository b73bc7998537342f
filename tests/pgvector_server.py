"""A real PostgreSQL with the pgvector extension, for the tests of memory search by vector.

The machine's PostgreSQL has no pgvector (and no package for it in the registries), so the
tests start the server the ``pgserver`` wheel bundles (PostgreSQL 16 with pgvector 0.6), on a
free loopback port in a folder of its own, and stop it afterwards. PostgreSQL refuses to run as
root, so under root it runs as ``nobody``. ``AGENTMILL_TEST_PGVECTOR_ADMIN_URL`` points the
tests at a server of your own instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg

from tests.cli.test_up import free_port


def _binaries() -> Path:
    # Found without importing the package: its import creates runtime folders and warns.
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the pgserver wheel is missing: run `make install`")
    return Path(spec.submodule_search_locations[0]) / "pginstall" / "bin"


def _as_unprivileged() -> dict[str, Any]:
    if os.geteuid() != 0:
        return {}
    return {"user": "nobody", "group": "nogroup", "extra_groups": []}


@contextlib.asynccontextmanager
async def pgvector_server() -> AsyncIterator[str]:
    """Yield the admin URL of a running PostgreSQL with pgvector available (not yet created)."""
    if url := os.environ.get("AGENTMILL_TEST_PGVECTOR_ADMIN_URL"):
        yield url
        return
    folder = Path(tempfile.mkdtemp(prefix="agentmill-pgvector-"))
    try:
        server, url = await asyncio.to_thread(_start, folder)
        try:
            await _wait_ready(url, server, folder / "server.log")
            yield url
        finally:
            await asyncio.to_thread(_stop, server)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _start(folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    privileges = _as_unprivileged()
    if privileges:
        shutil.chown(folder, "nobody", "nogroup")
    data, bin_dir, port = folder / "data", _binaries(), free_port()
    subprocess.run(
        [str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "utf8"],
        check=True,
        capture_output=True,
        **privileges,
    )
    options = ["-p", str(port), "-h", "127.0.0.1", "-k", str(folder), "-c", "fsync=off"]
    with (folder / "server.log").open("wb") as log:
        server = subprocess.Popen(
            [str(bin_dir / "postgres"), "-D", str(data), *options],
            stdout=log,
            stderr=subprocess.STDOUT,
            **privileges,
        )
    return server, f"postgresql://postgres@127.0.0.1:{port}/postgres"


def _stop(server: subprocess.Popen[bytes]) -> None:
    server.send_signal(signal.SIGINT)  # PostgreSQL's "fast" shutdown: ends open sessions
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


async def _wait_ready(url: str, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            await (await asyncpg.connect(url, timeout=2)).close()
            return
        except (OSError, asyncpg.PostgresError):
            if server.poll() is not None or time.monotonic() > deadline:
                output = await asyncio.to_thread(log.read_text)
                raise RuntimeError(f"the pgvector server did not start:\n{output}") from None
            await asyncio.sleep(0.05)
