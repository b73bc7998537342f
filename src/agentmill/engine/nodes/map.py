"""``map``: fan out over a list made at run time; the transitions run and collect the items."""

from __future__ import annotations

from agentmill.domain.spec import MapStep
from agentmill.engine.context import StepContext
from agentmill.engine.outcomes import FanOut, Outcome
from agentmill.errors import StepFailed

MAX_ITEMS = 10_000


async def run_map(ctx: StepContext) -> Outcome:
    step = ctx.step
    assert isinstance(step, MapStep)
    items = ctx.render(step.over)
    if not isinstance(items, list):
        raise StepFailed(
            f"'over' must give a list, but {step.over!r} gave {type(items).__name__}: {items!r:.200}"
        )
    if len(items) > MAX_ITEMS:
        raise StepFailed(f"'over' gave {len(items)} items; a map takes at most {MAX_ITEMS}")
    return FanOut(items=items)
