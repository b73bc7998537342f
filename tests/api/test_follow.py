"""Following a run's log with its live events merged in (api/follow.py), on a real database."""

from __future__ import annotations

from typing import Any

from agentmill.api.follow import follow
from agentmill.engine.engine import Engine
from agentmill.engine.live import DELTA, LiveBus, live_event
from agentmill.store import queries
from tests.factories import run_workflow

FLOW = """
name: one
steps:
  - {id: a, value: 1}
"""


async def test_a_live_event_that_comes_after_its_step_ended_is_dropped(engine: Engine) -> None:
    run = await run_workflow(engine, FLOW)
    bus = LiveBus()
    events = follow(
        engine.db,
        lambda tx, after: queries.list_events(tx, root_run_id=run.id, after=after),
        after=0,
        until_run=run.id,
        live=bus,
    )
    seen: list[dict[str, Any] | None] = []
    async for event in events:
        seen.append(event)
        if event is not None and event["type"] == "run.completed":
            break
    for attempt, text in ((1, "late"), (2, "fresh")):  # attempt 1 of 'a' has ended; 2 has not
        delta = live_event(
            run_id=run.id, step_key="a", attempt=attempt, type=DELTA, data={"text": text}
        )
        await bus.publish(run.id, delta)
    rest = [event async for event in events]

    assert "step.succeeded" in [e["type"] for e in seen if e is not None]
    assert [e["data"]["text"] for e in rest if e is not None] == ["fresh"]
