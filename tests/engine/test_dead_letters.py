"""Dead letters: steps that failed for good are listed, and a re-drive continues their run."""

from __future__ import annotations

import asyncio
import re
import textwrap
from typing import Any

import pytest

from agentmill.domain.states import RunStatus, StepStatus
from agentmill.domain.validation import load_workflow_text
from agentmill.engine.engine import Engine
from agentmill.errors import Conflict, NotFound
from agentmill.ids import new_id
from agentmill.store.dead_letters import DeadLetter
from agentmill.store.queries import RunView
from tests.factories import steps_by_key

PIPELINE = """
name: pipeline
agents:
  flaky: {model: scripted/flaky, options: {fail_attempts: 3, fail_with: server_error, reply: called}}
  slow: {model: scripted/slow, options: {latency: 0.6, reply: side done}}
steps:
  - id: first
    value: start
  - id: call
    needs: [first]
    agent: flaky
    prompt: "{{ steps.first.output }}"
    retry: {max_attempts: 3, backoff: 0.01, max_backoff: 0.02}
  - id: side
    needs: [first]
    agent: slow
    prompt: side
  - id: last
    needs: [call, side]
    value: "{{ steps.call.output }} / {{ steps.side.output }}"
outputs:
  result: "{{ steps.last.output }}"
"""


async def run_in_workspace(engine: Engine, yaml_text: str) -> tuple[str, RunView]:
    """Run a workflow in a workspace of its own (the dead-letter list is per workspace)."""
    workspace = new_id("ws")
    spec = load_workflow_text(textwrap.dedent(yaml_text))
    version = await engine.register(spec, workspace_id=workspace)
    run_id = await engine.start_run(version, {})
    return workspace, await engine.run_until_settled(run_id)


async def only_dead_letter(engine: Engine, workspace: str) -> DeadLetter:
    page = await engine.dead_letters(workspace)
    assert len(page.dead_letters) == 1, page
    return page.dead_letters[0]


async def events_of(engine: Engine, run_id: str) -> list[dict[str, Any]]:
    return await engine.events(root_run_id=run_id)


def started_attempts(events: list[dict[str, Any]], run_id: str, key: str) -> list[int]:
    return [
        e["attempt"]
        for e in events
        if e["type"] == "step.started" and e["run_id"] == run_id and e["step_key"] == key
    ]


async def test_a_step_that_exhausts_its_attempts_is_listed_and_a_redrive_completes_its_run(
    engine: Engine,
) -> None:
    workspace, run = await run_in_workspace(engine, PIPELINE)

    assert run.status == RunStatus.FAILED
    assert run.error == (
        "step 'call' failed after 3 attempts: 503 Service Unavailable (scripted failure)"
    )
    before = await steps_by_key(engine, run.id)
    assert before["side"].status == StepStatus.CANCELLED  # the parallel branch was cut short
    assert "last" not in before
    letter = await only_dead_letter(engine, workspace)
    assert (letter.step_key, letter.kind, letter.attempts, letter.redrivable) == (
        "call",
        "agent",
        3,
        True,
    )
    assert letter.error == "503 Service Unavailable (scripted failure)"
    assert (letter.step_id, letter.run_id, letter.root_run_id) == (
        before["call"].id,
        run.id,
        run.id,
    )
    assert letter.workflow == "pipeline"
    assert letter.failed_at == before["call"].finished_at

    reopened = await engine.redrive(letter.step_id, by="ops@example.com")

    assert (reopened.id, reopened.status, reopened.error) == (run.id, RunStatus.RUNNING, None)
    assert reopened.finished_at is None
    queued = await steps_by_key(engine, run.id)
    assert (queued["call"].status, queued["call"].attempt, queued["call"].max_attempts) == (
        StepStatus.QUEUED,
        3,
        6,
    )
    assert queued["side"].status == StepStatus.QUEUED
    assert (await engine.dead_letters(workspace)).dead_letters == []

    done = await engine.run_until_settled(run.id)

    assert done.status == RunStatus.COMPLETED
    assert done.outputs == {"result": "called / side done"}
    after = await steps_by_key(engine, run.id)
    assert {key: (s.status, s.attempt) for key, s in after.items()} == {
        "first": (StepStatus.SUCCEEDED, 1),
        "call": (StepStatus.SUCCEEDED, 4),
        "side": (StepStatus.SUCCEEDED, 2),
        "last": (StepStatus.SUCCEEDED, 1),
    }
    events = await events_of(engine, run.id)
    assert started_attempts(events, run.id, "first") == [1]  # what succeeded ran once
    assert started_attempts(events, run.id, "call") == [1, 2, 3, 4]  # never an attempt twice
    assert started_attempts(events, run.id, "side") == [1, 2]
    run_events = [e["type"] for e in events if e["type"].startswith("run.")]
    assert run_events == [
        "run.created",
        "run.started",
        "run.failed",
        "run.resumed",
        "run.completed",
    ]
    redriven = next(e for e in events if e["type"] == "step.redriven")
    assert (redriven["step_key"], redriven["attempt"]) == ("call", 3)
    assert redriven["data"] == {
        "by": "ops@example.com",
        "error": "503 Service Unavailable (scripted failure)",
        "attempts": 3,
        "next_attempt": 4,
    }
    side = [e["type"] for e in events if e["step_key"] == "side"]
    assert side[side.index("step.cancelled") :] == [
        "step.cancelled",
        "step.queued",
        "step.started",
        "llm.call",
        "step.succeeded",
    ]


