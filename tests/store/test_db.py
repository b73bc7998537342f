"""The store on both engines: migrations, exact money and time, group commit isolation."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal

import asyncpg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import func, inspect, select, text

from agentmill.errors import ConfigError
from agentmill.ids import new_id
from agentmill.store.db import Database, Tx, normalize_url
from agentmill.store.migrate import alembic_config, upgrade
from agentmill.store.models import Base, described_by_models, llm_calls
from tests.conftest import started
from tests.waiting import until

TABLES = {
    "workflows",
    "workflow_versions",
    "runs",
    "steps",
    "events",
    "llm_calls",
    "alembic_version",
    "users",
    "workspaces",
    "memberships",
    "api_keys",
    "revoked_tokens",
    "budgets",
    "rate_limits",
    "workspace_providers",
    "memories",
}


async def test_migrations_create_every_table_and_are_idempotent(database_url: str) -> None:
    await upgrade(Database(database_url))  # a second upgrade is a no-op
    db = Database(database_url)
    await db.start()
    try:
        names = await db.read(lambda tx: set(inspect(tx.conn).get_table_names()))
        version = await db.read(
            lambda tx: tx.conn.execute(text("select version_num from alembic_version")).scalar()
        )
    finally:
        await db.close()
    assert names >= TABLES
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert version == head


async def test_the_migrations_build_exactly_the_tables_the_models_describe(
    database_url: str,
) -> None:
    db = Database(database_url)
    await db.start()
    try:
        diff = await db.read(
            lambda tx: compare_metadata(
                MigrationContext.configure(tx.conn, opts={"include_name": described_by_models}),
                Base.metadata,
            )
        )
    finally:
        await db.close()
    assert diff == []


def call_row(cost: Decimal, when: datetime, run_id: str = "r") -> dict[str, object]:
    return {
        "run_id": run_id,
        "step_id": "s",
        "attempt": 1,
        "turn": 0,
        "provider": "p",
        "model": "p/m",
        "input_tokens": 1,
        "output_tokens": 2,
        "cost": cost,
        "latency_ms": 1.5,
        "error": None,
        "created_at": when,
    }


async def test_money_and_times_round_trip_exactly(db: Database) -> None:
    cost = Decimal("0.000123456")
    when = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    run_id = new_id("run")
    rows = [call_row(cost, when, run_id)] * 3
    await db.write(lambda tx: tx.conn.execute(llm_calls.insert(), rows))

    mine = llm_calls.c.run_id == run_id
    query = select(llm_calls.c.cost, llm_calls.c.created_at).where(mine)
    row = await db.read(lambda tx: tx.conn.execute(query).first())
    total = await db.read(
        lambda tx: tx.conn.execute(select(func.sum(llm_calls.c.cost)).where(mine)).scalar()
    )

    assert row.cost == cost
    assert row.created_at == when
    assert total == cost * 3  # sums in SQL stay exact


async def test_a_failing_transaction_rolls_back_alone_when_commits_are_grouped(
    db: Database,
) -> None:
    when = datetime.now(UTC)
    run_id = new_id("run")

    def good(n: int):  # type: ignore[no-untyped-def]
        def fn(tx: Tx) -> int:
            tx.conn.execute(llm_calls.insert(), [call_row(Decimal(n), when, run_id)])
            return n

        return fn

    def bad(tx: Tx) -> None:
        tx.conn.execute(llm_calls.insert(), [call_row(Decimal(99), when, run_id)])
        raise ValueError("no")

    results = await asyncio.gather(
        *(db.write(good(n)) for n in range(5)),
        db.write(bad),
        *(db.write(good(n)) for n in range(5, 10)),
        return_exceptions=True,
    )

    assert results[:5] == [0, 1, 2, 3, 4]
    assert isinstance(results[5], ValueError)
    assert results[6:] == [5, 6, 7, 8, 9]
    query = select(llm_calls.c.cost).where(llm_calls.c.run_id == run_id)
    costs = await db.read(lambda tx: sorted(tx.conn.execute(query).scalars()))
    assert costs == [Decimal(n) for n in range(10)]


async def test_committed_events_reach_subscribers_and_rolled_back_ones_do_not(db: Database) -> None:
    seen: list[list[dict[str, object]]] = []
    db.subscribe(seen.append)

    def ok(tx: Tx) -> None:
        tx.published.append({"type": "ok"})

    def fails(tx: Tx) -> None:
        tx.published.append({"type": "lost"})
        raise RuntimeError("rolled back")

    await db.write(ok)
    with pytest.raises(RuntimeError):
        await db.write(fails)

    assert seen == [[{"type": "ok"}]]


def test_database_urls_are_normalized_and_bad_ones_explained() -> None:
    assert normalize_url("postgresql://u@h/db") == "postgresql+asyncpg://u@h/db"
    assert normalize_url("sqlite:///x.db") == "sqlite+pysqlite:///x.db"
    with pytest.raises(ConfigError, match="in-memory SQLite"):
        normalize_url("sqlite://")
    with pytest.raises(ConfigError, match="unsupported database 'mysql'"):
        normalize_url("mysql://h/db")


async def test_a_write_lock_held_elsewhere_never_blocks_the_event_loop(sqlite_url: str) -> None:
    await upgrade(Database(sqlite_url))
    db = Database(sqlite_url)
    await db.start()
    other = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another process holds SQLite's write lock
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        ticking = asyncio.create_task(ticker())
        row = call_row(Decimal(1), datetime.now(UTC), new_id("run"))
        lone = asyncio.create_task(
            db.write(lambda tx: tx.conn.execute(llm_calls.insert(), [row]), alone=True)
        )
        batched = asyncio.create_task(
            db.write(lambda tx: tx.conn.execute(llm_calls.insert(), [row]))
        )
        # The loop keeps running (20 ticks) while the writes wait for the lock: a write that
        # blocked the loop would stop the ticks until the lock is released, which it never is.
        await until(lambda: ticks >= 20, message="the event loop stopped while writes waited")

        assert not lone.done()
        assert not batched.done()
        other.execute("ROLLBACK")
        await asyncio.wait_for(asyncio.gather(lone, batched), timeout=5)
        ticking.cancel()
        count = await db.read(
            lambda tx: tx.conn.execute(select(func.count()).select_from(llm_calls)).scalar()
        )
        assert count == 2
    finally:
        other.close()
        await db.close()


def _txid(tx: Tx) -> int:
    return int(tx.conn.execute(text("SELECT txid_current()")).scalar_one())


@contextlib.asynccontextmanager
async def held_by_another_connection(url: str, lock: str, *args: object) -> AsyncIterator[None]:
    """Run ``lock`` in a transaction of another connection, held until the block ends."""
    holder = await asyncpg.connect(url)
    try:
        async with holder.transaction():
            await holder.execute(lock, *args)
            yield
    finally:
        await holder.close()


async def waiting_for_a_lock(url: str, *, for_seconds: float = 0.0) -> None:
    """Return once a session of ``url``'s database has waited for a lock ``for_seconds``."""
    admin = await asyncpg.connect(url)
    try:

        async def waiting() -> bool:
            found = await admin.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock'"
                " AND now() - query_start >= make_interval(secs => $1)",
                for_seconds,
            )
            return bool(found)

        await until(waiting, message="no write ever waited for the lock")
    finally:
        await admin.close()


