"""An agent remembers: the scripted model stores a fact with memory_store, finds it again with
memory_search in a later run, and never sees another workspace's memories."""

from __future__ import annotations

import json
import textwrap
from typing import Any

import pytest
from sqlalchemy import select

from agentmill.domain.states import RunStatus
from agentmill.domain.validation import load_workflow_text
from agentmill.engine.claims import RunCaller
from agentmill.engine.engine import Engine
from agentmill.gateway import ChatRequest, ChatResponse, Gateway
from agentmill.gateway.providers.scripted import ScriptedProvider
from agentmill.ids import new_id
from agentmill.store.db import Database
from agentmill.store.models import llm_calls
from agentmill.tools.registry import ToolRegistry


class Recording(ScriptedProvider):
    """The scripted model, keeping every chat request it was sent."""

    def __init__(self) -> None:
        super().__init__("scripted")
        self.requests: list[ChatRequest] = []

    async def chat(self, request: ChatRequest) -> ChatResponse:
        self.requests.append(request)
        return await super().chat(request)


def flow(replies: list[Any]) -> str:
    return textwrap.dedent(f"""
    name: remember
    agents:
      keeper:
        model: scripted/keeper
        tools: [memory_store, memory_search]
        options: {{replies: {json.dumps(replies)}}}
    steps:
      - id: work
        agent: keeper
        prompt: Remember, then recall.
        retry: {{max_attempts: 1}}
    """)


def call(name: str, **arguments: Any) -> dict[str, Any]:
    return {"tool_calls": [{"name": name, "arguments": arguments}]}


async def run_in(engine: Engine, workspace: str, replies: list[Any]) -> str:
    spec = load_workflow_text(flow(replies))
    version = await engine.register(spec, workspace_id=workspace)
    run_id = await engine.start_run(version, caller=RunCaller(workspace_id=workspace))
    run = await engine.run_until_settled(run_id)
    assert run.status == RunStatus.COMPLETED, run
    return run_id


def tool_results(request: ChatRequest) -> list[Any]:
    return [json.loads(m.content) for m in request.messages if m.role == "tool"]


@pytest.mark.parametrize("embedding_model", ["scripted/embed", None])
async def test_an_agent_stores_then_searches_its_workspaces_memory(
    db: Database, embedding_model: str | None
) -> None:
    model = Recording()
    settings = {"memory": {"embedding_model": embedding_model}} if embedding_model else {}
    engine = Engine(db, gateway=Gateway([model]), tools=ToolRegistry(settings=settings))
    mine, theirs = new_id("ws"), new_id("ws")
    await run_in(
        engine, theirs, [call("memory_store", text="the vault code is 1234 at the bank"), "ok"]
    )
    model.requests.clear()
    run_id = await run_in(
        engine,
        mine,
        [
            call("memory_store", text="the deploy window is tuesday at noon", metadata={"by": "a"}),
            call("memory_store", text="the cafeteria closes at three"),
            call("memory_search", query="when is the deploy window at the bank?", limit=5),
            "Tuesday at noon.",
        ],
    )
    *_, last = model.requests
    stored_one, stored_two, found = tool_results(last)
    assert stored_one["stored"] is True
    assert stored_two["stored"] is True
    assert found[0]["id"] == stored_one["id"]
    assert found[0]["text"] == "the deploy window is tuesday at noon"
    assert found[0]["metadata"] == {"by": "a"}
    assert all("vault" not in hit["text"] for hit in found)  # another workspace's memory
    embeds = await db.read(
        lambda tx: tx.conn.execute(
            select(llm_calls.c.model).where(
                llm_calls.c.run_id == run_id, llm_calls.c.model == "scripted/embed"
            )
        ).all()
    )
    # Each store and the search embedded once, recorded with the step like its chat calls.
    assert len(embeds) == (3 if embedding_model else 0)
