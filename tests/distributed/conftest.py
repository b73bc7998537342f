"""Worker processes against a real PostgreSQL: each test gets a database of its own, so no
other test's steps are in its queue."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg
import pytest

from agentmill.config import Settings
from agentmill.engine.engine import Engine
from agentmill.store.db import Database
from agentmill.store.migrate import upgrade
from tests.conftest import PG_ADMIN_URL, _pg_url


@pytest.fixture
async def fresh_pg() -> AsyncIterator[str]:
    name = f"agentmill_dist_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = _pg_url(name)
    await upgrade(Database(url))
    yield url
    admin = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def starter(fresh_pg: str) -> AsyncIterator[Engine]:
    """An engine that starts and reads runs but runs no steps (no worker), like an API process."""
    db = Database(fresh_pg)
    await db.start()
    engine = Engine(db, settings=Settings())
    yield engine
    await engine.aclose()
    await db.close()


class Workers:
    """``agentmill worker`` subprocesses; any still running at the end are killed."""

    def __init__(self, database_url: str, logs: Path) -> None:
        self.database_url = database_url
        self.logs = logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, *args: str, **env: str) -> subprocess.Popen[bytes]:
        environment = {
            **os.environ,
            "AGENTMILL_DATABASE_URL": self.database_url,
            "AGENTMILL_LEASE_SECONDS": "2",
            "AGENTMILL_POLL_INTERVAL": "0.2",
            **env,
        }
        with (self.logs / f"{name}.log").open("wb") as log:  # the child keeps its own copy
            proc = subprocess.Popen(
                [sys.executable, "-m", "agentmill", "worker", "--name", name, *args],
                env=environment,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.procs[name] = proc
        return proc

    def identity(self, name: str) -> str:
        import socket

        return f"{socket.gethostname()}:{self.procs[name].pid}:{name}"

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=10)


@contextmanager
def _workers(database_url: str, logs: Path) -> Iterator[Workers]:
    workers = Workers(database_url, logs)
    try:
        yield workers
    finally:
        workers.stop_all()


@pytest.fixture
def workers(fresh_pg: str, tmp_path: Path) -> Iterator[Workers]:
    with _workers(fresh_pg, tmp_path) as running:
        yield running
