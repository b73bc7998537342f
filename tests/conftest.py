"""Shared fixtures: real SQLite files and a real PostgreSQL database (never mocks).

PostgreSQL is required: ``AGENTMILL_TEST_PG_ADMIN_URL`` (default: the machine's local server)
must be reachable, or the PostgreSQL-parametrized tests fail rather than skip.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import pytest

from agentmill.config import Settings
from agentmill.engine.engine import Engine
from agentmill.store.db import Database
from agentmill.store.migrate import upgrade, upgrade_sync
from tests.pgvector_server import pgvector_server

# A strong key for every Settings the tests make (and every server process they start), since
# there is no built-in one; tests of the key itself unset or override it.
TEST_SECRET_KEY = "test-key-5b0Qz7Yx1Vd9Lr3Kp8Ws2Nf6Hj4Tm0Uc"
os.environ["AGENTMILL_SECRET_KEY"] = TEST_SECRET_KEY

PG_ADMIN_URL = os.environ.get(
    "AGENTMILL_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
BACKENDS = ["sqlite", "postgresql"]


def _pg_url(database: str, admin_url: str = PG_ADMIN_URL) -> str:
    base, _, _ = admin_url.rpartition("/")
    return f"{base}/{database}"


@asynccontextmanager
async def new_pg_database(
    admin_url: str = PG_ADMIN_URL, *, migrate: bool = True
) -> AsyncIterator[str]:
    """A fresh PostgreSQL database (migrated to head unless told not to), dropped afterwards."""
    name = f"agentmill_test_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = _pg_url(name, admin_url)
    try:
        if migrate:
            await upgrade(Database(url))
        yield url
    finally:
        admin = await asyncpg.connect(admin_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture(scope="session")
async def pg_database() -> AsyncIterator[str]:
    """A fresh PostgreSQL database for this test session, migrated to head."""
    async with new_pg_database() as url:
        yield url


@pytest.fixture(scope="session")
async def pgvector_admin_url() -> AsyncIterator[str]:
    """A PostgreSQL server with pgvector available, for this test session (see
    ``tests/pgvector_server.py``)."""
    async with pgvector_server() as url:
        yield url


@pytest.fixture(scope="session")
async def pgvector_database(pgvector_admin_url: str) -> AsyncIterator[str]:
    """A fresh database on that server, migrated to head (which enables pgvector)."""
    async with new_pg_database(pgvector_admin_url) as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'agentmill.db'}"


def migrated_database_url(request: pytest.FixtureRequest, tmp_path: Path, backend: str) -> str:
    """A database at head on ``backend``: a new SQLite file, or the session's database on the
    machine's PostgreSQL (``postgresql``) or on the server with pgvector (``pgvector``)."""
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'agentmill.db'}"
        upgrade_sync(url)
        return url
    fixture = {"postgresql": "pg_database", "pgvector": "pgvector_database"}[backend]
    pg_url: str = request.getfixturevalue(fixture)
    return pg_url


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test that uses it runs twice: on a SQLite file and on the real PostgreSQL."""
    return migrated_database_url(request, tmp_path, request.param)


@pytest.fixture(params=BACKENDS)
async def own_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """Like ``database_url``, but on PostgreSQL a database of this test's own rather than the
    session's: for tests that count rows across the whole database (the step queue)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'agentmill.db'}"
        await upgrade(Database(url))
        yield url
        return
    async with new_pg_database() as url:
        yield url


@pytest.fixture
def settings() -> Settings:
    return Settings(lease_seconds=30, poll_interval=0.05)


@asynccontextmanager
async def started(url: str) -> AsyncIterator[Database]:
    """A started :class:`Database` on ``url``, closed on the way out."""
    database = Database(url)
    await database.start()
    try:
        yield database
    finally:
        await database.close()


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    async with started(database_url) as database:
        yield database


@pytest.fixture
async def engine(db: Database, settings: Settings) -> Engine:
    return Engine(db, settings=settings)


@pytest.fixture
def examples_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A clean working directory (the default database lives in ./.agentmill/)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
