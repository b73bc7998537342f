"""Decision 1: a completion is conditional on the step's attempt and lease, so late or repeated
results change nothing; expired leases are taken over."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from datetime import timedelta

import pytest
from sqlalchemy import update

from agentmill.config import Settings
from agentmill.domain.states import RunStatus, StepStatus
from agentmill.engine.claims import Claim, StaleClaim
from agentmill.engine.engine import Engine
from agentmill.engine.outcomes import StepReport, Succeeded
from agentmill.store.db import Database
from agentmill.store.models import steps
from tests.factories import start, steps_by_key

TWO_STEPS = """
name: two
steps:
  - id: a
    value: 1
  - id: b
    needs: [a]
    value: "{{ steps.a.output + 1 }}"
outputs:
  b: "{{ steps.b.output }}"
"""


async def claim_one(engine: Engine, owner: str, run_id: str) -> Claim:
    claims = await engine.db.write(
        lambda tx: engine.transitions.claim(tx, owner=owner, limit=1, root_run_id=run_id)
    )
    assert len(claims) == 1
    return claims[0]


def report(value: object) -> StepReport:
    return StepReport(outcome=Succeeded(output=value))


async def test_a_duplicate_result_for_a_finished_step_changes_nothing(engine: Engine) -> None:
    run_id = await start(engine, TWO_STEPS)
    claim = await claim_one(engine, "w1", run_id)
    await engine.db.write(lambda tx: engine.transitions.record(tx, claim, report(1)))
    events_before = await engine.events(run_id=run_id)

    with pytest.raises(StaleClaim):
        await engine.db.write(lambda tx: engine.transitions.record(tx, claim, report(999)))

    assert (await steps_by_key(engine, run_id))["a"].output == 1
    assert await engine.events(run_id=run_id) == events_before
    assert "b" in await steps_by_key(engine, run_id)  # started exactly once, by the first result


async def test_an_expired_lease_is_taken_over_and_the_old_attempt_cannot_complete(
    engine: Engine,
) -> None:
    run_id = await start(engine, TWO_STEPS)
    first = await claim_one(engine, "w1", run_id)
    # w1 stops heartbeating: its lease runs out
    await engine.db.write(
        lambda tx: tx.conn.execute(
            update(steps)
            .where(steps.c.id == first.step_id)
            .values(lease_expires_at=tx.now - timedelta(seconds=1))
        )
    )

    second = await claim_one(engine, "w2", run_id)
    assert (second.step_id, second.attempt) == (first.step_id, 2)

    with pytest.raises(StaleClaim):
        await engine.db.write(lambda tx: engine.transitions.record(tx, first, report("late")))
    await engine.db.write(lambda tx: engine.transitions.record(tx, second, report(1)))

    step = (await steps_by_key(engine, run_id))["a"]
    assert (step.status, step.output, step.attempt) == (StepStatus.SUCCEEDED, 1, 2)
    types = [e["type"] for e in await engine.events(run_id=run_id) if e["step_key"] == "a"]
    assert types.count("step.succeeded") == 1
    assert "step.lease_expired" in types


async def test_a_live_lease_is_not_taken(engine: Engine) -> None:
    run_id = await start(engine, TWO_STEPS)
    await claim_one(engine, "w1", run_id)

    taken = await engine.db.write(
        lambda tx: engine.transitions.claim(tx, owner="w2", limit=5, root_run_id=run_id)
    )

    assert taken == []


async def test_heartbeats_extend_held_leases_and_report_lost_ones(engine: Engine) -> None:
    run_id = await start(engine, TWO_STEPS)
    claim = await claim_one(engine, "w1", run_id)

    assert (
        await engine.db.write(
            lambda tx: engine.transitions.heartbeat(tx, owner="w1", step_ids=[claim.step_id])
        )
        == set()
    )
    assert await engine.db.write(
        lambda tx: engine.transitions.heartbeat(tx, owner="w2", step_ids=[claim.step_id])
    ) == {claim.step_id}
    await engine.cancel(run_id)
    assert await engine.db.write(
        lambda tx: engine.transitions.heartbeat(tx, owner="w1", step_ids=[claim.step_id])
    ) == {claim.step_id}


async def test_concurrent_completions_of_a_join_start_it_exactly_once(engine: Engine) -> None:
    wide = "name: wide\nsteps:\n" + "".join(f"  - id: p{i}\n    value: {i}\n" for i in range(20))
    wide += (
        "  - id: join\n    needs: ["
        + ", ".join(f"p{i}" for i in range(20))
        + "]\n    value: done\n"
    )
    run_id = await start(engine, wide)
    claims = await engine.db.write(
        lambda tx: engine.transitions.claim(tx, owner="w", limit=50, root_run_id=run_id)
    )
    assert len(claims) == 20

    await asyncio.gather(
        *(
            engine.db.write(lambda tx, c=c: engine.transitions.record(tx, c, report(c.spec_id)))
            for c in claims
        )
    )

    rows = await steps_by_key(engine, run_id)
    assert rows["join"].status == StepStatus.QUEUED
    queued = [
        e
        for e in await engine.events(run_id=run_id)
        if e["type"] == "step.queued" and e["step_key"] == "join"
    ]
    assert len(queued) == 1
    run = await engine.run_until_settled(run_id)
    assert run.status == RunStatus.COMPLETED


async def test_a_result_recorded_while_a_heartbeat_runs_is_not_taken_for_a_lost_lease(
    db: Database,
) -> None:
    """The heartbeat asks which leases it still holds; a step recorded meanwhile holds none,
    but it is done, not lost: its task must go on to acknowledge its queue message rather than
    be cancelled (which left the message pending until a takeover)."""
    engine = Engine(db, settings=Settings(lease_seconds=0.3, poll_interval=0.05))
    run_id = await start(engine, TWO_STEPS)
    worker = engine.worker(name="slow-ack", root_run_id=run_id)
    inner = worker.queue
    acknowledged: list[str] = []

    class SlowAcks:
        name = inner.name

        def __getattr__(self, attribute: str) -> object:
            return getattr(inner, attribute)

        async def done(self, step_ids: Iterable[str]) -> None:
            ids = list(step_ids)
            await asyncio.sleep(0.5)  # several heartbeats (every 0.1 s) run meanwhile
            await inner.done(ids)
            acknowledged.extend(ids)

    worker.queue = SlowAcks()  # type: ignore[assignment]
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    for _ in range(100):
        if (await engine.get_run(run_id)).status.is_final and len(acknowledged) == 2:
            break
        await asyncio.sleep(0.05)
    stop.set()
    await running
    assert (await engine.get_run(run_id)).status == RunStatus.COMPLETED
    step_ids = {step.id for step in (await steps_by_key(engine, run_id)).values()}
    assert sorted(acknowledged) == sorted(step_ids)
