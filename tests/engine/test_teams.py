"""Teams of agents: a supervisor that delegates to named agents as tools (``agent:<name>``), and
a planner whose task list drives a ``map`` of workers and an aggregator."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from agentmill.domain.states import RunStatus, StepStatus
from agentmill.domain.validation import load_workflow_file
from agentmill.engine.engine import Engine
from agentmill.gateway import ChatRequest, Gateway
from agentmill.store.db import Database
from agentmill.store.models import llm_calls
from tests.factories import RecordingProvider, run_workflow, steps_by_key

TOOLS = "tests.engine.agent_tools"


@pytest.fixture
def model() -> RecordingProvider:
    return RecordingProvider()


@pytest.fixture
def engine(db: Database, model: RecordingProvider) -> Engine:
    return Engine(db, gateway=Gateway([model]))


def told(request: ChatRequest) -> list[tuple[str | None, str]]:
    return [(m.name, m.content) for m in request.messages if m.role == "tool"]


def by_agent(model: RecordingProvider, agent: str) -> list[ChatRequest]:
    return [r for r in model.requests if r.context.agent == agent]


async def tool_audit(engine: Engine, run_id: str) -> list[dict[str, object]]:
    return [
        e["data"] for e in await engine.events(run_id=run_id) if e["data"].get("topic") == "tool"
    ]


SUPERVISOR = f"""
name: supervised
inputs:
  topic: {{type: string, default: bees}}
agents:
  supervisor:
    model: scripted/supervisor
    system: You lead a small team.
    tools: ["agent:researcher", "agent:writer"]
    options:
      replies:
        - tool_calls:
            - {{name: researcher, arguments: {{task: "Find facts about bees"}}}}
            - {{name: writer, arguments: {{task: "Write a title", context: "for children"}}}}
        - "Brief: {{{{ results | join(' / ') }}}}"
  researcher:
    model: scripted/researcher
    system: "You research {{{{ inputs.topic }}}} carefully."
    tools: ["{TOOLS}:add"]
    options:
      latency: 0.2
      replies:
        - tool_calls: [{{name: add, arguments: {{a: 2, b: 3}}}}]
        - "5 facts ({{{{ results[0] }}}} of them checked)"
  writer:
    model: scripted/writer
    options: {{latency: 0.2, reply: "Title for: {{{{ prompt }}}}"}}
steps:
  - id: lead
    agent: supervisor
    prompt: "Write a brief about {{{{ inputs.topic }}}}."
outputs:
  brief: "{{{{ steps.lead.output }}}}"