async def test_redriving_twice_or_a_step_that_did_not_fail_is_a_conflict(engine: Engine) -> None:
    workspace, run = await run_in_workspace(engine, PIPELINE)
    letter = await only_dead_letter(engine, workspace)
    first = (await steps_by_key(engine, run.id))["first"]

    with pytest.raises(
        Conflict,
        match=re.escape(
            "step 'first' is SUCCEEDED, not FAILED: only a step that failed for good can be "
            "re-driven"
        ),
    ):
        await engine.redrive(first.id)
    both = await asyncio.gather(
        engine.redrive(letter.step_id), engine.redrive(letter.step_id), return_exceptions=True
    )
    assert sorted(type(outcome).__name__ for outcome in both) == ["Conflict", "RunView"]
    conflict = next(outcome for outcome in both if isinstance(outcome, Conflict))
    assert str(conflict).startswith("step 'call' is QUEUED, not FAILED")
    with pytest.raises(Conflict, match=re.escape("step 'call' is QUEUED, not FAILED")):
        await engine.redrive(letter.step_id)
    with pytest.raises(NotFound, match=re.escape("step 'stp_nope' not found")):
        await engine.redrive("stp_nope")
    assert (await engine.run_until_settled(run.id)).status == RunStatus.COMPLETED


async def test_a_failure_the_run_went_on_past_is_listed_but_not_redriven(engine: Engine) -> None:
    spec = """
    name: optional
    agents:
      bad: {model: scripted/bad, options: {fail_attempts: 1, fail_with: bad_request}}
    steps:
      - id: extra
        agent: bad
        prompt: x
        on_failure: continue
      - id: after
        needs: [extra]
        value: "{{ steps.extra.status }}"
    outputs:
      seen: "{{ steps.after.output }}"
    """
    workspace, run = await run_in_workspace(engine, spec)

    assert (run.status, run.outputs) == (RunStatus.COMPLETED, {"seen": "FAILED"})
    letter = await only_dead_letter(engine, workspace)
    assert (letter.step_key, letter.redrivable) == ("extra", False)
    with pytest.raises(
        Conflict,
        match=re.escape(
            f"step 'extra' cannot be re-driven: run {run.id} went on without step 'extra' "
            "(on_failure: continue), and the steps after it are not run again"
        ),
    ):
        await engine.redrive(letter.step_id)
    assert (await engine.get_run(run.id)).status == RunStatus.COMPLETED


