"""Cancelling a run stops its steps and everything under it."""

from __future__ import annotations

import asyncio

from agentmill.domain.states import RunStatus, StepStatus
from agentmill.engine.engine import Engine
from tests.factories import event_types, start, steps_by_key

SLOW = """
name: slow
agents:
  m: {model: scripted/m, options: {latency: 10}}
steps:
  - id: first
    agent: m
    prompt: x
  - id: second
    needs: [first]
    value: never
  - id: sub
    spec:
      name: inner
      agents:
        m: {model: scripted/m, options: {latency: 10}}
      steps:
        - id: deep
          agent: m
          prompt: y
"""


async def test_cancel_mid_run_stops_running_steps_and_starts_nothing_new(engine: Engine) -> None:
    run_id = await start(engine, SLOW)
    task = asyncio.create_task(engine.run_until_settled(run_id))
    for _ in range(200):  # wait until the slow steps are running, in the run and in its sub-run
        steps = await steps_by_key(engine, run_id)
        first_running = "first" in steps and steps["first"].status == StepStatus.RUNNING
        child_id = steps["sub"].child_run_id if "sub" in steps else None
        if first_running and child_id:
            child = await steps_by_key(engine, child_id)
            if "deep" in child and child["deep"].status == StepStatus.RUNNING:
                break
        await asyncio.sleep(0.02)

    status = await engine.cancel(run_id, "changed my mind")
    run = await asyncio.wait_for(task, timeout=5)

    assert status == RunStatus.CANCELLED
    assert run.status == RunStatus.CANCELLED
    assert run.error == "changed my mind"
    steps = await steps_by_key(engine, run_id)
    assert steps["first"].status == StepStatus.CANCELLED
    assert "second" not in steps
    child = await engine.get_run(steps["sub"].child_run_id or "")
    assert child.status == RunStatus.CANCELLED
    assert (await steps_by_key(engine, child.id))["deep"].status == StepStatus.CANCELLED
    assert "step.succeeded" not in await event_types(engine, run_id, "first")
    # What the cancel closed is logged before the run's final event, where streams stop.
    logged = [(e["run_id"], e["type"]) for e in await engine.events(root_run_id=run_id)]
    assert logged[-1] == (run_id, "run.cancelled")
    assert (run_id, "step.cancelled") in logged
    assert (child.id, "run.cancelled") in logged


async def test_cancelling_a_finished_run_changes_nothing(engine: Engine) -> None:
    run_id = await start(engine, "name: quick\nsteps:\n  - id: a\n    value: 1\n")
    run = await engine.run_until_settled(run_id)
    assert run.status == RunStatus.COMPLETED

    assert await engine.cancel(run_id) == RunStatus.COMPLETED
    assert (await engine.get_run(run_id)).status == RunStatus.COMPLETED