"""


async def test_a_supervisor_delegates_to_two_agents_at_once_and_answers_with_their_results(
    engine: Engine, model: RecordingProvider, db: Database
) -> None:
    run = await run_workflow(engine, SUPERVISOR)

    assert run.status == RunStatus.COMPLETED
    title = "Title for: Write a title\n\nContext:\nfor children"
    assert run.outputs == {"brief": f"Brief: 5 facts (5 of them checked) / {title}"}

    first, last = by_agent(model, "supervisor")
    assert [(t.name, t.parameters["required"]) for t in first.tools] == [
        ("researcher", ["task"]),
        ("writer", ["task"]),
    ]
    assert "delegate a task to the agent 'researcher'" in first.tools[0].description.lower()
    assert "You research bees carefully." in first.tools[0].description
    assert told(last) == [("researcher", "5 facts (5 of them checked)"), ("writer", title)]

    # Each delegate ran its own loop: its own system prompt, model, tools and turns.
    research = by_agent(model, "researcher")
    assert [r.model for r in research] == ["scripted/researcher"] * 2
    assert [(m.role, m.content) for m in research[0].messages] == [
        ("system", "You research bees carefully."),
        ("user", "Find facts about bees"),
    ]
    assert [t.name for t in research[0].tools] == ["add"]
    assert told(research[1]) == [("add", "5")]
    (writing,) = by_agent(model, "writer")
    assert writing.tools == ()

    # The two delegations of one turn ran side by side.
    spans = {r.context.agent: (start, end) for r, start, end in model.spans if r.context.turn == 0}
    (r_start, r_end), (w_start, w_end) = spans["researcher"], spans["writer"]
    assert r_start < w_end
    assert w_start < r_end

    # Every model call is the step's: recorded with the agent that made it, counted in usage.
    rows = await db.read(
        lambda tx: tx.conn.execute(
            select(llm_calls).where(llm_calls.c.run_id == run.id).order_by(llm_calls.c.id)
        ).all()
    )
    assert sorted((r.agent, r.turn) for r in rows) == [
        ("researcher", 0),
        ("researcher", 1),
        ("supervisor", 0),
        ("supervisor", 1),
        ("writer", 0),
    ]
    step = (await steps_by_key(engine, run.id))["lead"]
    assert step.input_tokens == sum(r.input_tokens for r in rows)
    assert step.output_tokens == sum(r.output_tokens for r in rows)
    assert run.input_tokens == step.input_tokens

    # Every tool call is audited with the agent that made it.
    audit = await tool_audit(engine, run.id)
    assert sorted((a["agent"], a["tool"], a["outcome"]) for a in audit) == [
        ("researcher", "add", "ok"),
        ("supervisor", "researcher", "ok"),
        ("supervisor", "writer", "ok"),
    ]
    writer_call = next(a for a in audit if a["tool"] == "writer")
    assert writer_call["arguments"] == {"task": "Write a title", "context": "for children"}


FAILING_DELEGATES = """
name: failing-team
agents:
  supervisor:
    model: scripted/supervisor
    tools: ["agent:looper", "agent:broken"]
    options:
      replies:
        - tool_calls:
            - {name: looper, arguments: {task: go}}
            - {name: broken, arguments: {task: go}}
            - {name: looper, arguments: {}}
        - "Both failed; I answer myself: {{ results | length }} errors."
  looper:
    model: scripted/looper
    max_turns: 2
    tools: ["agent:broken"]
    options:
      reply: {tool_calls: [{name: broken, arguments: {task: again}}]}
  broken:
    model: scripted/broken
    options: {fail_attempts: 1, fail_with: auth}
steps:
  - id: lead
    agent: supervisor
    prompt: Do it.
    retry: {max_attempts: 1}
"""


async def test_a_delegate_that_fails_is_a_tool_error_for_the_supervisor(
    engine: Engine, model: RecordingProvider
) -> None:
    run = await run_workflow(engine, FAILING_DELEGATES)

    assert run.status == RunStatus.COMPLETED
    step = (await steps_by_key(engine, run.id))["lead"]
    assert step.status == StepStatus.SUCCEEDED
    assert step.output == "Both failed; I answer myself: 3 errors."
    _, last = by_agent(model, "supervisor")
    assert told(last) == [
        (
            "looper",
            "error: agent 'looper' failed: agent 'looper' gave no final answer within max_turns=2",
        ),
        ("broken", "error: agent 'broken' failed: 401 Unauthorized (scripted failure)"),
        ("looper", "error: invalid arguments at (arguments): 'task' is a required property"),
    ]
    # The looper's own delegations failed too, and it heard so each turn.
    looper = by_agent(model, "looper")
    assert len(looper) == 2
    assert told(looper[1]) == [
        ("broken", "error: agent 'broken' failed: 401 Unauthorized (scripted failure)")
    ]
    audit = await tool_audit(engine, run.id)
    assert sorted((a["agent"], a["tool"], a["outcome"]) for a in audit) == [
        ("looper", "broken", "error"),
        ("looper", "broken", "error"),
        ("supervisor", "broken", "error"),
        ("supervisor", "looper", "error"),
        ("supervisor", "looper", "error"),
    ]


async def test_a_delegate_delegates_in_turn(engine: Engine, model: RecordingProvider) -> None:
    spec = """
    name: chain-of-command
    agents:
      boss:
        model: scripted/boss
        tools: ["agent:manager"]
        options:
          replies:
            - tool_calls: [{name: manager, arguments: {task: ship it}}]
            - "boss: {{ results[0] }}"
      manager:
        model: scripted/manager
        tools: ["agent:intern"]
        options:
          replies:
            - tool_calls: [{name: intern, arguments: {task: ship it today}}]
            - "manager: {{ results[0] }}"
      intern:
        model: scripted/intern
        options: {reply: "intern did '{{ prompt }}'"}
    steps:
      - {id: top, agent: boss, prompt: go}
    """
    run = await run_workflow(engine, spec)

    assert run.status == RunStatus.COMPLETED
    assert (await steps_by_key(engine, run.id))["top"].output == (
        "boss: manager: intern did 'ship it today'"
    )
    assert [r.context.agent for r in model.requests] == [
        "boss",
        "manager",
        "intern",
        "manager",
        "boss",
    ]


# ---------------------------------------------------------------- planner → map → aggregator

PLANNER = """
name: plan-map-aggregate
inputs:
  goal: {type: string}