SUB = """
name: parent
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
        picky:
          model: scripted/picky
          options: {fail_attempts: 1, fail_with: bad_request, price: {input: 1000000, output: 0}}
      steps:
        - id: shout
          agent: m
          prompt: "{{ inputs.text }}"
        - id: check
          needs: [shout]
          agent: picky
          prompt: "{{ steps.shout.output }}"
      outputs:
        checked: "{{ steps.check.output }}"
    inputs:
      text: "{{ steps.prepare.output }}"
  - id: after
    needs: [child]
    value: done
"""


async def test_a_dead_letter_in_a_sub_workflow_reopens_the_runs_above_it(engine: Engine) -> None:
    workspace, run = await run_in_workspace(engine, SUB)

    assert run.status == RunStatus.FAILED
    child_id = (await steps_by_key(engine, run.id))["child"].child_run_id
    assert child_id is not None
    letter = await only_dead_letter(engine, workspace)  # not the parent's `child` step
    assert (letter.step_key, letter.run_id, letter.root_run_id) == ("check", child_id, run.id)
    above = (await steps_by_key(engine, run.id))["child"]
    charged = above.cost
    assert charged > 0  # the sub-run's usage so far was reported when it failed
    with pytest.raises(
        Conflict,
        match=re.escape(
            f"step 'child' failed because its sub-workflow run {child_id} did: re-drive the "
            "failed step of that run"
        ),
    ):
        await engine.redrive(above.id)

    reopened = await engine.redrive(letter.step_id)
    assert reopened.status == RunStatus.RUNNING
    assert (await engine.get_run(child_id)).status == RunStatus.RUNNING
    assert (await steps_by_key(engine, run.id))["child"].status == StepStatus.RUNNING
    done = await engine.run_until_settled(run.id)

    assert done.status == RunStatus.COMPLETED
    child = await engine.get_run(child_id)
    assert child.status == RunStatus.COMPLETED
    parent_steps = await steps_by_key(engine, run.id)
    assert parent_steps["child"].child_run_id == child_id  # the same sub-run went on
    assert parent_steps["child"].cost == child.cost  # its usage counted once, not twice
    assert done.cost == child.cost
    assert child.cost > charged
    events = await events_of(engine, run.id)
    assert started_attempts(events, run.id, "prepare") == [1]
    assert started_attempts(events, child_id, "shout") == [1]
    assert started_attempts(events, child_id, "check") == [1, 2]
    resumed = [e["run_id"] for e in events if e["type"] == "run.resumed"]
    assert resumed == [child_id, run.id]


async def test_a_dead_letter_in_a_map_item_reruns_the_cut_short_items_and_completes(
    engine: Engine,
) -> None:
    spec = """
    name: fan-out
    agents:
      once: {model: scripted/once, options: {fail_attempts: 1, fail_with: auth, reply: "ok {{ prompt }}"}}
    steps:
      - id: plan
        value: [a, b, c]
      - id: each
        needs: [plan]
        over: "{{ steps.plan.output }}"
        concurrency: 3
        step:
          agent: once
          prompt: "{{ item }}"
    outputs:
      results: "{{ steps.each.output }}"
    """
    workspace, run = await run_in_workspace(engine, spec)

    assert run.status == RunStatus.FAILED
    letter = await only_dead_letter(engine, workspace)  # the item, not the map
    assert re.fullmatch(r"each\[[012]\]", letter.step_key)
    assert letter.error == "401 Unauthorized (scripted failure)"
    the_map = (await steps_by_key(engine, run.id))["each"]
    with pytest.raises(
        Conflict,
        match=re.escape(
            "map step 'each' failed because one of its items did: re-drive the failed item"
        ),
    ):
        await engine.redrive(the_map.id)

    await engine.redrive(letter.step_id)
    done = await engine.run_until_settled(run.id)

    assert done.status == RunStatus.COMPLETED
    assert done.outputs == {"results": ["ok a", "ok b", "ok c"]}
    steps = await steps_by_key(engine, run.id)
    assert {key: (s.status, s.attempt) for key, s in steps.items()} == {
        "plan": (StepStatus.SUCCEEDED, 1),
        "each": (StepStatus.SUCCEEDED, 1),
        "each[0]": (StepStatus.SUCCEEDED, 2),
        "each[1]": (StepStatus.SUCCEEDED, 2),
        "each[2]": (StepStatus.SUCCEEDED, 2),
    }
    events = await events_of(engine, run.id)
    assert [e["type"] for e in events if e["step_key"] == "each"].count("step.fanout") == 1
    assert (await engine.dead_letters(workspace)).dead_letters == []


