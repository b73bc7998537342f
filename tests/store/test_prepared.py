"""Prepared statements run on the DBAPI cursor, on both engines: the values they read and write
are SQLAlchemy's own (exact money, aware times), and on PostgreSQL a driver error reaches the
caller as SQLAlchemy's error, with a dropped connection invalidated, as ``execute`` does."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import asyncpg
import pytest
from sqlalchemy import bindparam, insert, select, text
from sqlalchemy.exc import IntegrityError

from agentmill.ids import new_id
from agentmill.store.db import Database, Tx
from agentmill.store.models import llm_calls, revoked_tokens
from agentmill.store.prepared import Prepared
from tests.store.test_db import call_row

INSERT_CALLS = Prepared(insert(llm_calls))
CALLS_OF_RUN = Prepared(
    select(llm_calls.c.cost, llm_calls.c.created_at, llm_calls.c.latency_ms).where(
        llm_calls.c.run_id == bindparam("b_run")
    )
)
INSERT_REVOKED = Prepared(insert(revoked_tokens))


async def test_prepared_rows_read_what_sqlalchemy_reads(db: Database) -> None:
    run_id = new_id("run")
    when = datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=UTC)
    rows = [call_row(Decimal("0.000123456"), when, run_id), call_row(Decimal(7), when, run_id)]
    await db.write(lambda tx: INSERT_CALLS.run_many(tx.conn, rows))

    def both(tx: Tx) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
        prepared = [tuple(r) for r in CALLS_OF_RUN.rows(tx.conn, {"b_run": run_id})]
        plain = [tuple(r) for r in tx.conn.execute(CALLS_OF_RUN.statement, {"b_run": run_id})]
        return prepared, plain

    prepared, plain = await db.write(both)

    assert sorted(prepared) == sorted(plain)
    assert sorted(prepared) == [
        (Decimal("0.000123456"), when, 1.5),
        (Decimal(7), when, 1.5),
    ]
    assert all(isinstance(cost, Decimal) for cost, _, _ in prepared)


async def test_a_constraint_violation_is_sqlalchemys_integrity_error(db: Database) -> None:
    token = {"jti": new_id("jti"), "expires_at": datetime.now(UTC)}
    await db.write(lambda tx: INSERT_REVOKED.run_many(tx.conn, [token]))

    with pytest.raises(IntegrityError if db.dialect == "postgresql" else Exception) as raised:
        await db.write(lambda tx: INSERT_REVOKED.run_many(tx.conn, [token]), alone=True)

    if db.dialect == "postgresql":
        assert getattr(raised.value.orig, "sqlstate", None) == "23505"  # unique_violation
    count = await db.read(
        lambda tx: tx.conn.execute(
            select(text("count(*)"))
            .select_from(revoked_tokens)
            .where(revoked_tokens.c.jti == token["jti"])
        ).scalar_one()
    )
    assert count == 1


async def test_a_prepared_statement_on_a_dropped_connection_is_retried_on_a_new_one(
    pg_database: str,
) -> None:
    db = Database(pg_database, pool_size=1)
    await db.start()
    try:
        run_id = new_id("run")
        pid = await db.write(lambda tx: tx.conn.execute(text("SELECT pg_backend_pid()")).scalar())
        admin = await asyncpg.connect(pg_database)
        try:  # the pool's one connection dies while it sits in the pool
            await admin.execute("SELECT pg_terminate_backend($1)", pid)
        finally:
            await admin.close()

        attempts: list[int] = []

        def read_first(tx: Tx) -> list[object]:
            attempts.append(1)
            return CALLS_OF_RUN.rows(tx.conn, {"b_run": run_id})  # the transaction's first

        rows = await db.write(read_first, alone=True)

        # The dead connection raised SQLAlchemy's error, marked invalidated: the write ran
        # again on a new connection (a driver's own error would have reached us instead).
        assert len(attempts) == 2
        assert rows == []
    finally:
        await db.close()
