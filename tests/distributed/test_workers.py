"""Several `agentmill worker` processes share one PostgreSQL queue: a few hundred runs with
parallel steps and retries all finish although one worker is killed (`kill -9`) midway, no
step succeeds twice, and the dead worker's steps are taken over once its lease runs out.
A SIGTERM lets in-flight steps finish within the grace period and gives the rest back."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import time
from collections import Counter
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import func, select

from agentmill.domain.states import RunStatus
from agentmill.domain.validation import load_workflow_text
from agentmill.engine.engine import Engine
from agentmill.store.db import Tx
from agentmill.store.models import events, runs, steps
from agentmill.store.queries import list_events
from tests.cli.test_up import free_port
from tests.distributed.conftest import Workers
from tests.factories import wait_final
from tests.waiting import until

pytestmark = pytest.mark.slow
REDIS_URL = "redis://127.0.0.1:6379/0"  # each test's stream is named after its own database

LOAD = """
name: load
agents:
  fast: {model: scripted/fast, options: {latency: 0.02, reply: ok}}
  flaky: {model: scripted/flaky, options: {latency: 0.02, reply: ok, fail_attempts: 1}}
  slow: {model: scripted/slow, options: {latency: 0.4, reply: ok}}
steps:
  - {id: a, agent: fast, prompt: a}
  - {id: b, agent: flaky, prompt: b, retry: {max_attempts: 4, backoff: 0.05}}
  - {id: c, agent: slow, prompt: c}
  - {id: d, agent: fast, prompt: d, needs: [a]}
  - id: join
    needs: [b, c, d]
    value: "{{ steps.b.output }} {{ steps.d.output }}"
outputs:
  joined: "{{ steps.join.output }}"
"""
SLOW_ONE = """
name: slow-one
agents:
  slow: {model: scripted/slow, options: {latency: %s, reply: done}}
steps:
  - {id: work, agent: slow, prompt: go}
