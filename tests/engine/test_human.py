"""`human` steps: the run waits holding no worker, then continues from the decision."""

from __future__ import annotations

import pytest

from agentmill.domain.states import RunStatus, StepStatus
from agentmill.engine.engine import Engine
from agentmill.errors import Conflict, NotFound
from tests.factories import event_types, start, steps_by_key

REVIEW = """
name: review
agents:
  writer: {model: scripted/w, options: {reply: "draft text"}}
steps:
  - id: draft
    agent: writer
    prompt: write
  - id: review
    type: human
    needs: [draft]
    message: "Approve? {{ steps.draft.output }}"
    on_reject: ON_REJECT
  - id: publish
    needs: [review]
    when: "{{ steps.review.output.approved }}"
    value: "published: {{ steps.draft.output }}"
  - id: revise
    needs: [review]
    when: "{{ not steps.review.output.approved }}"
    value: "revise: {{ steps.review.output.comment }}"
outputs:
  published: "{{ steps.publish.output }}"
  revised: "{{ steps.revise.output }}"
"""


async def wait_for_review(engine: Engine, on_reject: str = "continue") -> str:
    run_id = await start(engine, REVIEW.replace("ON_REJECT", on_reject))
    run = await engine.run_until_settled(run_id)  # no on_waiting: returns when it waits
    assert run.status == RunStatus.WAITING
    steps = await steps_by_key(engine, run_id)
    assert steps["review"].status == StepStatus.WAITING
    assert "publish" not in steps
    assert "revise" not in steps
    waiting = [e for e in await engine.events(run_id=run_id) if e["type"] == "step.waiting"]
    assert waiting[0]["data"]["message"] == "Approve? draft text"
    return run_id


async def test_approval_continues_the_run_down_the_approved_branch(engine: Engine) -> None:
    run_id = await wait_for_review(engine)

    await engine.decide(run_id, "review", approved=True, by="ana", comment="ship it")
    run = await engine.run_until_settled(run_id)

    assert run.status == RunStatus.COMPLETED
    assert run.outputs == {"published": "published: draft text", "revised": None}
    steps = await steps_by_key(engine, run_id)
    assert steps["review"].output == {"approved": True, "by": "ana", "comment": "ship it"}
    assert steps["revise"].status == StepStatus.SKIPPED
    # nothing before the human step ran again
    assert (await event_types(engine, run_id, "draft")).count("step.started") == 1


async def test_rejection_takes_the_other_branch(engine: Engine) -> None:
    run_id = await wait_for_review(engine)

    await engine.decide(run_id, "review", approved=False, by="ana", comment="too long")
    run = await engine.run_until_settled(run_id)

    assert run.status == RunStatus.COMPLETED
    assert run.outputs == {"published": None, "revised": "revise: too long"}


async def test_rejection_can_fail_the_run(engine: Engine) -> None:
    run_id = await wait_for_review(engine, on_reject="fail")

    await engine.decide(run_id, "review", approved=False, by="ana", comment="no")
    run = await engine.run_until_settled(run_id)

    assert run.status == RunStatus.FAILED
    assert run.error == "step 'review' was rejected by ana: no"


async def test_deciding_twice_or_on_the_wrong_step_is_refused(engine: Engine) -> None:
    run_id = await wait_for_review(engine)
    await engine.decide(run_id, "review", approved=True)

    with pytest.raises(Conflict, match="step 'review' is not waiting for a decision"):
        await engine.decide(run_id, "review", approved=False)
    with pytest.raises(NotFound, match="has no step 'nope'"):
        await engine.decide(run_id, "nope", approved=True)


async def test_on_waiting_callback_decides_and_the_run_finishes(engine: Engine) -> None:
    run_id = await start(engine, REVIEW.replace("ON_REJECT", "continue"))

    async def approve(run: object) -> None:
        await engine.decide(run_id, "review", approved=True, by="callback")

    run = await engine.run_until_settled(run_id, on_waiting=approve)
    assert run.status == RunStatus.COMPLETED
    assert run.outputs["published"] == "published: draft text"
