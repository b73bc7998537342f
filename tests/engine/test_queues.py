"""Named queues: a step runs only on a worker that serves its queue, even as the successor a
finishing worker would otherwise claim in the same transaction."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import select

from agentmill.domain.states import RunStatus, StepStatus
from agentmill.domain.validation import load_workflow_text
from agentmill.engine.engine import Engine
from agentmill.store.db import Tx
from agentmill.store.models import steps
from agentmill.store.repositories.workers import list_workers
from tests.factories import count_claims

ROUTED = """
name: routed
steps:
  - {id: a, value: "a"}
  - {id: b, needs: [a], queue: gpu, value: "{{ steps.a.output }}b"}
  - {id: c, needs: [b], value: "{{ steps.b.output }}c"}
  - id: m
    needs: [a]
    over: "{{ [1, 2, 3] }}"
    step: {value: "{{ item }}", queue: gpu}
outputs:
  c: "{{ steps.c.output }}"
  m: "{{ steps.m.output }}"
"""


async def step_rows(engine: Engine, run_id: str) -> dict[str, Any]:
    def read(tx: Tx) -> dict[str, Any]:
        query = select(steps).where(steps.c.run_id == run_id)
        return {row.step_key: row for row in tx.conn.execute(query)}

    return await engine.db.read(read)


async def wait_for(check: Any, within: float = 20.0) -> None:
    for _ in range(int(within / 0.05)):
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("timed out")


async def test_a_worker_runs_only_the_queues_it_serves(engine: Engine) -> None:
    version = await engine.register(load_workflow_text(ROUTED))
    run_id = await engine.start_run(version, {})

    stop_cpu = asyncio.Event()
    cpu = engine.worker(name="cpu")  # serves "default" only
    assert cpu.queues == ("default",)
    claims = count_claims(cpu)
    cpu_task = asyncio.create_task(cpu.run(stop_cpu))

    async def a_done_and_map_fanned_out() -> bool:
        rows = await step_rows(engine, run_id)
        return rows["a"].status == StepStatus.SUCCEEDED and "m[2]" in rows

    await wait_for(a_done_and_map_fanned_out)
    polled = len(claims)

    async def polled_thrice_more() -> bool:
        return len(claims) >= polled + 3

    await wait_for(polled_thrice_more)  # three more claims: still nobody takes the gpu steps
    rows = await step_rows(engine, run_id)
    for key in ("b", "m[0]", "m[1]", "m[2]"):
        assert rows[key].queue == "gpu"
        assert rows[key].status == StepStatus.QUEUED  # not claimed, not even inline
        assert rows[key].attempt == 0
        assert rows[key].lease_owner is None
    assert rows["a"].queue == "default"
    assert rows["m"].queue == "default"
    assert "c" not in rows
    assert (await engine.get_run(run_id)).status == RunStatus.RUNNING

    stop_gpu = asyncio.Event()
    gpu = engine.worker(name="gpu", queues=("gpu",))
    gpu_task = asyncio.create_task(gpu.run(stop_gpu))
    try:

        async def settled() -> bool:
            return (await engine.get_run(run_id)).status.is_final

        await wait_for(settled)
    finally:
        stop_cpu.set()
        stop_gpu.set()
        await asyncio.gather(cpu_task, gpu_task)
    run = await engine.get_run(run_id)
    assert run.status == RunStatus.COMPLETED
    assert run.outputs == {"c": "abc", "m": [1, 2, 3]}
    rows = await step_rows(engine, run_id)
    assert rows["c"].queue == "default"  # b's successor went back to the default queue

    registered = {w.id: w.queues for w in await engine.db.read(list_workers)}
    assert registered[cpu.owner] == ("default",)
    assert registered[gpu.owner] == ("gpu",)


async def test_a_worker_serving_every_queue_claims_them_all_inline(engine: Engine) -> None:
    version = await engine.register(load_workflow_text(ROUTED))
    run_id = await engine.start_run(version, {})
    run = await engine.run_until_settled(run_id)  # `agentmill run`: every queue
    assert run.status == RunStatus.COMPLETED
    assert run.outputs == {"c": "abc", "m": [1, 2, 3]}
