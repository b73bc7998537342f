"""Human steps with a form and a timeout: answers become outputs; overdue steps get on_timeout."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update

from agentmill.domain.forms import InvalidAnswer
from agentmill.domain.states import RunStatus, StepStatus
from agentmill.engine.engine import Engine
from agentmill.errors import Conflict
from agentmill.store.models import steps
from tests.factories import event_types, start, steps_by_key

TRIAGE = """
name: triage
steps:
  - id: triage
    type: human
    message: "Triage the ticket"
    form:
      type: object
      properties:
        priority: {type: string, enum: [low, high]}
        owner: {type: string}
      required: [priority]
  - id: route
    needs: [triage]
    value: "{{ steps.triage.output.priority }} by {{ steps.triage.output.by }}"
outputs:
  routed: "{{ steps.route.output }}"
"""

TIMED = """
name: timed
steps:
  - id: ask
    type: human
    timeout: 60
    EXTRA
  - id: accepted
    needs: [ask]
    when: "{{ steps.ask.output.approved }}"
    value: "yes {{ steps.ask.output.priority | default('-') }}"
  - id: declined
    needs: [ask]
    when: "{{ not steps.ask.output.approved }}"
    value: "no"
outputs:
  accepted: "{{ steps.accepted.output }}"
  declined: "{{ steps.declined.output }}"
"""

FORM = "form: {type: object, properties: {priority: {type: string}}, required: [priority]}\n    "


async def waiting(engine: Engine, yaml_text: str) -> str:
    run_id = await start(engine, yaml_text)
    run = await engine.run_until_settled(run_id)
    assert run.status == RunStatus.WAITING
    return run_id


async def test_a_form_answer_becomes_the_output_and_flows_downstream(engine: Engine) -> None:
    run_id = await waiting(engine, TRIAGE)
    event = next(e for e in await engine.events(run_id=run_id) if e["type"] == "step.waiting")
    assert event["data"]["form"]["required"] == ["priority"]  # so a UI can render it

    await engine.decide(
        run_id, "triage", approved=True, by="ana", answer={"priority": "high", "owner": "bo"}
    )
    run = await engine.run_until_settled(run_id)

    assert run.status == RunStatus.COMPLETED
    assert run.outputs == {"routed": "high by ana"}
    steps = await steps_by_key(engine, run_id)
    assert steps["triage"].output == {
        "priority": "high",
        "owner": "bo",
        "approved": True,
        "by": "ana",
        "comment": None,
    }


async def test_an_invalid_answer_is_refused_with_its_path_and_changes_nothing(
    engine: Engine,
) -> None:
    run_id = await waiting(engine, TRIAGE)
    before = await engine.events(run_id=run_id)

    with pytest.raises(InvalidAnswer) as refused:
        await engine.decide(run_id, "triage", approved=True, answer={"priority": "urgent"})
    assert refused.value.path == "$.priority"
    assert str(refused.value) == (
        "answer to step 'triage' is invalid at $.priority: 'urgent' is not one of ['low', 'high']"
    )
    with pytest.raises(InvalidAnswer, match=re.escape("'priority' is a required property")):
        await engine.decide(run_id, "triage", approved=True, answer={"owner": "bo"})
    with pytest.raises(InvalidAnswer, match="step 'triage' asks for a form: send its answer"):
        await engine.decide(run_id, "triage", approved=True)

    assert await engine.events(run_id=run_id) == before
    assert (await engine.get_run(run_id)).status == RunStatus.WAITING
    assert (await steps_by_key(engine, run_id))["triage"].status == StepStatus.WAITING


async def test_a_form_step_can_still_be_rejected_and_a_plain_step_has_no_form(
    engine: Engine,
) -> None:
    run_id = await waiting(engine, TRIAGE)
    await engine.decide(run_id, "triage", approved=False, by="ana", comment="spam")
    assert (await steps_by_key(engine, run_id))["triage"].output == {
        "approved": False,
        "by": "ana",
        "comment": "spam",
    }

    plain = await waiting(engine, TIMED.replace("EXTRA", ""))
    with pytest.raises(Conflict, match="step 'ask' has no form to answer; approve or reject it"):
        await engine.decide(plain, "ask", approved=True, answer={"x": 1})


async def overdue(engine: Engine, run_id: str) -> None:
    """Move the waiting step's deadline into the past, as if its 60 s had gone by. (A real
    short timeout would race the worker's own sweep inside ``run_until_settled``.)"""
    past = datetime.now(UTC) - timedelta(seconds=1)
    await engine.db.write(
        lambda tx: tx.conn.execute(
            update(steps)
            .where(steps.c.run_id == run_id, steps.c.wait_until.is_not(None))
            .values(wait_until=past)
        )
    )