agents:
  planner:
    model: scripted/planner
    options:
      reply: {tasks: ["find a venue", "invite speakers", "print badges"]}
  worker:
    model: scripted/worker
    options: {reply: "done: {{ prompt }}"}
  aggregator:
    model: scripted/aggregator
    options: {reply: "{{ prompt }}"}
steps:
  - id: plan
    agent: planner
    prompt: "Plan: {{ inputs.goal }}"
    output_schema:
      type: object
      required: [tasks]
      properties: {tasks: {type: array, items: {type: string}}}
  - id: work
    needs: [plan]
    over: "{{ steps.plan.output.tasks }}"
    concurrency: 2
    step: {agent: worker, prompt: "{{ index }}. {{ item }}"}
  - id: combine
    needs: [work]
    agent: aggregator
    prompt: "{{ steps.work.output | join(' | ') }}"
outputs:
  summary: "{{ steps.combine.output }}"
"""


async def test_the_planners_tasks_drive_one_worker_each_and_the_aggregator_gets_all_results(
    engine: Engine, model: RecordingProvider
) -> None:
    run = await run_workflow(engine, PLANNER, {"goal": "a meetup"})

    assert run.status == RunStatus.COMPLETED
    expected = ["done: 0. find a venue", "done: 1. invite speakers", "done: 2. print badges"]
    steps = await steps_by_key(engine, run.id)
    assert [steps[f"work[{i}]"].output for i in range(3)] == expected
    assert "work[3]" not in steps
    assert steps["work"].output == expected
    assert sorted(r.messages[-1].content for r in by_agent(model, "worker")) == [
        "0. find a venue",
        "1. invite speakers",
        "2. print badges",
    ]
    (aggregate,) = by_agent(model, "aggregator")
    assert aggregate.messages[-1].content == " | ".join(expected)
    assert run.outputs == {"summary": " | ".join(expected)}


async def test_the_planner_map_example_runs_one_worker_per_planned_task(
    engine: Engine, model: RecordingProvider, examples_dir: Path
) -> None:
    spec = load_workflow_file(examples_dir / "planner-map.yaml")
    version = await engine.register(spec)
    run = await engine.run_until_settled(await engine.start_run(version, {}))

    assert run.status == RunStatus.COMPLETED
    tasks = run.outputs["tasks"]
    assert len(tasks) == 5
    steps = await steps_by_key(engine, run.id)
    outputs = [steps[f"work[{i}]"].output for i in range(len(tasks))]
    assert f"work[{len(tasks)}]" not in steps
    for i, (task, output) in enumerate(zip(tasks, outputs, strict=True)):
        assert f"Task {i + 1} of the goal" in output
        assert task in output
    (summary,) = by_agent(model, "synthesizer")
    prompt = summary.messages[-1].content
    assert [prompt.index(output) for output in outputs] == sorted(prompt.index(o) for o in outputs)