@pytest.fixture
async def pg_db(pg_database: str) -> AsyncIterator[Database]:
    async with started(pg_database) as db:
        yield db


async def test_postgresql_groups_the_writes_of_one_loop_turn_into_one_transaction(
    pg_db: Database,
) -> None:
    grouped = await asyncio.gather(*(pg_db.write(_txid) for _ in range(4)))
    alone = await asyncio.gather(*(pg_db.write(_txid, alone=True) for _ in range(3)))
    later = await pg_db.write(_txid)

    assert len(set(grouped)) == 1  # one BEGIN … COMMIT for the four
    assert len(set(alone)) == 3  # alone=True runs at once, in a transaction of its own
    assert later not in grouped  # the next turn's write is the next group


async def test_postgresql_group_members_run_in_lock_order(pg_db: Database) -> None:
    ran: list[str] = []

    def member(key: str):  # type: ignore[no-untyped-def]
        return lambda tx: ran.append(key)

    await asyncio.gather(*(pg_db.write(member(key), lock_order=key) for key in "cab"))

    assert ran == ["a", "b", "c"]  # two processes' groups lock their runs in one order


async def test_a_postgresql_group_runs_each_prelude_once_before_its_members(
    pg_db: Database,
) -> None:
    calls: list[tuple[str, list[str]]] = []
    seen: list[object] = []

    def lock_all(tx: Tx, keys: list[str]) -> set[str]:
        calls.append(("lock_all", keys))
        tx.accumulators["shared"] = {"by": "lock_all"}
        return set()

    def member(tx: Tx) -> None:
        seen.append(tx.accumulators.get("shared"))

    await asyncio.gather(
        *(pg_db.write(member, lock_order=key, prelude=lock_all) for key in "cab"),
        pg_db.write(member, lock_order="d"),  # names no prelude: not among its keys
    )
    await pg_db.write(member, lock_order="e", prelude=lock_all, alone=True)

    assert calls == [("lock_all", ["a", "b", "c"])]  # once, with its members' keys in order
    assert seen[:4] == [{"by": "lock_all"}] * 4  # what it read is there for the members
    assert seen[4] is None  # alone, a write runs without it


