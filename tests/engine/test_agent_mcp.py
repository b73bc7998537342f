"""Agents calling MCP servers' tools: the scripted model issues tool calls that reach a real
server (stdio, started for the step; streamable HTTP, a process on loopback) and hears back."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from agentmill.domain.states import RunStatus, StepStatus
from agentmill.engine.engine import Engine
from agentmill.errors import SpecError
from agentmill.gateway import ChatRequest, Gateway
from agentmill.store.db import Database
from agentmill.tools.registry import ToolRegistry
from tests.factories import RecordingProvider as Recording
from tests.factories import run_workflow, steps_by_key
from tests.tools._mcp_helpers import STDIO_COMMAND, http_server, is_running


@pytest.fixture(scope="module")
def http_url() -> Iterator[str]:
    with http_server() as url:
        yield url


@pytest.fixture
def model() -> Recording:
    return Recording()


def engine_for(db: Database, model: Recording, **mcp: Any) -> Engine:
    allowed = {"commands": [sys.executable, "/nonexistent/mcp-server"], **mcp}
    return Engine(db, gateway=Gateway([model]), tools=ToolRegistry(settings={"mcp": allowed}))


def flow(replies: list[Any], *, tools: list[str], servers: dict[str, Any]) -> str:
    return f"""
    name: mcp-loop
    mcp_servers: {json.dumps(servers)}
    agents:
      helper:
        model: scripted/helper
        tools: {json.dumps(tools)}
        options: {{replies: {json.dumps(replies)}}}
    steps:
      - id: work
        agent: helper
        prompt: Do the work.
        retry: {{max_attempts: 1}}
    """


def tool_messages(request: ChatRequest) -> list[tuple[str | None, str]]:
    return [(m.name, m.content) for m in request.messages if m.role == "tool"]


async def test_an_agent_calls_a_stdio_servers_tools(db: Database, model: Recording) -> None:
    replies = [
        {
            "tool_calls": [
                {"name": "calc__add", "arguments": {"a": 2, "b": 3}},
                {"name": "calc__divide", "arguments": {"a": 1, "b": 0}},
                {"name": "calc__whoami", "arguments": {}},
            ]
        },
        "2 + 3 = 5; 1 / 0 is undefined.",
    ]
    servers = {"calc": {"command": STDIO_COMMAND}}
    engine = engine_for(db, model)
    run = await run_workflow(engine, flow(replies, tools=["mcp:calc"], servers=servers))
    assert run.status == RunStatus.COMPLETED
    assert (await steps_by_key(engine, run.id))["work"].output == "2 + 3 = 5; 1 / 0 is undefined."
    first, second = model.requests
    tools = {t.name: t for t in first.tools}
    assert sorted(tools) == [
        "calc__add",
        "calc__divide",
        "calc__nap",
        "calc__shout",
        "calc__whoami",
    ]
    assert tools["calc__add"].description == "Add two whole numbers."
    assert tools["calc__add"].parameters["required"] == ["a", "b"]
    (add, divide, whoami) = tool_messages(second)
    assert add == ("calc__add", '{"result": 5}')
    assert divide == ("calc__divide", "error: Error executing tool divide: cannot divide by zero")
    pid = int(json.loads(whoami[1])["pid"])
    assert not is_running(pid)  # the step's session was closed with the step
    audit = [
        e["data"] for e in await engine.events(run_id=run.id) if e["data"].get("topic") == "tool"
    ]
    assert [(a["tool"], a["outcome"]) for a in audit] == [
        ("calc__add", "ok"),
        ("calc__divide", "error"),
        ("calc__whoami", "ok"),
    ]


async def test_tool_calls_are_audited_in_the_order_the_model_asked_for_them(
    db: Database, model: Recording
) -> None:
    replies = [
        {
            "tool_calls": [
                {"name": "calc__nap", "arguments": {"seconds": 0.5}},
                {"name": "calc__add", "arguments": {"a": 1, "b": 1}},
            ]
        },
        "done",
    ]
    servers = {"calc": {"command": STDIO_COMMAND}}
    engine = engine_for(db, model)
    run = await run_workflow(engine, flow(replies, tools=["mcp:calc"], servers=servers))

    assert run.status == RunStatus.COMPLETED
    audit = [
        e["data"] for e in await engine.events(run_id=run.id) if e["data"].get("topic") == "tool"
    ]
    # The nap finished last; the audit still follows the model's order, as the messages do.
    assert [a["tool"] for a in audit] == ["calc__nap", "calc__add"]
    assert audit[0]["duration_ms"] > audit[1]["duration_ms"]
    assert [name for name, _ in tool_messages(model.requests[1])] == ["calc__nap", "calc__add"]


async def test_an_agent_calls_a_streamable_http_server(
    db: Database, model: Recording, http_url: str
) -> None:
    replies = [{"tool_calls": [{"name": "remote__whoami", "arguments": {}}]}, "done"]
    servers = {"remote": {"url": http_url, "headers": {"Authorization": "Bearer abc"}}}
    engine = engine_for(db, model, urls=[http_url])
    run = await run_workflow(engine, flow(replies, tools=["mcp:remote/whoami"], servers=servers))
    assert run.status == RunStatus.COMPLETED
    assert [t.name for t in model.requests[0].tools] == ["remote__whoami"]
    ((name, told),) = tool_messages(model.requests[1])
    assert name == "remote__whoami"
    assert json.loads(told)["authorization"] == "Bearer abc"


async def test_an_undeclared_server_is_a_spec_error(db: Database, model: Recording) -> None:
    with pytest.raises(SpecError, match="MCP server 'calc' is not declared under 'mcp_servers'"):
        await run_workflow(engine_for(db, model), flow(["x"], tools=["mcp:calc"], servers={}))


@pytest.mark.parametrize(
    ("servers", "error"),
    [
        (
            {"ghost": {"command": ["/nonexistent/mcp-server"]}},
            "agent 'helper': MCP server 'ghost' did not start: "
            "No such file or directory: '/nonexistent/mcp-server'",
        ),
        (
            {"ghost": {"command": ["npx", "ghost-server"]}},
            "agent 'helper': MCP server 'ghost': starting 'npx' is not allowed here "
            "(the operator lists allowed programs under tools.mcp.commands)",
        ),
    ],
)
async def test_a_server_that_cannot_start_fails_the_step_naming_it(
    db: Database, model: Recording, servers: dict[str, Any], error: str
) -> None:
    engine = engine_for(db, model)
    run = await run_workflow(engine, flow(["never asked"], tools=["mcp:ghost"], servers=servers))
    assert run.status == RunStatus.FAILED
    step = (await steps_by_key(engine, run.id))["work"]
    assert step.status == StepStatus.FAILED
    assert step.error == error
    assert model.requests == []  # the model was never called