"""


async def _start_many(engine: Engine, yaml_text: str, count: int) -> list[str]:
    version = await engine.register(load_workflow_text(yaml_text))
    return [await engine.start_run(version, {}) for _ in range(count)]


async def _all_events(engine: Engine) -> list[dict[str, object]]:
    def read(tx: Tx) -> list[dict[str, object]]:
        return [dict(r._mapping) for r in tx.conn.execute(events.select().order_by(events.c.id))]

    return await engine.db.read(read)


async def _held_by(engine: Engine, owner: str) -> int:
    """How many steps ``owner`` is running now (holds the lease of)."""

    def read(tx: Tx) -> int:
        query = select(func.count()).where(
            steps.c.status == "RUNNING", steps.c.lease_owner == owner
        )
        return int(tx.conn.scalar(query) or 0)

    return await engine.db.read(read)


async def _completed(engine: Engine, run_ids: list[str]) -> int:
    def read(tx: Tx) -> int:
        query = select(func.count()).where(
            runs.c.id.in_(run_ids), runs.c.status == RunStatus.COMPLETED
        )
        return int(tx.conn.scalar(query) or 0)

    return await engine.db.read(read)


async def _completed_once(
    engine: Engine, statuses: dict[str, RunStatus]
) -> tuple[list[dict[str, object]], Counter[tuple[object, object]]]:
    """Every run completed and no step succeeded twice; returns the log and the successes."""
    failed = [await engine.get_run(r) for r, s in statuses.items() if s != RunStatus.COMPLETED]
    assert not failed, [(r.id, r.status, r.error) for r in failed]
    logged = await _all_events(engine)
    succeeded = Counter(
        (e["run_id"], e["step_key"]) for e in logged if e["type"] == "step.succeeded"
    )
    assert set(succeeded.values()) == {1}  # no step succeeded twice
    return logged, succeeded


# Longer than the waits for the load to end below (the suite's timeout is 120 s), so a load that
# never ends fails on the runs' statuses rather than being cut off.
LONG_LOAD = pytest.mark.timeout(300)


@LONG_LOAD
@pytest.mark.parametrize("queue", ["sql", "redis"])
async def test_runs_survive_a_worker_killed_mid_run(
    starter: Engine, workers: Workers, queue: str
) -> None:
    env = {"AGENTMILL_QUEUE_URL": REDIS_URL} if queue == "redis" else {}
    version = await starter.register(load_workflow_text(LOAD))
    for name in ("w1", "w2", "w3"):
        workers.start(name, "--concurrency", "40", **env)
    # Kill w1 once some runs are done and it holds steps itself (a slow step takes 0.4 s).
    # Runs keep arriving until then, so the load cannot be over before it is caught (the
    # workers can finish 240 runs in about as long as it takes to start them).
    victim = workers.identity("w1")
    run_ids: list[str] = []
    held = done = 0
    for _ in range(600):
        if len(run_ids) < 240:
            run_ids += [await starter.start_run(version, {}) for _ in range(5)]
        else:
            await asyncio.sleep(0.05)
        done = await _completed(starter, run_ids)
        held = await _held_by(starter, victim) if done >= 40 else 0
        if held:
            break
    if not held:  # say what the load looked like instead
        others = {n: await _held_by(starter, workers.identity(n)) for n in ("w2", "w3")}
        raise AssertionError(
            f"w1 never held steps mid-load ({done} of {len(run_ids)} runs completed; "
            f"held by the others now: {others}); its log:\n{workers.log('w1')}"
        )
    workers.procs["w1"].send_signal(signal.SIGKILL)
    workers.procs["w1"].wait(timeout=10)
    while len(run_ids) < 240:  # the rest of the load
        run_ids.append(await starter.start_run(version, {}))

    statuses = await wait_final(starter, run_ids, within=180)

    logged, succeeded = await _completed_once(starter, statuses)
    assert len(succeeded) == len(run_ids) * 5
    taken_over = [
        e for e in logged if e["type"] == "step.lease_expired" and e["data"]["owner"] == victim
    ]
    assert taken_over, "the killed worker held steps; they must have been taken over"
    # Every run's flaky step lost its first attempt: it failed and was retried after its
    # backoff, or it was on the killed worker and was taken over.
    second_chances = {
        e["run_id"]
        for e in logged
        if e["step_key"] == "b" and e["type"] in ("step.retrying", "step.lease_expired")
    }
    assert second_chances == set(run_ids)
    for name in ("w2", "w3"):
        assert workers.procs[name].poll() is None, workers.log(name)


async def test_sigterm_finishes_in_flight_steps_within_the_grace_period(
    starter: Engine, workers: Workers
) -> None:
    # A grace period far longer than the test may last: a worker that sat it out would never
    # exit within the test, so exiting at all shows it left once its steps were done.
    proc = workers.start("w1", "--grace", "3600")
    run_ids = await _start_many(starter, SLOW_ONE % 1.5, 5)

    async def all_started() -> bool:  # every step is running on w1
        started = [e for e in await _all_events(starter) if e["type"] == "step.started"]
        return len(started) == len(run_ids)

    await until(all_started, message="w1 never started every step")

    proc.send_signal(signal.SIGTERM)
    code = await asyncio.to_thread(proc.wait, 60)

    assert code == 0, workers.log("w1")
    statuses = await wait_final(starter, run_ids, within=1)
    assert set(statuses.values()) == {RunStatus.COMPLETED}  # finished by w1 before it left
    assert "grace period over" not in workers.log("w1")  # none was given back
    assert "stopping: no new work" in workers.log("w1")


async def test_steps_left_at_the_end_of_the_grace_period_go_to_another_worker_at_once(
    starter: Engine, workers: Workers
) -> None:
    proc = workers.start("w1", "--grace", "0.5", AGENTMILL_LEASE_SECONDS="60")
    (run_id,) = await _start_many(starter, SLOW_ONE % 3, 1)
    for _ in range(200):
        if any(e["type"] == "step.started" for e in await starter.events(run_id=run_id)):
            break
        await asyncio.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(proc.wait, 30) == 0, workers.log("w1")
    workers.start("w2", AGENTMILL_LEASE_SECONDS="60")

    # The lease would last a minute; the step was given back, so w2 starts it at once.
    statuses = await wait_final(starter, [run_id], within=30)

    assert statuses[run_id] == RunStatus.COMPLETED
    log = await starter.db.read(lambda tx: list_events(tx, run_id=run_id))
    started = [e for e in log if e["type"] == "step.started"]
    assert len(started) == 2
    assert not any(e["type"] == "step.lease_expired" for e in log)
    succeeded = [e for e in log if e["type"] == "step.succeeded"]
    assert [e["attempt"] for e in succeeded] == [2]
    assert any(e["type"] == "step.released" for e in log)


@LONG_LOAD
async def test_workers_recover_when_their_database_connections_are_dropped(
    starter: Engine, workers: Workers, fresh_pg: str
) -> None:
    for name in ("w1", "w2"):
        workers.start(name, "--concurrency", "30")
    run_ids = await _start_many(starter, LOAD, 120)
    # Mid-load: both workers have been seen running steps (dropping connections while a
    # worker is still starting would test its start, not its recovery).
    working: set[str] = set()
    for _ in range(600):
        for name in ("w1", "w2"):
            if name not in working and await _held_by(starter, workers.identity(name)):
                working.add(name)
        if len(working) == 2:
            break
        await asyncio.sleep(0.05)
    assert working == {"w1", "w2"}
    admin = await asyncpg.connect(fresh_pg)
    try:
        for _ in range(3):  # every connection of every worker, three times over
            dropped = 0
            # Each round waits for the workers to have connected again (on a loaded machine
            # that can take longer than the pause), so each round really drops something.
            for _ in range(300):
                dropped = await admin.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
                if dropped:
                    break
                await asyncio.sleep(0.1)
            assert dropped > 0
            await asyncio.sleep(0.7)
    finally:
        await admin.close()

    statuses = await wait_final(starter, run_ids, within=120)

    await _completed_once(starter, statuses)
    for name in ("w1", "w2"):
        assert workers.procs[name].poll() is None, workers.log(name)


def _start_redis(port: int, folder: Path) -> subprocess.Popen[bytes]:
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"],
        cwd=folder,
        stdout=subprocess.DEVNULL,
    )
    for _ in range(100):
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return server
        time.sleep(0.05)
    raise AssertionError("redis-server did not start")


@LONG_LOAD
async def test_workers_carry_on_when_redis_restarts_and_loses_its_data(
    starter: Engine, workers: Workers, tmp_path: Path
) -> None:
    port = free_port()
    server = _start_redis(port, tmp_path)
    queue = {"AGENTMILL_QUEUE_URL": f"redis://127.0.0.1:{port}/0"}
    try:
        for name in ("w1", "w2"):
            workers.start(name, "--concurrency", "30", **queue)
        run_ids = await _start_many(starter, LOAD, 120)
        done: list[int] = []

        async def some_done() -> bool:
            done.append(await _completed(starter, run_ids))
            return done[-1] > 0

        await until(some_done, message="no run completed")
        assert done[-1] < len(run_ids)  # mid-load
        server.kill()
        server.wait(timeout=10)
        await until(  # both workers have met the outage
            lambda: all("failed; retrying" in workers.log(n) for n in ("w1", "w2")),
            message="the workers never noticed redis was gone",
        )
        server = _start_redis(port, tmp_path)  # empty: every message in it is gone

        statuses = await wait_final(starter, run_ids, within=120)
    finally:
        server.kill()
        server.wait(timeout=10)

    await _completed_once(starter, statuses)
    for name in ("w1", "w2"):
        assert workers.procs[name].poll() is None, workers.log(name)
