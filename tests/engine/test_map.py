"""`map`: fan out over a list made at run time, with a concurrency limit, results in order."""

from __future__ import annotations

import pytest

from agentmill.domain.states import RunStatus, StepStatus
from agentmill.engine.engine import Engine
from tests.factories import run_workflow, steps_by_key

MAP = """
name: fan-out
inputs:
  items: {type: array}
agents:
  worker: {model: scripted/w, options: {latency: 0.05, reply: "done {{ prompt }}"}}
steps:
  - id: plan
    value: "{{ inputs.items }}"
  - id: each
    needs: [plan]
    over: "{{ steps.plan.output }}"
    concurrency: 3
    step:
      agent: worker
      prompt: "#{{ index }} {{ item }}"
  - id: after
    needs: [each]
    value: "{{ steps.each.output | length }} results"
outputs:
  results: "{{ steps.each.output }}"
  after: "{{ steps.after.output }}"
"""


@pytest.mark.parametrize(
    "items",
    [[], ["only"], [f"item-{i}" for i in range(10)]],
    ids=["empty", "one", "many"],
)
async def test_map_collects_results_in_input_order(engine: Engine, items: list[str]) -> None:
    run = await run_workflow(engine, MAP, {"items": items})

    assert run.status == RunStatus.COMPLETED
    assert run.outputs == {
        "results": [f"done #{i} {item}" for i, item in enumerate(items)],
        "after": f"{len(items)} results",
    }
    steps = await steps_by_key(engine, run.id)
    children = [s for key, s in steps.items() if key.startswith("each[")]
    assert len(children) == len(items)
    assert all(child.status == StepStatus.SUCCEEDED for child in children)
    assert steps["each"].status == StepStatus.SUCCEEDED


async def test_map_runs_at_most_its_concurrency_at_once(engine: Engine) -> None:
    run = await run_workflow(engine, MAP, {"items": [str(i) for i in range(10)]})

    steps = await steps_by_key(engine, run.id)
    children = [s for key, s in steps.items() if key.startswith("each[")]
    moments = sorted(
        [(c.started_at, 1) for c in children] + [(c.finished_at, -1) for c in children],
        key=lambda m: (m[0], m[1]),
    )
    running = peak = 0
    for _, delta in moments:
        running += delta
        peak = max(peak, running)
    assert 2 <= peak <= 3  # it did run items in parallel, and never more than 3


async def test_a_failing_item_fails_the_map_and_the_run(engine: Engine) -> None:
    spec = """
    name: fan-out-fails
    agents:
      bad: {model: scripted/b, options: {fail_attempts: 1, fail_with: auth}}
    steps:
      - id: each
        over: "{{ [1, 2, 3] }}"
        concurrency: 1
        step:
          agent: bad
          prompt: "{{ item }}"
    """
    run = await run_workflow(engine, spec)

    assert run.status == RunStatus.FAILED
    assert run.error == "step 'each[0]' failed: 401 Unauthorized (scripted failure)"
    steps = await steps_by_key(engine, run.id)
    assert steps["each"].status == StepStatus.FAILED
    assert "each[1]" not in steps  # with concurrency 1 nothing else had started


async def test_over_must_give_a_list(engine: Engine) -> None:
    spec = """
    name: not-a-list
    steps:
      - id: each
        over: "{{ 'abc' }}"
        step: {value: "{{ item }}"}
    """
    run = await run_workflow(engine, spec)

    assert run.status == RunStatus.FAILED
    assert (
        run.error
        == "step 'each' failed: 'over' must give a list, but \"{{ 'abc' }}\" gave str: 'abc'"
    )
