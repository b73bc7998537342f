"""``human``: the run waits (holding no worker) until someone approves or rejects."""

from __future__ import annotations

from agentmill.domain.spec import HumanStep
from agentmill.engine.context import StepContext
from agentmill.engine.outcomes import Outcome, WaitForHuman


async def run_human(ctx: StepContext) -> Outcome:
    step = ctx.step
    assert isinstance(step, HumanStep)
    message = ctx.render(step.message) if step.message else None
    return WaitForHuman(message=None if message is None else str(message))
