"""On PostgreSQL, a worker recording many results in one group commit locks their runs with
one statement for the group, not one per result."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from agentmill.config import Settings
from agentmill.domain.states import RunStatus
from agentmill.domain.validation import load_workflow_text
from agentmill.engine.engine import Engine
from agentmill.store import statements as sql
from agentmill.store.prepared import Prepared
from tests.conftest import new_pg_database, started
from tests.factories import work_until_final

ONE_STEP = """
name: one-step
agents:
  m: {model: scripted/m, options: {reply: ok, latency: 0.3}}
steps:
  - {id: s, agent: m, prompt: go}
"""


@pytest.fixture
async def engine(settings: Settings) -> AsyncIterator[Engine]:
    """On a database of its own: the worker claims whatever is ready in the whole database."""
    async with new_pg_database() as url, started(url) as db:
        yield Engine(db, settings=settings)


def count_rows_calls(statement: Prepared, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The parameters of each call of ``statement.rows``."""
    calls: list[Any] = []
    real = statement.rows

    def counting(conn: Any, params: Any) -> list[Any]:
        calls.append(params)
        return real(conn, params)

    monkeypatch.setattr(statement, "rows", counting)
    return calls


async def test_results_recorded_together_lock_their_runs_in_one_statement(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    version = await engine.register(load_workflow_text(ONE_STEP))
    run_ids = [await engine.start_run(version, {}) for _ in range(60)]
    one_by_one = count_rows_calls(sql.LOCK_RUN_STATUS, monkeypatch)
    together = count_rows_calls(sql.LOCK_RUNS_STATUS, monkeypatch)
    statuses = await work_until_final(engine, run_ids, concurrency=100)

    assert statuses == [RunStatus.COMPLETED] * 60
    locked_together = [run_id for params in together for run_id in params["b_ids"]]
    # Every result locked its run: most of them (the 60 finish at about the same time) in a
    # statement for their whole group, a straggler recorded alone in one of its own. Before,
    # each of the 60 results took a statement of its own.
    assert set(locked_together) | {params["b_id"] for params in one_by_one} == set(run_ids)
    assert len(locked_together) >= 45
    assert len(together) * 4 <= len(locked_together)  # groups of four runs or more