@pytest.mark.parametrize("held", ["run-a", "run-b", "run-c"])
async def test_a_postgresql_commit_waits_for_the_commit_order_lock_of_each_key(
    pg_db: Database, pg_database: str, held: str
) -> None:
    def ordered(tx: Tx) -> int:
        tx.ordered_by.update({"run-c", "run-a", "run-b"})
        return _txid(tx)

    lock = "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))"
    async with held_by_another_connection(pg_database, lock, held):
        write = asyncio.ensure_future(pg_db.write(ordered, alone=True))
        await waiting_for_a_lock(pg_database)
        assert not write.done()  # one key of three is held elsewhere: the commit waits for it
    await asyncio.wait_for(write, timeout=10)


async def test_a_postgresql_group_member_whose_row_is_held_elsewhere_sits_the_group_out(
    pg_db: Database, pg_database: str
) -> None:
    held_run, free_runs = new_id("run"), [new_id("run"), new_id("run")]
    when = datetime.now(UTC)
    rows = [call_row(Decimal(1), when, run_id) for run_id in [held_run, *free_runs]]
    await pg_db.write(lambda tx: tx.conn.execute(llm_calls.insert(), rows))
    lock_free = text(
        "SELECT run_id FROM llm_calls WHERE run_id = ANY(:keys) FOR UPDATE SKIP LOCKED"
    )

    def lock_free_rows(tx: Tx, keys: list[str]) -> set[str]:  # like the engine's lock_runs
        return set(keys) - set(tx.conn.execute(lock_free, {"keys": keys}).scalars())

    lock_one = text("SELECT 1 FROM llm_calls WHERE run_id = :key FOR UPDATE")

    def locking(key: str):  # type: ignore[no-untyped-def]
        def write(tx: Tx) -> int:  # locks its row first, like the engine's _lock_run
            tx.conn.execute(lock_one, {"key": key})
            return _txid(tx)

        return write

    lock = "SELECT 1 FROM llm_calls WHERE run_id = $1 FOR UPDATE"
    async with held_by_another_connection(pg_database, lock, held_run):
        writes = [
            asyncio.ensure_future(pg_db.write(locking(key), lock_order=key, prelude=lock_free_rows))
            for key in [held_run, *free_runs]
        ]
        free = await asyncio.wait_for(asyncio.gather(*writes[1:]), timeout=10)
        await waiting_for_a_lock(pg_database)  # past the retry together: alone, it waits
        assert not writes[0].done()
    late = await asyncio.wait_for(writes[0], timeout=10)

    assert len(set(free)) == 1  # the free members committed together, without waiting
    assert late not in free  # the held one sat out, and committed once the row was free


async def test_a_postgresql_group_stuck_on_a_lock_falls_back_to_one_transaction_each(
    pg_db: Database, pg_database: str
) -> None:
    run_id = new_id("run")
    row = call_row(Decimal(1), datetime.now(UTC), run_id)
    await pg_db.write(lambda tx: tx.conn.execute(llm_calls.insert(), [row]))

    def update(tx: Tx) -> int:
        tx.conn.execute(
            llm_calls.update().where(llm_calls.c.run_id == run_id).values(cost=Decimal(7))
        )
        return _txid(tx)

    lock = "SELECT 1 FROM llm_calls WHERE run_id = $1 FOR UPDATE"
    async with held_by_another_connection(pg_database, lock, run_id):
        group = asyncio.gather(pg_db.write(_txid), pg_db.write(update), pg_db.write(_txid))
        # Waiting far past the group's 50 ms lock timeout: alone, with no timeout.
        await waiting_for_a_lock(pg_database, for_seconds=0.3)
        assert not group.done()  # the updating member waits (alone, with no timeout)
    txids = await asyncio.wait_for(group, timeout=10)
    query = select(llm_calls.c.cost).where(llm_calls.c.run_id == run_id)
    cost = await pg_db.read(lambda tx: tx.conn.execute(query).scalar_one())

    assert len(set(txids)) == 3  # the group gave up and each member committed on its own
    assert cost == Decimal(7)
