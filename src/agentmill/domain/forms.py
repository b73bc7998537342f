"""Forms on human steps: what an answer must look like, and the output a decision makes.

A human step's output is ``{"approved", "by", "comment"}`` plus, for a form, the answer's
fields at the top level (so templates read ``steps.<id>.output.<field>``). A timeout adds
``"timed_out": true``. The decision's own names are therefore reserved as form properties.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agentmill.errors import AgentMillError

RESERVED_FIELDS = ("approved", "by", "comment", "timed_out")


class InvalidAnswer(AgentMillError):
    """An answer to a form does not match its schema (or a form step got no answer)."""

    def __init__(self, message: str, *, path: str = "$") -> None:
        self.path = path
        super().__init__(message)


def answer_problem(form: Mapping[str, Any], answer: Any) -> tuple[str, str] | None:
    """``(json_path, message)`` of the most relevant way ``answer`` misses ``form``; None if
    it matches."""
    import jsonschema  # only human steps with a form need it; it costs 75 ms at start

    error = jsonschema.exceptions.best_match(
        jsonschema.Draft202012Validator(form).iter_errors(answer)
    )
    if error is None:
        return None
    return error.json_path, error.message


def check_answer(step_key: str, form: Mapping[str, Any], answer: Any) -> dict[str, Any]:
    """The answer, once it matches the form; :class:`InvalidAnswer` naming where it does not."""
    problem = answer_problem(form, answer)
    if problem is not None:
        path, message = problem
        raise InvalidAnswer(
            f"answer to step {step_key!r} is invalid at {path}: {message}", path=path
        )
    return dict(answer)


def decision_output(
    *,
    approved: bool,
    by: str | None,
    comment: str | None,
    answer: Mapping[str, Any] | None = None,
    timed_out: bool = False,
) -> dict[str, Any]:
    """A human step's output (see the module docstring)."""
    output = {**(answer or {}), "approved": approved, "by": by, "comment": comment}
    if timed_out:
        output["timed_out"] = True
    return output
