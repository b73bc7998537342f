"""Live events of a running step: token deltas and tool notices reach the run's followers while
the step runs, are not stored, and cost nothing (no streaming) when nobody follows."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from agentmill.engine.engine import Engine
from agentmill.gateway import ChatDelta, ChatRequest, Gateway
from agentmill.gateway.providers.scripted import ScriptedProvider
from agentmill.store.db import Database
from tests.factories import start, steps_by_key

TOOLS = "tests.engine.agent_tools"
ANSWER = " ".join(f"word{i}" for i in range(60))  # 20 pieces of three words


def flow(*, stream_delay: float = 0.02) -> str:
    replies = [{"tool_calls": [{"name": "add", "arguments": {"a": 2, "b": 3}}]}, ANSWER]
    return f"""
    name: live
    agents:
      writer:
        model: scripted/writer
        tools: ["{TOOLS}:add"]
        options: {{stream_delay: {stream_delay}, replies: {json.dumps(replies)}}}
    steps:
      - id: write
        agent: writer
        prompt: Write.
    """


class Counting(ScriptedProvider):
    """The scripted model, counting the streams it was asked for."""

    def __init__(self) -> None:
        super().__init__("scripted")
        self.streams = 0

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatDelta]:
        self.streams += 1
        async for delta in super().stream(request):
            yield delta


@pytest.fixture
def model() -> Counting:
    return Counting()


@pytest.fixture
def engine(db: Database, model: Counting) -> Engine:
    return Engine(db, gateway=Gateway([model]))


async def test_a_follower_sees_deltas_and_tool_notices_before_the_step_ends(
    engine: Engine, model: Counting
) -> None:
    run_id = await start(engine, flow())
    timeline: list[dict[str, Any]] = []  # live and durable events, in the order they arrived
    unsubscribe_log = engine.db.subscribe(timeline.extend)
    unsubscribe_live = await engine.live.subscribe(run_id, timeline.append)
    try:
        run = await engine.run_until_settled(run_id)
    finally:
        unsubscribe_live()
        unsubscribe_log()

    assert run.status == "COMPLETED"
    output = (await steps_by_key(engine, run_id))["write"].output
    assert output == ANSWER
    types = [e["type"] for e in timeline]
    succeeded = types.index("step.succeeded")
    deltas = [e for e in timeline if e["type"] == "step.delta"]
    assert len(deltas) >= 3  # coalesced, yet several while the answer was written
    assert all(timeline.index(d) < succeeded for d in deltas)
    assert "".join(d["data"]["text"] for d in deltas) == ANSWER
    assert {d["data"]["turn"] for d in deltas if d["data"]["text"]} == {1}
    first = deltas[0]
    assert first["ephemeral"] is True
    assert "id" not in first
    assert (first["run_id"], first["step_key"], first["attempt"]) == (run_id, "write", 1)
    assert first["data"]["agent"] == "writer"
    assert first["data"]["source"] == "llm"
    # the tool call: its name streamed in turn 0, then its start and end, all before the end
    assert deltas[0]["data"]["tool_calls"] == [{"index": 0, "id": "call_0_0", "name": "add"}]
    tools = [e for e in timeline if e["type"] == "step.tool"]
    assert [(t["data"]["phase"], t["data"]["tool"]) for t in tools] == [
        ("start", "add"),
        ("end", "add"),
    ]
    assert tools[0]["data"]["arguments"] == '{"a":2,"b":3}'
    assert tools[1]["data"]["outcome"] == "ok"
    assert tools[1]["data"]["call_id"] == "call_0_0"
    assert timeline.index(tools[1]) < timeline.index(deltas[-1]) < succeeded
    assert model.streams == 2  # both turns streamed, because someone watched

    stored = await engine.events(root_run_id=run_id)
    assert not [e for e in stored if e["type"] in ("step.delta", "step.tool")]
    audit = [e for e in stored if e["type"] == "step.log" and e["data"].get("topic") == "tool"]
    assert [a["data"]["tool"] for a in audit] == ["add"]  # the durable audit is unchanged


async def test_nobody_watching_means_no_streaming_and_no_live_events(
    engine: Engine, model: Counting
) -> None:
    seen: list[dict[str, Any]] = []
    other = await engine.live.subscribe("run_someone_else", seen.append)
    try:
        run_id = await start(engine, flow(stream_delay=0))
        run = await engine.run_until_settled(run_id)
    finally:
        other()

    assert run.status == "COMPLETED"
    assert (await steps_by_key(engine, run_id))["write"].output == ANSWER
    assert model.streams == 0  # plain calls: no cost for a feature nobody uses
    assert seen == []


NESTED = f"""
name: parent
steps:
  - id: child
    spec:
      name: child
      agents:
        m: {{model: scripted/m, options: {{reply: "{ANSWER}"}}}}
      steps:
        - {{id: gate, type: human}}
        - {{id: shout, agent: m, prompt: Shout., needs: [gate]}}
"""


async def status_of(engine: Engine, run_id: str, wanted: str) -> None:
    for _ in range(500):
        if (await engine.get_run(run_id)).status == wanted:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"run {run_id} never became {wanted}")


async def test_a_sub_runs_deltas_reach_followers_of_it_and_of_its_root(engine: Engine) -> None:
    root_id = await start(engine, NESTED)
    stop = asyncio.Event()
    worker = asyncio.create_task(engine.worker(name="w", queues=None).run(stop))
    of_root: list[dict[str, Any]] = []
    of_child: list[dict[str, Any]] = []
    try:
        for _ in range(500):
            child_id = (await steps_by_key(engine, root_id))["child"].child_run_id
            if child_id is not None:
                break
            await asyncio.sleep(0.02)
        assert child_id is not None
        await status_of(engine, child_id, "WAITING")
        unsubscribe_root = await engine.live.subscribe(root_id, of_root.append)
        unsubscribe_child = await engine.live.subscribe(child_id, of_child.append)
        await engine.decide(child_id, "gate", approved=True)
        await status_of(engine, root_id, "COMPLETED")
        unsubscribe_root()
        unsubscribe_child()
    finally:
        stop.set()
        await worker

    for seen in (of_root, of_child):
        deltas = [e for e in seen if e["type"] == "step.delta"]
        assert {(e["run_id"], e["step_key"]) for e in deltas} == {(child_id, "shout")}
        assert "".join(e["data"]["text"] for e in deltas) == ANSWER
