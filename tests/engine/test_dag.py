"""DAG semantics: order, real concurrency, `when` skipping, outputs, usage and events."""

from __future__ import annotations

from decimal import Decimal

from agentmill.domain.states import RunStatus, StepStatus
from agentmill.engine.engine import Engine
from tests.factories import event_types, run_workflow, steps_by_key

DIAMOND = """
name: diamond
inputs:
  topic: {type: string}
agents:
  slow: {model: scripted/slow, options: {latency: 0.5}}
steps:
  - id: start
    value: "{{ inputs.topic | upper }}"
  - id: left
    needs: [start]
    agent: slow
    prompt: "left {{ steps.start.output }}"
  - id: right
    needs: [start]
    agent: slow
    prompt: "right {{ steps.start.output }}"
  - id: join
    needs: [left, right]
    value: ["{{ steps.left.output }}", "{{ steps.right.output }}"]
outputs:
  joined: "{{ steps.join.output }}"
  topic: "{{ steps.start.output }}"
"""


async def test_steps_run_in_dependency_order_and_independent_steps_overlap(engine: Engine) -> None:
    run = await run_workflow(engine, DIAMOND, {"topic": "bees"})

    assert run.status == RunStatus.COMPLETED
    steps = await steps_by_key(engine, run.id)
    assert all(s.status == StepStatus.SUCCEEDED for s in steps.values())
    # needs are respected: each step starts only after what it needs has finished
    assert steps["start"].finished_at <= steps["left"].started_at
    assert steps["start"].finished_at <= steps["right"].started_at
    assert max(steps["left"].finished_at, steps["right"].finished_at) <= steps["join"].started_at
    # the two 0.5 s steps ran at the same time, not one after the other
    assert steps["left"].started_at < steps["right"].finished_at
    assert steps["right"].started_at < steps["left"].finished_at
    assert run.outputs == {
        "topic": "BEES",
        "joined": [
            "[offline: scripted/slow is scripted, no model was called] left BEES",
            "[offline: scripted/slow is scripted, no model was called] right BEES",
        ],
    }


async def test_every_transition_is_an_event_in_order(engine: Engine) -> None:
    run = await run_workflow(engine, DIAMOND, {"topic": "x"})

    events = await engine.events(run_id=run.id)
    ids = [e["id"] for e in events]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    types = [e["type"] for e in events]
    assert types[0] == "run.created"
    assert types[-1] == "run.completed"
    assert types.count("run.started") == 1
    assert types.count("step.succeeded") == 4
    assert types.count("llm.call") == 2
    for key in ("start", "left", "right", "join"):
        assert await event_types(engine, run.id, key) in (
            ["step.started", "step.succeeded"],
            ["step.queued", "step.started", "step.succeeded"],
            ["step.started", "llm.call", "step.succeeded"],
            ["step.queued", "step.started", "llm.call", "step.succeeded"],
        )


async def test_usage_and_cost_roll_up_from_calls_to_steps_to_the_run(engine: Engine) -> None:
    spec = """
    name: priced
    agents:
      a: {model: scripted/a, options: {price: {input: 1000000, output: 2000000}}}
    steps:
      - id: one
        agent: a
        prompt: "abcdefgh"
      - id: two
        agent: a
        prompt: "abcd"
    """
    run = await run_workflow(engine, spec)

    steps = await steps_by_key(engine, run.id)
    # 4 characters a token: "abcdefgh" is 2 tokens at $1 each; replies priced at $2 a token
    for step in steps.values():
        assert step.cost == Decimal(step.input_tokens) * 1 + Decimal(step.output_tokens) * 2
    assert steps["one"].input_tokens == 2
    assert steps["two"].input_tokens == 1
    assert run.input_tokens == sum(s.input_tokens for s in steps.values())
    assert run.output_tokens == sum(s.output_tokens for s in steps.values())
    assert run.cost == sum((s.cost for s in steps.values()), Decimal(0))
    assert run.cost > 0


