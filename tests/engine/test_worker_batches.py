"""A worker with many steps at once works on them in batches: with more free slots than a claim
takes, it claims in batches, one after another at once, rather than all its steps in one long
transaction; and on PostgreSQL, the results it records in one group commit lock their runs with
one statement for the group, not one per result."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import select

from agentmill.config import Settings
from agentmill.domain.states import RunStatus
from agentmill.domain.validation import load_workflow_text
from agentmill.engine import worker as worker_module
from agentmill.engine.engine import Engine
from agentmill.store import statements as sql
from agentmill.store.db import Tx
from agentmill.store.models import steps
from agentmill.store.prepared import Prepared
from tests.conftest import started
from tests.factories import work_until_final

ONE_STEP = """
name: one-step
agents:
  m: {model: scripted/m, options: {reply: ok, latency: 0.2}}
steps:
  - {id: s, agent: m, prompt: go}
"""


@pytest.fixture
async def engine(own_database_url: str, settings: Settings) -> AsyncIterator[Engine]:
    """On a database of its own: the worker claims whatever is ready in the whole database."""
    async with started(own_database_url) as db:
        yield Engine(db, settings=settings)


async def test_a_worker_with_many_free_slots_claims_in_batches(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker_module, "_CLAIM_BATCH", 20)
    version = await engine.register(load_workflow_text(ONE_STEP))
    run_ids = [await engine.start_run(version, {}) for _ in range(100)]
    statuses = await work_until_final(engine, run_ids, concurrency=1000, within=20)

    assert statuses == [RunStatus.COMPLETED] * 100

    def read(tx: Tx) -> list[tuple[object, int]]:
        return [tuple(row) for row in tx.conn.execute(select(steps.c.started_at, steps.c.attempt))]

    rows = await engine.db.read(read)
    assert {attempt for _, attempt in rows} == {1}  # none ran twice
    # A claim stamps its steps with its own time: one time per claim transaction.
    per_claim = Counter(started for started, _ in rows)
    assert max(per_claim.values()) == 20
    assert len(per_claim) == 5


def count_rows_calls(statement: Prepared, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The parameters of each call of ``statement.rows``."""
    calls: list[Any] = []
    real = statement.rows

    def counting(conn: Any, params: Any) -> list[Any]:
        calls.append(params)
        return real(conn, params)

    monkeypatch.setattr(statement, "rows", counting)
    return calls


@pytest.mark.parametrize("own_database_url", ["postgresql"], indirect=True)
async def test_results_recorded_together_lock_their_runs_in_one_statement(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    version = await engine.register(load_workflow_text(ONE_STEP))
    run_ids = [await engine.start_run(version, {}) for _ in range(60)]
    one_by_one = count_rows_calls(sql.LOCK_RUN_STATUS, monkeypatch)
    together = count_rows_calls(sql.LOCK_FREE_RUNS_STATUS, monkeypatch)
    statuses = await work_until_final(engine, run_ids, concurrency=100)

    assert statuses == [RunStatus.COMPLETED] * 60
    locked_together = [run_id for params in together for run_id in params["b_ids"]]
    # Every result locked its run: most of them (the 60 finish at about the same time) in a
    # statement for their whole group, a straggler recorded alone in one of its own. Before,
    # each of the 60 results took a statement of its own.
    assert set(locked_together) | {params["b_id"] for params in one_by_one} == set(run_ids)
    assert len(locked_together) >= 45
    assert len(together) * 4 <= len(locked_together)  # groups of four runs or more