async def test_timeout_approves_with_the_forms_default(engine: Engine) -> None:
    run_id = await waiting(
        engine, TIMED.replace("EXTRA", FORM + "on_timeout: approve\n    default: {priority: low}")
    )
    event = next(e for e in await engine.events(run_id=run_id) if e["type"] == "step.waiting")
    assert event["data"]["deadline"] is not None
    await overdue(engine, run_id)

    # A fresh engine on the same database: the deadline is stored, not held in memory.
    restarted = Engine(engine.db, settings=engine.settings)
    await restarted.expire()
    run = await restarted.run_until_settled(run_id)

    assert run.status == RunStatus.COMPLETED
    assert run.outputs == {"accepted": "yes low", "declined": None}
    output = (await steps_by_key(engine, run_id))["ask"].output
    assert output == {
        "priority": "low",
        "approved": True,
        "by": None,
        "comment": None,
        "timed_out": True,
    }
    timed_out = [e for e in await engine.events(run_id=run_id) if e["type"] == "step.timed_out"]
    assert len(timed_out) == 1
    assert timed_out[0]["data"] == {"on_timeout": "approve", "output": output}


async def test_timeout_rejects_and_the_run_takes_the_other_branch(engine: Engine) -> None:
    run_id = await waiting(engine, TIMED.replace("EXTRA", "on_timeout: reject"))
    await overdue(engine, run_id)

    await engine.expire()
    run = await engine.run_until_settled(run_id)

    assert run.status == RunStatus.COMPLETED
    assert run.outputs == {"accepted": None, "declined": "no"}
    assert "step.timed_out" in await event_types(engine, run_id, "ask")


async def test_timeout_rejects_and_on_reject_fail_fails_the_run(engine: Engine) -> None:
    run_id = await waiting(
        engine, TIMED.replace("EXTRA", "on_timeout: reject\n    on_reject: fail")
    )
    await overdue(engine, run_id)

    await engine.expire()
    run = await engine.get_run(run_id)

    assert run.status == RunStatus.FAILED
    assert run.error == "step 'ask' timed out after 60s waiting for a person (rejected)"


async def test_without_on_timeout_a_timed_out_step_fails_the_run(engine: Engine) -> None:
    run_id = await waiting(engine, TIMED.replace("EXTRA", ""))
    await overdue(engine, run_id)

    await engine.expire()
    run = await engine.get_run(run_id)

    assert run.status == RunStatus.FAILED
    assert run.error == "step 'ask' timed out after 60s waiting for a person"
    steps = await steps_by_key(engine, run_id)
    assert steps["ask"].status == StepStatus.FAILED
    assert await event_types(engine, run_id, "ask") == [
        "step.queued",
        "step.started",
        "step.waiting",
        "step.timed_out",
        "step.failed",
    ]


async def test_a_decision_before_the_deadline_leaves_nothing_to_time_out(engine: Engine) -> None:
    run_id = await waiting(engine, TIMED.replace("EXTRA", ""))
    await engine.decide(run_id, "ask", approved=True, by="ana")
    await overdue(engine, run_id)

    await engine.expire()
    run = await engine.run_until_settled(run_id)

    assert run.status == RunStatus.COMPLETED
    assert "step.timed_out" not in await event_types(engine, run_id)


async def test_the_workers_own_sweep_applies_the_timeout(engine: Engine) -> None:
    run_id = await start(
        engine, TIMED.replace("timeout: 60", "timeout: 0.3").replace("EXTRA", "on_timeout: approve")
    )

    # on_waiting does nothing: the run stays with the worker until its sweep resolves it.
    run = await engine.run_until_settled(run_id, on_waiting=lambda run: None)

    assert run.status == RunStatus.COMPLETED
    assert run.outputs == {"accepted": "yes -", "declined": None}