async def test_when_false_skips_the_step_and_what_depends_only_on_it(engine: Engine) -> None:
    spec = """
    name: branches
    inputs:
      go_left: {type: boolean}
    steps:
      - id: left
        when: "{{ inputs.go_left }}"
        value: L
      - id: after_left
        needs: [left]
        value: "after {{ steps.left.output }}"
      - id: right
        when: "{{ not inputs.go_left }}"
        value: R
      - id: join
        needs: [after_left, right]
        value: "{{ steps.after_left.output or steps.right.output }}"
    outputs:
      result: "{{ steps.join.output }}"
    """
    run = await run_workflow(engine, spec, {"go_left": False})

    assert run.status == RunStatus.COMPLETED
    steps = await steps_by_key(engine, run.id)
    assert steps["left"].status == StepStatus.SKIPPED
    assert steps["after_left"].status == StepStatus.SKIPPED  # all it needs was skipped
    assert steps["right"].status == StepStatus.SUCCEEDED
    assert steps["join"].status == StepStatus.SUCCEEDED  # one of its needs ran
    assert run.outputs == {"result": "R"}
    assert "step.started" not in await event_types(engine, run.id, "after_left")


async def test_output_schema_turns_model_text_into_validated_json(engine: Engine) -> None:
    spec = """
    name: structured
    agents:
      planner:
        model: scripted/planner
        options:
          reply: |
            Here is the plan:
            ```json
            {"tasks": ["a", "b"]}
            ```
    steps:
      - id: plan
        agent: planner
        prompt: plan
        output_schema:
          type: object
          required: [tasks]
          properties: {tasks: {type: array, items: {type: string}}}
    outputs:
      first: "{{ steps.plan.output.tasks[0] }}"
    """
    run = await run_workflow(engine, spec)

    assert run.status == RunStatus.COMPLETED
    assert run.outputs == {"first": "a"}


async def test_output_not_matching_the_schema_fails_the_step_with_the_reason(
    engine: Engine,
) -> None:
    spec = """
    name: off-schema
    agents:
      m: {model: scripted/m, options: {reply: '{"tasks": "not a list"}'}}
    steps:
      - id: plan
        agent: m
        prompt: plan
        retry: {max_attempts: 2, backoff: 0}
        output_schema: {type: object, properties: {tasks: {type: array}}}
    """
    run = await run_workflow(engine, spec)

    assert run.status == RunStatus.FAILED
    assert run.error == (
        "step 'plan' failed after 2 attempts: output does not match output_schema at tasks: "
        "'not a list' is not of type 'array'"
    )


async def test_a_template_error_at_run_time_fails_the_step_without_retrying(engine: Engine) -> None:
    spec = """
    name: bad-data
    steps:
      - id: a
        value: {x: 1}
      - id: b
        needs: [a]
        retry: {max_attempts: 3, backoff: 0}
        value: "{{ steps.a.output.missing }}"
    """
    run = await run_workflow(engine, spec)

    assert run.status == RunStatus.FAILED
    steps = await steps_by_key(engine, run.id)
    assert steps["b"].attempt == 1
    assert "template error" in (steps["b"].error or "")
    assert "missing" in (steps["b"].error or "")


async def test_on_failure_continue_lets_the_run_go_on(engine: Engine) -> None:
    spec = """
    name: tolerant
    agents:
      broken: {model: scripted/x, options: {fail_attempts: 9, fail_with: bad_request}}
    steps:
      - id: optional
        agent: broken
        prompt: hi
        on_failure: continue
      - id: after
        needs: [optional]
        value: "status={{ steps.optional.status }}"
    outputs:
      after: "{{ steps.after.output }}"
    """
    run = await run_workflow(engine, spec)

    assert run.status == RunStatus.COMPLETED
    assert run.outputs == {"after": "status=FAILED"}
