"""`workflow` steps run a sub-workflow as a child run."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path

from agentmill.domain.states import RunStatus, StepStatus
from agentmill.domain.validation import load_workflow_file
from agentmill.engine.claims import Claim
from agentmill.engine.engine import Engine
from agentmill.engine.outcomes import StartChildRun, StepReport, Succeeded
from agentmill.gateway.types import CallContext, CallReport, Usage
from tests.factories import run_workflow, start, steps_by_key

INLINE = """
name: parent
agents:
  m: {model: scripted/m, options: {price: {input: 1000000, output: 0}}}
steps:
  - id: prepare
    value: hello
  - id: child
    needs: [prepare]
    spec:
      name: child
      inputs:
        text: {type: string}
      agents:
        m: {model: scripted/m, options: {price: {input: 1000000, output: 0}}}
      steps:
        - id: shout
          agent: m
          prompt: "{{ inputs.text }}"
        - id: upper
          needs: [shout]
          value: "{{ inputs.text | upper }}"
      outputs:
        loud: "{{ steps.upper.output }}"
    inputs:
      text: "{{ steps.prepare.output }}"
  - id: after
    needs: [child]
    value: "{{ steps.child.output.loud }}!"
outputs:
  result: "{{ steps.after.output }}"
"""


async def test_sub_workflow_outputs_become_the_step_output(engine: Engine) -> None:
    run = await run_workflow(engine, INLINE)

    assert run.status == RunStatus.COMPLETED
    assert run.outputs == {"result": "HELLO!"}
    steps = await steps_by_key(engine, run.id)
    child_id = steps["child"].child_run_id
    assert child_id is not None
    child = await engine.get_run(child_id)
    assert child.status == RunStatus.COMPLETED
    assert child.parent_run_id == run.id
    assert child.root_run_id == run.id
    assert child.outputs == {"loud": "HELLO"}
    # the child's model usage counts toward the step that ran it and the parent run
    assert child.cost > 0
    assert steps["child"].cost == child.cost
    assert run.cost == child.cost


async def test_a_failing_sub_workflow_fails_its_step(engine: Engine) -> None:
    spec = INLINE.replace(
        "agents:\n        m: {model: scripted/m,",
        "agents:\n        m: {model: scripted/m, options: {fail_attempts: 1, fail_with: bad_request}, x:",
    )
    spec = spec.replace(", x: options: {price: {input: 1000000, output: 0}}}", "}")
    run = await run_workflow(engine, spec)

    assert run.status == RunStatus.FAILED
    assert run.error is not None
    assert "sub-workflow run" in run.error
    assert "400 Bad Request (scripted failure)" in run.error
    steps = await steps_by_key(engine, run.id)
    assert steps["child"].status == StepStatus.FAILED


async def test_example_sub_workflow_from_a_file_runs_directly_and_in_a_map(
    engine: Engine, examples_dir: Path
) -> None:
    spec = load_workflow_file(examples_dir / "sub-workflow.yaml")
    version = await engine.register(spec)
    run = await engine.run_until_settled(await engine.start_run(version, {}))

    assert run.status == RunStatus.COMPLETED
    digest = run.outputs["digest"]
    assert digest["count"] == 2
    assert len(digest["keywords"]) == 2
    assert "summarize in 20 words" in digest["lead"].lower()


CHILD_OF_TWO = """
name: parent
steps:
  - id: child
    spec:
      name: child
      steps:
        - {id: a, value: 1}
        - {id: b, value: 2}
"""


async def claim_all(engine: Engine, run_id: str) -> list[Claim]:
    return await engine.db.write(
        lambda tx: engine.transitions.claim(tx, owner="w", limit=10, root_run_id=run_id)
    )


def used(input_tokens: int, cost: str) -> StepReport:
    call = CallReport(
        context=CallContext(),
        model="scripted/m",
        usage=Usage(input_tokens=input_tokens, cost=Decimal(cost)),
        latency_ms=1.0,
    )
    return StepReport(outcome=Succeeded(output=input_tokens), calls=(call,))


async def test_usage_of_child_steps_recorded_in_one_commit_all_counts_toward_the_parent(
    engine: Engine,
) -> None:
    run_id = await start(engine, CHILD_OF_TWO)
    (parent_step,) = await claim_all(engine, run_id)
    report = StepReport(outcome=StartChildRun(spec_path=parent_step.spec_id, inputs={}))
    await engine.db.write(lambda tx: engine.transitions.record(tx, parent_step, report))
    first, second = await claim_all(engine, run_id)

    # Both results in one group commit: the first adds its usage to the child run's totals at
    # COMMIT, the second completes the child run, which hands its totals up to the parent.
    await asyncio.gather(
        engine.db.write(lambda tx: engine.transitions.record(tx, first, used(10, "1.5"))),
        engine.db.write(lambda tx: engine.transitions.record(tx, second, used(20, "2.25"))),
    )

    run = await engine.get_run(run_id)
    assert run.status == RunStatus.COMPLETED
    child = await engine.get_run((await steps_by_key(engine, run_id))["child"].child_run_id or "")
    assert (child.input_tokens, child.cost) == (30, Decimal("3.75"))
    step = (await steps_by_key(engine, run_id))["child"]
    assert (step.input_tokens, step.cost) == (30, Decimal("3.75"))
    assert (run.input_tokens, run.cost) == (30, Decimal("3.75"))
