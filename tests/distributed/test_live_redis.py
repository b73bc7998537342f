"""Live step events across processes over real Redis pub/sub: a worker's token deltas reach a
follower of the run in another process's API, and only when someone follows."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from agentmill.client import AsyncClient
from agentmill.config import Settings
from agentmill.engine.engine import Engine
from agentmill.engine.live import DELTA, LiveBus, live_event
from agentmill.store.db import Database
from tests.cli.test_up import free_port, start_up, stop

REDIS_URL = "redis://127.0.0.1:6379/0"
ANSWER = " ".join(f"token{i}" for i in range(45))
FLOW = f"""
name: live
agents:
  m: {{model: scripted/m, options: {{stream_delay: 0.02, reply: "{ANSWER}"}}}}
steps:
  - {{id: go, type: human}}
  - {{id: write, agent: m, prompt: Write., needs: [go]}}
"""


def delta(run_id: str, text: str) -> dict[str, Any]:
    return live_event(run_id=run_id, step_key="s", attempt=1, type=DELTA, data={"text": text})


async def next_of(queue: asyncio.Queue[dict[str, Any]]) -> dict[str, Any]:
    return await asyncio.wait_for(queue.get(), timeout=10)


async def test_one_bus_publishes_to_a_follower_on_another() -> None:
    run_id = f"run_{uuid.uuid4().hex}"
    worker, api, idle = LiveBus(REDIS_URL), LiveBus(REDIS_URL), LiveBus(REDIS_URL)
    heard_by_api: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    heard_by_worker: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    try:
        assert not await idle.watched(run_id)  # nobody follows yet
        unsubscribe = await api.subscribe(run_id, heard_by_api.put_nowait)
        assert await worker.watched(run_id)

        await worker.publish(run_id, delta(run_id, "hello"))
        received = await next_of(heard_by_api)
        assert received["data"] == {"text": "hello"}
        assert received["ephemeral"] is True
        assert received["run_id"] == run_id

        # A bus that follows and publishes hears its own events once, from memory, not again
        # from Redis: "mine" reaches the worker, then "reply" (published after it) reaches the
        # api, by which time Redis has long echoed "mine" back to the api.
        stop_worker = await worker.subscribe(run_id, heard_by_worker.put_nowait)
        await api.publish(run_id, delta(run_id, "mine"))
        assert (await next_of(heard_by_api))["data"]["text"] == "mine"
        assert (await next_of(heard_by_worker))["data"]["text"] == "mine"
        await worker.publish(run_id, delta(run_id, "reply"))
        assert (await next_of(heard_by_api))["data"]["text"] == "reply"
        assert heard_by_api.empty()
        stop_worker()
        unsubscribe()
    finally:
        for bus in (worker, api, idle):
            await bus.aclose()


async def test_many_lookups_at_once_share_few_round_trips(monkeypatch: pytest.MonkeyPatch) -> None:
    # A worker starting thousands of steps asks, for each run, whether anyone follows it: asked
    # together, one PUBSUB NUMSUB answers up to a thousand (before, one command each, and past
    # 100 at once the process ran out of connections, so followed runs looked unfollowed).
    asked: list[int] = []
    numsub = Redis.pubsub_numsub

    def counting(self: Redis, *names: str) -> Any:
        asked.append(len(names))
        return numsub(self, *names)

    monkeypatch.setattr(Redis, "pubsub_numsub", counting)
    followed = f"run_{uuid.uuid4().hex}"
    others = [f"run_{uuid.uuid4().hex}" for _ in range(2500)]
    worker, api = LiveBus(REDIS_URL), LiveBus(REDIS_URL)
    try:
        unsubscribe = await api.subscribe(followed, lambda event: None)
        answers = await asyncio.gather(*(worker.watched(run_id) for run_id in [*others, followed]))
        unsubscribe()
    finally:
        for bus in (worker, api):
            await bus.aclose()
    assert answers == [False] * 2500 + [True]
    assert asked == [1000, 1000, 501]


async def test_lookups_when_redis_is_unreachable_say_nobody_follows() -> None:
    bus = LiveBus("redis://127.0.0.1:1/0")  # nothing listens there
    try:
        answers = await asyncio.wait_for(
            asyncio.gather(*(bus.watched(f"run_{i}") for i in range(300))), timeout=10
        )
    finally:
        await bus.aclose()
    assert answers == [False] * 300


async def test_a_worker_streams_to_a_follower_of_another_process(
    tmp_path: Path, fresh_pg: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENTMILL_REDIS_URL", REDIS_URL)
    port = free_port()
    api, first = start_up(tmp_path, port, "--db", fresh_pg, command="api")
    db = Database(fresh_pg)
    await db.start()
    engine = Engine(db, settings=Settings(redis_url=REDIS_URL, poll_interval=0.05))
    stop_worker = asyncio.Event()
    worker = asyncio.create_task(engine.worker(name="w", queues=None).run(stop_worker))
    seen: list[dict[str, Any]] = []
    try:
        async with AsyncClient(f"http://127.0.0.1:{port}", api_key=first["API key"]) as am:
            workflow = await am.push_workflow(first["workspace"], FLOW)
            run = await am.start_run(workflow["id"], {})
            async with contextlib.aclosing(am.events(run["id"])) as events:
                async for event in events:
                    seen.append(event)
                    if event["type"] == "step.waiting":  # following now: let it write
                        await am.approve(run["id"], "go")
    finally:
        stop_worker.set()
        await worker
        await engine.aclose()
        await db.close()
        stop(api)

    deltas = [e for e in seen if e["type"] == "step.delta"]
    done = next(e for e in seen if e["type"] == "step.succeeded" and e["step"] == "write")
    assert len(deltas) >= 2
    assert all(seen.index(e) < seen.index(done) for e in deltas)
    assert "".join(e["data"]["text"] for e in deltas) == ANSWER
    assert seen[-1]["type"] == "run.completed"
