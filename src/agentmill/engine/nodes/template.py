"""``template``: render a value without a model."""

from __future__ import annotations

from agentmill.domain.spec import MapTemplate, TemplateStep
from agentmill.engine.context import StepContext
from agentmill.engine.outcomes import Outcome, Succeeded


async def run_template(ctx: StepContext) -> Outcome:
    step = ctx.step
    assert isinstance(step, TemplateStep | MapTemplate)
    return Succeeded(output=ctx.render(step.value))
