"""Workflow inputs: checking given values against the declared inputs, and parsing CLI text."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from agentmill.domain.spec import InputSpec, InputType, WorkflowSpec
from agentmill.domain.validation import check_input_value
from agentmill.errors import AgentMillError


class InvalidInputs(AgentMillError):
    """Inputs do not match the workflow's declaration; ``problems`` names each one."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid inputs: " + "; ".join(problems))


def resolve_inputs(spec: WorkflowSpec, given: Mapping[str, Any]) -> dict[str, Any]:
    """Check ``given`` against ``spec.inputs`` and fill defaults. Raises InvalidInputs."""
    problems: list[str] = []
    for name in given:
        if name not in spec.inputs:
            known = ", ".join(sorted(spec.inputs)) or "none"
            problems.append(f"unknown input {name!r} (inputs: {known})")
    resolved: dict[str, Any] = {}
    for name, declared in spec.inputs.items():
        if name in given:
            value = given[name]
            problem = check_input_value(declared.type, value)
            if problem is None and declared.enum is not None and value not in declared.enum:
                problem = f"{value!r} is not one of {declared.enum!r}"
            if problem:
                problems.append(f"input {name!r}: {problem}")
            resolved[name] = value
        elif declared.required:
            problems.append(f"missing required input {name!r} ({declared.type})")
        else:
            resolved[name] = declared.default
    if problems:
        raise InvalidInputs(problems)
    return resolved


def parse_cli_value(declared: InputSpec | None, text: str) -> Any:
    """``-i key=value``: text for strings, JSON for everything else (``3``, ``true``, ``[1,2]``)."""
    if declared is None or declared.type == InputType.STRING:
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text  # resolve_inputs reports the type mismatch with the input's name
