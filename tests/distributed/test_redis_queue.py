"""The Redis Streams queue (real Redis, real PostgreSQL): steps go out through the outbox,
come back through the consumer group, and a duplicate, lost or orphaned message changes
nothing but is made good."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
import redis.asyncio as redis
from sqlalchemy import select, update

from agentmill.config import Settings
from agentmill.domain.states import RunStatus
from agentmill.domain.validation import load_workflow_text
from agentmill.engine.engine import Engine
from agentmill.queue import redis_streams
from agentmill.queue.redis_streams import GROUP, RedisQueue, stream_name
from agentmill.store.db import Database, Tx
from agentmill.store.models import steps
from tests.servers import silent_redis

REDIS_URL = "redis://127.0.0.1:6379/0"
FLOW = """
name: fan
agents:
  m: {model: scripted/m, options: {reply: ok, latency: 0.01}}
  flaky: {model: scripted/f, options: {reply: ok, fail_attempts: 1}}
steps:
  - {id: a, agent: m, prompt: a}
  - {id: b, agent: flaky, prompt: b, retry: {max_attempts: 3, backoff: 0.05}}
  - {id: c, agent: m, prompt: c, needs: [a, b]}
"""


@pytest.fixture
async def engines(fresh_pg: str) -> AsyncIterator[list[Engine]]:
    """Two engines (as two worker processes would have) using the Redis queue."""
    settings = Settings(queue_url=REDIS_URL, lease_seconds=2, poll_interval=0.2)
    databases = [Database(fresh_pg), Database(fresh_pg)]
    for db in databases:
        await db.start()
    engines = [Engine(db, settings=settings) for db in databases]
    yield engines
    for engine in engines:
        await engine.aclose()  # its Redis connections (queue, live events) too
    for db in databases:
        await db.close()
    client = redis.from_url(REDIS_URL)
    await client.delete(stream_name(fresh_pg), stream_name(fresh_pg, "gpu"))
    await client.aclose()


async def _run_all(engines: list[Engine], count: int) -> list[str]:
    version = await engines[0].register(load_workflow_text(FLOW))
    run_ids = [await engines[0].start_run(version, {}) for _ in range(count)]
    stop = asyncio.Event()
    workers = [asyncio.create_task(e.worker(name=f"w{i}").run(stop)) for i, e in enumerate(engines)]
    try:
        for _ in range(600):
            runs = [await engines[0].get_run(r) for r in run_ids]
            if all(r.status.is_final for r in runs):
                break
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.gather(*workers)
    assert {r.status for r in runs} == {RunStatus.COMPLETED}
    return run_ids


async def _pending(fresh_pg: str) -> int:
    client = redis.from_url(REDIS_URL)
    try:
        return int((await client.xpending(stream_name(fresh_pg), GROUP))["pending"])
    finally:
        await client.aclose()


async def test_runs_complete_through_the_stream_and_every_message_is_acknowledged(
    engines: list[Engine], fresh_pg: str
) -> None:
    run_ids = await _run_all(engines, 20)

    log = await engines[0].events()
    succeeded = Counter((e["run_id"], e["step_key"]) for e in log if e["type"] == "step.succeeded")
    assert len(succeeded) == 3 * len(run_ids)
    assert set(succeeded.values()) == {1}
    client = redis.from_url(REDIS_URL)
    try:
        sent = await client.xlen(stream_name(fresh_pg))
    finally:
        await client.aclose()
    # a and b of every run, and b again after its retry, went through Redis
    assert sent >= 3 * len(run_ids)
    assert await _pending(fresh_pg) == 0
    owners = {w["queue"] for w in await engines[0].db.read(_workers)}
    assert owners == {"redis"}


def _workers(tx: object) -> list[dict[str, object]]:
    from sqlalchemy import select

    from agentmill.store.models import worker_processes

    return [dict(r._mapping) for r in tx.conn.execute(select(worker_processes))]  # type: ignore[attr-defined]


async def test_a_duplicate_message_for_a_finished_step_changes_nothing(
    engines: list[Engine], fresh_pg: str
) -> None:
    (run_id,) = await _run_all(engines, 1)
    before = await engines[0].events(run_id=run_id)
    step_ids = [s.id for s in await engines[0].steps(run_id)]
    client = redis.from_url(REDIS_URL)
    try:
        for step_id in step_ids:
            await client.xadd(stream_name(fresh_pg), {"step": step_id})
    finally:
        await client.aclose()

    stop = asyncio.Event()
    worker = asyncio.create_task(engines[1].worker(name="late").run(stop))
    for _ in range(100):
        if await _pending(fresh_pg) == 0:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    stop.set()
    await worker

    assert await engines[0].events(run_id=run_id) == before
    assert await _pending(fresh_pg) == 0  # read, found finished, acknowledged


async def test_a_step_whose_message_was_lost_is_sent_again(
    engines: list[Engine], fresh_pg: str
) -> None:
    version = await engines[0].register(load_workflow_text(FLOW))
    run_id = await engines[0].start_run(version, {})
    # As if a relay had sent the ready steps and Redis then lost them.
    await engines[0].db.write(
        lambda tx: tx.conn.execute(
            update(steps).values(published_at=tx.now - timedelta(minutes=10))
        )
    )

    stop = asyncio.Event()
    worker = asyncio.create_task(engines[1].worker(name="w").run(stop))
    try:
        for _ in range(200):
            if (await engines[0].get_run(run_id)).status.is_final:
                break
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await worker
    assert (await engines[0].get_run(run_id)).status == RunStatus.COMPLETED


async def test_messages_read_but_not_taken_go_back_when_a_worker_stops(
    engines: list[Engine], fresh_pg: str
) -> None:
    version = await engines[0].register(load_workflow_text(FLOW))
    await engines[0].start_run(version, {})  # a and b are ready
    queue = RedisQueue(REDIS_URL, engines[0], owner="quitter", free=lambda: 10)
    woke = asyncio.Event()
    await queue.start(woke.set)
    await asyncio.wait_for(woke.wait(), timeout=10)  # its relay sent them, its reader has them
    client = redis.from_url(REDIS_URL, decode_responses=True)
    stream = stream_name(fresh_pg)
    try:
        held = await client.xpending_range(stream, GROUP, "-", "+", 10, consumername="quitter")
        assert len(held) == 2

        await queue.close()  # stops without taking them

        assert await client.xpending_range(stream, GROUP, "-", "+", 10, "quitter") == []
        entries = await client.xrange(stream)
        assert Counter(fields["step"] for _, fields in entries).most_common(1)[0][1] == 2
    finally:
        await client.aclose()


async def _until_read(fresh_pg: str, count: int) -> None:
    """Until a reader holds ``count`` messages (and has handled Redis's answer)."""
    client = redis.from_url(REDIS_URL)
    try:
        for _ in range(100):
            if (
                len(await client.xpending_range(stream_name(fresh_pg), GROUP, "-", "+", 10))
                == count
            ):
                break
            await asyncio.sleep(0.05)
    finally:
        await client.aclose()
    await asyncio.sleep(0.1)


async def test_steps_finished_together_are_acknowledged_together(
    engines: list[Engine], fresh_pg: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    acks: list[tuple[str, ...]] = []
    xack = redis.Redis.xack

    def counting(self: redis.Redis, name: str, groupname: str, *ids: str) -> Any:
        acks.append(ids)
        return xack(self, name, groupname, *ids)

    monkeypatch.setattr(redis.Redis, "xack", counting)
    version = await engines[0].register(load_workflow_text(FLOW))
    await engines[0].start_run(version, {})  # a and b are ready
    queue = RedisQueue(REDIS_URL, engines[0], owner="w", free=lambda: 10)
    woke = asyncio.Event()
    await queue.start(woke.set)
    try:
        await asyncio.wait_for(woke.wait(), timeout=10)
        await _until_read(fresh_pg, 2)
        claims = await queue.take(10)
        assert len(claims) == 2

        await asyncio.gather(*(queue.done([claim.step_id]) for claim in claims))

        assert [len(ids) for ids in acks] == [2]  # one XACK for both
        assert await _pending(fresh_pg) == 0
    finally:
        await queue.close()


async def test_a_message_whose_step_was_locked_for_a_moment_is_taken_again(
    engines: list[Engine], fresh_pg: str
) -> None:
    version = await engines[0].register(load_workflow_text(FLOW))
    run_id = await engines[0].start_run(version, {})  # a and b are ready
    queue = RedisQueue(REDIS_URL, engines[0], owner="w", free=lambda: 10)
    woke = asyncio.Event()
    await queue.start(woke.set)
    other = await asyncpg.connect(fresh_pg)
    try:
        await asyncio.wait_for(woke.wait(), timeout=10)
        await _until_read(fresh_pg, 2)
        # Another transaction holds a's row, as a relay marking steps sent may for a moment.
        locker = other.transaction()
        await locker.start()
        await other.execute(
            "SELECT id FROM steps WHERE run_id = $1 AND step_key = 'a' FOR UPDATE", run_id
        )
        first = await queue.take(10)
        await locker.rollback()
        woke.clear()
        await asyncio.wait_for(woke.wait(), timeout=5)  # told to take again
        second = await queue.take(10)
    finally:
        await other.close()
        await queue.close()

    assert [c.step_key for c in first] == ["b"]
    # Not dropped with its message (b may come again too: this bare queue keeps no lease).
    assert "a" in {c.step_key for c in second}


async def test_steps_sent_together_are_read_and_claimed_together(
    engines: list[Engine], fresh_pg: str
) -> None:
    wide = "name: wide\nsteps:\n" + "".join(f"  - {{id: s{i}, value: {i}}}\n" for i in range(30))
    version = await engines[0].register(load_workflow_text(wide))
    queue = RedisQueue(REDIS_URL, engines[0], owner="w", free=lambda: 100)
    woke = asyncio.Event()
    await queue.start(woke.set)
    try:
        await asyncio.sleep(0.5)  # its reader waits in XREADGROUP
        await engines[0].start_run(version, {})  # its relay sends the 30 steps at once
        await asyncio.wait_for(woke.wait(), timeout=10)
        claims = await queue.take(100)
    finally:
        await queue.close()

    # Redis woke the reader with the first message; it read the rest before waking the worker.
    assert len(claims) == 30


async def test_a_take_reads_the_messages_waiting_up_to_its_limit(
    engines: list[Engine], fresh_pg: str
) -> None:
    wide = "name: wide\nsteps:\n" + "".join(f"  - {{id: s{i}, value: {i}}}\n" for i in range(30))
    version = await engines[0].register(load_workflow_text(wide))
    slots = [1]  # one free slot: the reader reads one message ahead, no more
    queue = RedisQueue(REDIS_URL, engines[0], owner="w", free=lambda: slots[0])
    woke = asyncio.Event()
    await queue.start(woke.set)
    try:
        await engines[0].start_run(version, {})
        await asyncio.wait_for(woke.wait(), timeout=10)
        await _until_read(fresh_pg, 1)
        slots[0] = 30  # say the steps of another run just finished, freeing 30 slots
        claims = await queue.take(30)
    finally:
        await queue.close()

    # All in one claim: the take read what was waiting, not only what the reader held.
    assert len(claims) == 30


async def test_a_take_does_not_hang_on_a_redis_that_never_answers(
    engines: list[Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_streams, "SOCKET_TIMEOUT", 0.3)
    async with silent_redis() as url:
        queue = RedisQueue(url, engines[0], owner="w", free=lambda: 10)
        try:
            # Nothing read: the take asks Redis for waiting messages, gives up, claims none.
            assert await asyncio.wait_for(queue.take(10), timeout=5) == []
        finally:
            await queue.close()


async def test_messages_a_failed_take_did_not_claim_are_taken_at_the_next(
    engines: list[Engine], fresh_pg: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    version = await engines[0].register(load_workflow_text(FLOW))
    run_id = await engines[0].start_run(version, {})  # a and b are ready
    engine = engines[0]
    queue = RedisQueue(REDIS_URL, engine, owner="w", free=lambda: 10)
    woke = asyncio.Event()
    await queue.start(woke.set)
    await asyncio.wait_for(woke.wait(), timeout=10)
    await _until_read(fresh_pg, 2)
    write = engine.db.write
    refusals = [ConnectionRefusedError("sorry, too many clients already")]

    async def failing_once(fn: Any, **options: Any) -> Any:
        if refusals:
            raise refusals.pop()
        return await write(fn, **options)

    monkeypatch.setattr(engine.db, "write", failing_once)
    try:
        with pytest.raises(ConnectionRefusedError):
            await queue.take(10)  # the database refused the claim
        claims = await queue.take(10)
    finally:
        await queue.close()

    assert sorted(c.step_key for c in claims) == ["a", "b"]
    assert {c.run_id for c in claims} == {run_id}


ROUTED = """
name: routed
steps:
  - {id: a, value: "a"}
  - {id: b, needs: [a], queue: gpu, value: "{{ steps.a.output }}b"}
  - {id: c, needs: [b], value: "{{ steps.b.output }}c"}
outputs:
  c: "{{ steps.c.output }}"
"""


async def _step(engine: Engine, run_id: str, key: str) -> Any:
    def read(tx: Tx) -> Any:
        query = select(steps).where(steps.c.run_id == run_id, steps.c.step_key == key)
        return tx.conn.execute(query).one_or_none()

    return await engine.db.read(read)


async def test_each_named_queue_has_its_stream_and_only_its_workers_read_it(
    engines: list[Engine], fresh_pg: str
) -> None:
    assert stream_name(fresh_pg, "default") == stream_name(fresh_pg)
    assert stream_name(fresh_pg, "gpu") == stream_name(fresh_pg) + ":gpu"
    version = await engines[0].register(load_workflow_text(ROUTED))
    run_id = await engines[0].start_run(version, {})
    stop = asyncio.Event()
    cpu = engines[0].worker(name="cpu")  # serves "default"
    tasks = [asyncio.create_task(cpu.run(stop))]
    try:
        for _ in range(400):
            b = await _step(engines[0], run_id, "b")
            if b is not None:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # relayed and read meanwhile, but by nobody serving gpu
        b = await _step(engines[0], run_id, "b")
        assert (b.queue, b.status, b.attempt) == ("gpu", "QUEUED", 0)
        assert b.published_at is not None  # sent, to the gpu stream
        client = redis.from_url(REDIS_URL, decode_responses=True)
        try:
            sent = await client.xrange(stream_name(fresh_pg, "gpu"))
            assert [fields["step"] for _, fields in sent] == [b.id]
        finally:
            await client.aclose()

        gpu = engines[1].worker(name="gpu", queues=("gpu",))
        tasks.append(asyncio.create_task(gpu.run(stop)))
        for _ in range(400):
            run = await engines[0].get_run(run_id)
            if run.status.is_final:
                break
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    assert run.status == RunStatus.COMPLETED
    assert run.outputs == {"c": "abc"}
    client = redis.from_url(REDIS_URL)
    try:
        for queue in ("default", "gpu"):
            pending = await client.xpending(stream_name(fresh_pg, queue), GROUP)
            assert int(pending["pending"]) == 0
    finally:
        await client.aclose()


async def test_a_redis_worker_serving_every_queue_finds_the_new_streams(
    engines: list[Engine], fresh_pg: str
) -> None:
    # A first step is never claimed inline: it reaches the worker through the gpu stream.
    gpu_first = "name: gpu-first\nsteps:\n  - {id: g, value: 1, queue: gpu}\n"
    version = await engines[0].register(load_workflow_text(gpu_first))
    run_id = await engines[0].start_run(version, {})
    stop = asyncio.Event()
    everything = engines[0].worker(name="all", queues=None)
    task = asyncio.create_task(everything.run(stop))
    try:
        for _ in range(400):
            run = await engines[0].get_run(run_id)
            if run.status.is_final:
                break
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await task
    assert run.status == RunStatus.COMPLETED
    client = redis.from_url(REDIS_URL)
    try:
        assert await client.xlen(stream_name(fresh_pg, "gpu")) == 1
        assert int((await client.xpending(stream_name(fresh_pg, "gpu"), GROUP))["pending"]) == 0
    finally:
        await client.aclose()
