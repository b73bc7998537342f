"""Helpers that arrange and run workflows through the public engine API."""

from __future__ import annotations

import asyncio
import textwrap
import time
from typing import Any

from agentmill.domain.states import RunStatus
from agentmill.domain.validation import load_workflow_text
from agentmill.engine.engine import Engine
from agentmill.engine.worker import Worker
from agentmill.gateway import ChatRequest, ChatResponse
from agentmill.gateway.providers.scripted import ScriptedProvider
from agentmill.store.queries import RunView, StepView


async def start(engine: Engine, yaml_text: str, inputs: dict[str, Any] | None = None) -> str:
    spec = load_workflow_text(textwrap.dedent(yaml_text))
    version = await engine.register(spec)
    return await engine.start_run(version, inputs or {})


async def run_workflow(
    engine: Engine, yaml_text: str, inputs: dict[str, Any] | None = None, **options: Any
) -> RunView:
    run_id = await start(engine, yaml_text, inputs)
    return await engine.run_until_settled(run_id, **options)


async def wait_final(
    engine: Engine, run_ids: list[str], within: float, *, every: float = 0.25
) -> dict[str, RunStatus]:
    """The runs' statuses once every one has ended, or when ``within`` seconds have passed."""
    deadline = time.monotonic() + within
    while True:
        statuses = {run_id: (await engine.get_run(run_id)).status for run_id in run_ids}
        if all(status.is_final for status in statuses.values()) or time.monotonic() > deadline:
            return statuses
        await asyncio.sleep(every)


async def work_until_final(
    engine: Engine, run_ids: list[str], *, concurrency: int, within: float = 15.0
) -> list[RunStatus]:
    """Run one worker until every run in ``run_ids`` has ended (or ``within`` seconds pass);
    returns their statuses."""
    stop = asyncio.Event()
    worker = asyncio.create_task(engine.worker(name="w", concurrency=concurrency).run(stop))
    try:
        return list((await wait_final(engine, run_ids, within, every=0.05)).values())
    finally:
        stop.set()
        await worker


async def steps_by_key(engine: Engine, run_id: str) -> dict[str, StepView]:
    return {step.key: step for step in await engine.steps(run_id)}


async def event_types(engine: Engine, run_id: str, step_key: str | None = None) -> list[str]:
    return [
        e["type"]
        for e in await engine.events(run_id=run_id)
        if step_key is None or e["step_key"] == step_key
    ]


class RecordingProvider(ScriptedProvider):
    """The scripted model, keeping every request it was sent and when it answered it
    (``spans``: started, finished), so tests can see what each agent was told."""

    def __init__(self) -> None:
        super().__init__("scripted")
        self.requests: list[ChatRequest] = []
        self.spans: list[tuple[ChatRequest, float, float]] = []

    async def chat(self, request: ChatRequest) -> ChatResponse:
        self.requests.append(request)
        started = time.monotonic()
        try:
            return await super().chat(request)
        finally:
            self.spans.append((request, started, time.monotonic()))


def count_claims(worker: Worker) -> list[int]:
    """How many steps each of ``worker``'s claims took, appended as it makes them: a test
    waits for its claims rather than for time to pass."""
    made: list[int] = []
    take = worker.queue.take

    async def counted(limit: int) -> Any:
        claims = await take(limit)
        made.append(len(claims))
        return claims

    worker.queue.take = counted  # type: ignore[method-assign]
    return made
