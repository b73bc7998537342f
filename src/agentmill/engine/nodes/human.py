"""``human``: the run waits (holding no worker) until someone approves, rejects or answers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from agentmill.domain.spec import HumanStep
from agentmill.engine.context import StepContext
from agentmill.engine.outcomes import Outcome, WaitForHuman


async def run_human(ctx: StepContext) -> Outcome:
    step = ctx.step
    assert isinstance(step, HumanStep)
    message = ctx.render(step.message) if step.message else None
    deadline = datetime.now(UTC) + timedelta(seconds=step.timeout) if step.timeout else None
    return WaitForHuman(
        message=None if message is None else str(message),
        form=step.form,
        default=step.default,
        deadline=deadline,
    )
