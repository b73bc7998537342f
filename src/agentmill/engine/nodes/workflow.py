"""``workflow``: run a sub-workflow as a child run; its outputs become this step's output."""

from __future__ import annotations

from agentmill.domain.inputs import InvalidInputs, resolve_inputs
from agentmill.domain.spec import MapWorkflow, WorkflowStep
from agentmill.engine.context import StepContext
from agentmill.engine.outcomes import Outcome, StartChildRun
from agentmill.errors import StepFailed


async def run_workflow(ctx: StepContext) -> Outcome:
    step = ctx.step
    assert isinstance(step, WorkflowStep | MapWorkflow)
    assert step.spec is not None
    given = ctx.render(step.inputs)
    try:
        inputs = resolve_inputs(step.spec, given)
    except InvalidInputs as exc:
        raise StepFailed(f"sub-workflow {step.spec.name!r}: {exc}") from None
    path = ctx.claim.spec_id if ctx.claim.map_index is None else f"{ctx.claim.spec_id}.step"
    return StartChildRun(spec_path=path, inputs=inputs)
