"""A worker with more free slots than a claim takes claims in batches, one after another at
once, rather than all its steps in one long transaction."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import select

from agentmill.config import Settings
from agentmill.domain.states import RunStatus
from agentmill.domain.validation import load_workflow_text
from agentmill.engine import worker as worker_module
from agentmill.engine.engine import Engine
from agentmill.store.db import Tx
from agentmill.store.models import steps
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
