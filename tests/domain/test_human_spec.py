"""A human step's form, timeout and notify settings are checked when the workflow loads."""

from __future__ import annotations

import textwrap

import pytest

from agentmill.domain.spec import HumanStep
from agentmill.domain.validation import load_workflow_text
from agentmill.errors import SpecError

Found = tuple[str, str, int | None]


def problems(text: str) -> list[Found]:
    with pytest.raises(SpecError) as caught:
        load_workflow_text(textwrap.dedent(text))
    return [(p.path, p.message, p.line) for p in caught.value.problems]


def test_a_valid_form_step_loads_with_its_timeout_default_and_webhook() -> None:
    spec = load_workflow_text(
        textwrap.dedent("""\
        name: x
        steps:
          - id: ask
            type: human
            form:
              type: object
              properties: {priority: {type: string, enum: [low, high]}}
              required: [priority]
            timeout: 3600
            on_timeout: approve
            default: {priority: low}
            notify: {webhook: "https://hooks.example.com/x", headers: {Authorization: t}}
        """)
    )
    step = spec.step("ask")
    assert isinstance(step, HumanStep)
    assert step.timeout == 3600
    assert step.default == {"priority": "low"}
    assert step.notify is not None
    assert step.notify.webhook == "https://hooks.example.com/x"


def test_an_invalid_form_schema_names_the_place_inside_it() -> None:
    assert problems("""\
        name: x
        steps:
          - id: ask
            type: human
            form:
              type: object
              properties:
                priority: {type: strin}
        """) == [
        (
            "steps[0].form.properties.priority.type",
            "invalid JSON Schema at .properties.priority.type: "
            "'strin' is not valid under any of the given schemas",
            8,
        )
    ]


def test_a_default_must_match_the_form() -> None:
    assert problems("""\
        name: x
        steps:
          - id: ask
            type: human
            form: {type: object, properties: {n: {type: integer}}, required: [n]}
            timeout: 60
            on_timeout: approve
            default: {n: "three"}
        """) == [
        (
            "steps[0].default",
            "default does not match the form at $.n: 'three' is not of type 'integer'",
            8,
        )
    ]


def test_form_rules_each_have_a_precise_message() -> None:
    assert problems("""\
        name: x
        steps:
          - id: not_object
            type: human
            form: {type: string}
          - id: reserved
            type: human
            form: {type: object, properties: {approved: {type: boolean}}}
          - id: no_default
            type: human
            form: {type: object}
            timeout: 5
            on_timeout: approve
          - id: no_form
            type: human
            default: {a: 1}
          - id: no_timeout
            type: human
            on_timeout: reject
        """) == [
        ("steps[0].form", "a form must be a JSON Schema with type: object", 5),
        (
            "steps[1].form.properties.approved",
            "form field 'approved' is reserved: the step's output has it already "
            "(reserved: approved, by, comment, timed_out)",
            8,
        ),
        (
            "steps[2].on_timeout",
            "on_timeout: approve on a form step needs a 'default' answer to apply",
            13,
        ),
        ("steps[3].default", "'default' is the answer to a 'form'; this step has none", 16),
        ("steps[4].on_timeout", "on_timeout applies only with a 'timeout' (seconds)", 19),
    ]


def test_a_webhook_must_be_an_http_url_and_timeouts_positive() -> None:
    found = problems("""\
        name: x
        steps:
          - id: ask
            type: human
            timeout: 0
            on_timeout: later
            notify: {webhook: "ftp://example.com"}
        """)
    assert [(path, line) for path, _, line in found] == [
        ("steps[0].timeout", 5),
        ("steps[0].on_timeout", 6),
        ("steps[0].notify.webhook", 7),
    ]
    assert "webhook 'ftp://example.com' must be an http:// or https:// address" in found[2][1]
