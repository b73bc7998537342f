"""Turning engine read models into API models."""

from __future__ import annotations

from agentmill.api.schemas import RunPublic, StepPublic
from agentmill.store.queries import RunView, StepView


def run_public(run: RunView) -> RunPublic:
    return RunPublic.model_validate(run, from_attributes=True)


def step_public(step: StepView) -> StepPublic:
    return StepPublic.model_validate(step, from_attributes=True)
