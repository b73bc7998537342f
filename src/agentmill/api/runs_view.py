"""Turning engine read models into API models."""

from __future__ import annotations

from agentmill.api.schemas import RunPublic, StepPublic
from agentmill.store.queries import RunView, StepView


def run_public(run: RunView) -> RunPublic:
    return RunPublic(
        id=run.id,
        workspace_id=run.workspace_id,
        workflow_id=run.workflow_id,
        workflow=run.workflow,
        version_id=run.version_id,
        status=run.status,
        inputs=run.inputs,
        outputs=run.outputs,
        error=run.error,
        input_tokens=run.input_tokens,
        output_tokens=run.output_tokens,
        cost=run.cost,
        created_at=run.created_at,
        started_at=run.started_at,
        finished_at=run.finished_at,
    )


def step_public(step: StepView) -> StepPublic:
    return StepPublic(**{name: getattr(step, name) for name in StepPublic.model_fields})
