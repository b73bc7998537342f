"""The agent tool loop, driven by the scripted model issuing tool calls: multi-turn, parallel
calls, tool errors back to the model, max_turns, schema repair, and the audit trail."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agentmill.domain.states import RunStatus, StepStatus
from agentmill.engine.engine import Engine
from agentmill.errors import SpecError
from agentmill.gateway import ChatRequest, Gateway
from agentmill.store.db import Database
from tests.engine import agent_tools
from tests.factories import RecordingProvider as Recording
from tests.factories import run_workflow, steps_by_key

TOOLS = "tests.engine.agent_tools"


@pytest.fixture
def model() -> Recording:
    return Recording()


@pytest.fixture
def engine(db: Database, model: Recording) -> Engine:
    return Engine(db, gateway=Gateway([model]))


def flow(replies: list[Any], *, tools: list[str], max_turns: int = 8, schema: str = "") -> str:
    return f"""
    name: tool-loop
    agents:
      helper:
        model: scripted/helper
        max_turns: {max_turns}
        tools: {json.dumps(tools)}
        options: {{replies: {json.dumps(replies)}}}
    steps:
      - id: work
        agent: helper
        prompt: Do the work.
        retry: {{max_attempts: 1}}
        {schema}
    """


def tool_messages(request: ChatRequest) -> list[tuple[str | None, str]]:
    return [(m.name, m.content) for m in request.messages if m.role == "tool"]


async def test_the_model_calls_a_tool_and_answers_with_its_result(
    engine: Engine, model: Recording
) -> None:
    replies = [
        {"tool_calls": [{"name": "add", "arguments": {"a": 2, "b": 3}}]},
        "The sum is 5.",
    ]
    run = await run_workflow(engine, flow(replies, tools=[f"{TOOLS}:add"]))
    assert run.status == RunStatus.COMPLETED
    assert (
        run.outputs == {"work": "The sum is 5."}
        or (await steps_by_key(engine, run.id))["work"].output == "The sum is 5."
    )
    first, second = model.requests
    assert [t.name for t in first.tools] == ["add"]
    assert first.tools[0].description == "Add two whole numbers."
    assert first.tools[0].parameters["required"] == ["a", "b"]
    assert tool_messages(second) == [("add", "5")]
    assert second.messages[-2].tool_calls[0].arguments == {"a": 2, "b": 3}


async def test_calls_of_one_turn_run_in_parallel(engine: Engine, model: Recording) -> None:
    agent_tools.CALLS.clear()
    replies = [
        {
            "tool_calls": [
                {"name": "slow_echo", "arguments": {"text": "one"}},
                {"name": "slow_echo", "arguments": {"text": "two"}},
            ]
        },
        "done",
    ]
    run = await run_workflow(engine, flow(replies, tools=[f"{TOOLS}:slow_echo"]))
    assert run.status == RunStatus.COMPLETED
    (a_name, a_start, a_end), (b_name, b_start, b_end) = sorted(agent_tools.CALLS)
    assert {a_name, b_name} == {"one", "two"}
    assert a_start < b_end
    assert b_start < a_end  # each began before the other finished
    assert tool_messages(model.requests[1]) == [
        ("slow_echo", '{"echo": "one"}'),
        ("slow_echo", '{"echo": "two"}'),
    ]


async def test_tool_errors_go_back_to_the_model_and_are_audited(
    engine: Engine, model: Recording
) -> None:
    replies = [
        {
            "tool_calls": [
                {"name": "nope", "arguments": {}},
                {"name": "add", "arguments": {"a": "two", "b": 3}},
                {"name": "boom", "arguments": {"reason": "disk full"}},
            ]
        },
        "I could not do it.",
    ]
    run = await run_workflow(engine, flow(replies, tools=[f"{TOOLS}:add", f"{TOOLS}:boom"]))
    assert run.status == RunStatus.COMPLETED
    told = tool_messages(model.requests[1])
    assert told[0] == ("nope", "error: unknown tool 'nope' (available: add, boom)")
    assert told[1][1] == "error: invalid arguments at a: 'two' is not of type 'integer'"
    assert told[2] == ("boom", "error: RuntimeError: boom: disk full")
    audit = [
        e["data"] for e in await engine.events(run_id=run.id) if e["data"].get("topic") == "tool"
    ]
    assert [(a["tool"], a["outcome"]) for a in audit] == [
        ("nope", "error"),
        ("add", "error"),
        ("boom", "error"),
    ]
    assert audit[2]["arguments"] == {"reason": "disk full"}
    assert audit[2]["error"] == "RuntimeError: boom: disk full"
    assert audit[2]["duration_ms"] >= 0


async def test_max_turns_ends_the_step_with_a_clear_failure(engine: Engine) -> None:
    replies = [{"tool_calls": [{"name": "add", "arguments": {"a": 1, "b": 1}}]}]  # forever
    run = await run_workflow(engine, flow(replies, tools=[f"{TOOLS}:add"], max_turns=3))
    assert run.status == RunStatus.FAILED
    step = (await steps_by_key(engine, run.id))["work"]
    assert step.status == StepStatus.FAILED
    assert step.error == "agent 'helper' gave no final answer within max_turns=3"


SCHEMA = "output_schema: {type: object, properties: {n: {type: integer}}, required: [n]}"


async def test_an_answer_off_schema_gets_one_repair_turn(engine: Engine, model: Recording) -> None:
    run = await run_workflow(engine, flow(["five", '{"n": 5}'], tools=[], schema=SCHEMA))
    assert run.status == RunStatus.COMPLETED
    assert (await steps_by_key(engine, run.id))["work"].output == {"n": 5}
    repair = model.requests[1].messages[-1]
    assert repair.role == "user"
    assert repair.content.startswith("Your answer cannot be used: output is not JSON")


async def test_a_second_answer_off_schema_fails_the_step(engine: Engine) -> None:
    run = await run_workflow(engine, flow(["five", '{"n": "5"}'], tools=[], schema=SCHEMA))
    assert run.status == RunStatus.FAILED
    error = (await steps_by_key(engine, run.id))["work"].error
    assert error == "output does not match output_schema at n: '5' is not of type 'integer'"


async def test_unknown_tools_are_refused_when_the_workflow_is_checked(engine: Engine) -> None:
    with pytest.raises(SpecError, match="unknown tool 'teleport'"):
        await run_workflow(engine, flow(["x"], tools=["teleport"]))


async def test_a_custom_tool_that_cannot_be_imported_fails_the_step_clearly(
    engine: Engine,
) -> None:
    run = await run_workflow(engine, flow(["x"], tools=["tests.nowhere:fn"]))
    assert run.status == RunStatus.FAILED
    error = (await steps_by_key(engine, run.id))["work"].error
    assert error is not None
    assert error.startswith("agent 'helper': custom tool 'tests.nowhere:fn': cannot import")


async def test_an_agent_fetches_from_an_allowed_host_and_is_refused_elsewhere(
    db: Database, model: Recording
) -> None:
    from agentmill.tools.registry import ToolRegistry
    from tests.gateway.wire._harness import WireResponse, WireServer

    async def answer(_: object) -> WireResponse:
        return WireResponse(body={"temperature": 21})

    with WireServer(answer, lambda status, message: {"error": message}) as server:
        allowed = {
            "http_request": {"egress": {"networks": ["127.0.0.1/32"], "ports": [server.port]}}
        }
        replies = [
            {"tool_calls": [{"name": "http_request", "arguments": {"url": f"{server.url}/now"}}]},
            "It is 21 degrees.",
        ]
        for settings, expected in ((allowed, '"status": 200'), ({}, "error: refused")):
            model.requests.clear()
            engine = Engine(db, gateway=Gateway([model]), tools=ToolRegistry(settings=settings))
            run = await run_workflow(engine, flow(replies, tools=["http_request"]))
            assert run.status == RunStatus.COMPLETED
            ((name, told),) = tool_messages(model.requests[1])
            assert name == "http_request"
            assert expected in told
        assert [r.path for r in server.requests] == ["/now"]  # the refused call never arrived


async def test_an_agent_runs_code_in_the_sandbox(engine: Engine, model: Recording) -> None:
    from agentmill.tools.registry import python_tool

    code = "import os\nprint(6 * 7, os.getcwd(), sorted(os.environ) == sorted(set(os.environ)))"
    replies = [
        {"tool_calls": [{"name": "python", "arguments": {"code": code}}]},
        "The answer is 42.",
    ]
    run = await run_workflow(engine, flow(replies, tools=["python"]))
    assert run.status == RunStatus.COMPLETED
    ((name, told),) = tool_messages(model.requests[1])
    assert name == "python"
    result = json.loads(told)
    assert result["exit_code"] == 0
    assert result["stdout"].startswith("42 /scratch True")
    status = python_tool().status
    assert status is not None
    assert status.state == "available"