async def test_a_sub_run_cancelled_by_the_failure_reopens_and_finishes(engine: Engine) -> None:
    spec = """
    name: branches
    agents:
      bad: {model: scripted/bad, options: {fail_attempts: 1, fail_with: bad_request, latency: 0.2}}
    steps:
      - id: fragile
        agent: bad
        prompt: x
      - id: sub
        spec:
          name: inner
          agents:
            slow: {model: scripted/slow, options: {latency: 0.6, reply: deep}}
          steps:
            - id: deep
              agent: slow
              prompt: y
            - id: deeper
              needs: [deep]
              value: "{{ steps.deep.output }}er"
          outputs:
            value: "{{ steps.deeper.output }}"
    outputs:
      value: "{{ steps.sub.output.value }}"
    """
    workspace, run = await run_in_workspace(engine, spec)

    assert run.status == RunStatus.FAILED
    child_id = (await steps_by_key(engine, run.id))["sub"].child_run_id
    assert child_id is not None
    assert (await engine.get_run(child_id)).status == RunStatus.CANCELLED
    letter = await only_dead_letter(engine, workspace)
    assert letter.step_key == "fragile"

    await engine.redrive(letter.step_id)
    done = await engine.run_until_settled(run.id)

    assert (done.status, done.outputs) == (RunStatus.COMPLETED, {"value": "deeper"})
    steps = await steps_by_key(engine, run.id)
    assert steps["sub"].child_run_id == child_id  # no second sub-run
    child = await engine.get_run(child_id)
    assert (child.status, child.error) == (RunStatus.COMPLETED, None)
    events = await events_of(engine, run.id)
    assert started_attempts(events, child_id, "deep") == [1, 2]


async def test_a_redrive_moves_the_run_deadline_by_the_time_it_spent_failed(
    engine: Engine,
) -> None:
    spec = """
    name: timed
    timeout: 1
    agents:
      bad: {model: scripted/bad, options: {fail_attempts: 1, fail_with: bad_request}}
    steps:
      - id: call
        agent: bad
        prompt: x
    """
    workspace, run = await run_in_workspace(engine, spec)
    assert run.status == RunStatus.FAILED
    letter = await only_dead_letter(engine, workspace)
    await asyncio.sleep(1.1)  # longer than the whole run may take

    await engine.redrive(letter.step_id)
    done = await engine.run_until_settled(run.id)

    assert (done.status, done.error) == (RunStatus.COMPLETED, None)


async def test_a_rejected_human_step_is_a_decision_not_a_dead_letter(engine: Engine) -> None:
    spec = """
    name: gate
    steps:
      - id: review
        type: human
        on_reject: fail
    """
    workspace = new_id("ws")
    version = await engine.register(
        load_workflow_text(textwrap.dedent(spec)), workspace_id=workspace
    )
    run_id = await engine.start_run(version, {})
    assert (await engine.run_until_settled(run_id)).status == RunStatus.WAITING
    await engine.decide(run_id, "review", approved=False, by="ana")

    assert (await engine.get_run(run_id)).status == RunStatus.FAILED
    assert (await engine.dead_letters(workspace)).dead_letters == []
    review = (await steps_by_key(engine, run_id))["review"]
    with pytest.raises(
        Conflict,
        match=re.escape("human step 'review' is not a dead letter: start a new run to ask again"),
    ):
        await engine.redrive(review.id)
