"""Workflow inputs: checking given values against the declaration, and parsing CLI text."""

from __future__ import annotations

import textwrap
from typing import Any

import pytest

from agentmill.domain.inputs import InvalidInputs, parse_cli_value, resolve_inputs
from agentmill.domain.spec import InputSpec, InputType, WorkflowSpec
from agentmill.domain.validation import load_workflow_text
from agentmill.errors import AgentMillError

SPEC = load_workflow_text(
    textwrap.dedent("""\
        name: inputs-demo
        inputs:
          topic: {type: string, description: What to research.}
          count: {type: integer, default: 3}
          ratio: {type: number, default: 0.5}
          flag: {type: boolean, default: false}
          tags: {type: array, default: [a, b]}
          meta: {type: object, default: {}}
          tone: {type: string, enum: [formal, casual], default: casual}
        steps:
          - id: a
            value: "{{ inputs.topic }}"
        """)
)


def invalid(spec: WorkflowSpec, given: dict[str, Any]) -> list[str]:
    with pytest.raises(InvalidInputs) as caught:
        resolve_inputs(spec, given)
    return caught.value.problems


def test_defaults_are_filled_in() -> None:
    assert resolve_inputs(SPEC, {"topic": "bees"}) == {
        "topic": "bees",
        "count": 3,
        "ratio": 0.5,
        "flag": False,
        "tags": ["a", "b"],
        "meta": {},
        "tone": "casual",
    }


def test_given_values_win_over_defaults() -> None:
    resolved = resolve_inputs(
        SPEC, {"topic": "ants", "count": 10, "ratio": 2, "flag": True, "tone": "formal"}
    )
    assert resolved["count"] == 10
    assert resolved["ratio"] == 2
    assert resolved["flag"] is True
    assert resolved["tone"] == "formal"


def test_an_unknown_input_lists_the_known_ones() -> None:
    assert invalid(SPEC, {"topic": "bees", "topc": "x"}) == [
        "unknown input 'topc' (inputs: count, flag, meta, ratio, tags, tone, topic)"
    ]


def test_an_unknown_input_to_a_workflow_without_inputs() -> None:
    bare = load_workflow_text("name: bare\nsteps:\n  - id: a\n    value: 1\n")
    assert resolve_inputs(bare, {}) == {}
    assert invalid(bare, {"x": 1}) == ["unknown input 'x' (inputs: none)"]


def test_a_missing_required_input() -> None:
    assert invalid(SPEC, {}) == ["missing required input 'topic' (string)"]


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        ("topic", 3, "input 'topic': 3 is not of type string"),
        ("count", "3", "input 'count': '3' is not of type integer"),
        ("count", 2.5, "input 'count': 2.5 is not of type integer"),
        ("count", True, "input 'count': True is not of type integer"),
        ("ratio", "0.5", "input 'ratio': '0.5' is not of type number"),
        ("ratio", False, "input 'ratio': False is not of type number"),
        ("flag", 1, "input 'flag': 1 is not of type boolean"),
        ("flag", "true", "input 'flag': 'true' is not of type boolean"),
        ("tags", "a,b", "input 'tags': 'a,b' is not of type array"),
        ("meta", [], "input 'meta': [] is not of type object"),
    ],
)
def test_a_value_of_the_wrong_type(name: str, value: Any, problem: str) -> None:
    given = {"topic": "bees", name: value}
    assert invalid(SPEC, given) == [problem]


def test_a_value_outside_the_enum() -> None:
    assert invalid(SPEC, {"topic": "bees", "tone": "angry"}) == [
        "input 'tone': 'angry' is not one of ['formal', 'casual']"
    ]


def test_the_enum_is_checked_only_after_the_type() -> None:
    assert invalid(SPEC, {"topic": "bees", "tone": 7}) == ["input 'tone': 7 is not of type string"]


def test_every_problem_is_reported_together() -> None:
    with pytest.raises(InvalidInputs) as caught:
        resolve_inputs(SPEC, {"bogus": 1, "count": True, "tone": "angry"})
    error = caught.value
    assert error.problems == [
        "unknown input 'bogus' (inputs: count, flag, meta, ratio, tags, tone, topic)",
        "missing required input 'topic' (string)",
        "input 'count': True is not of type integer",
        "input 'tone': 'angry' is not one of ['formal', 'casual']",
    ]
    assert str(error) == "invalid inputs: " + "; ".join(error.problems)
    assert isinstance(error, AgentMillError)


@pytest.mark.parametrize(
    ("kind", "text", "value"),
    [
        (InputType.STRING, "42", "42"),
        (InputType.STRING, "true", "true"),
        (InputType.STRING, "[1, 2]", "[1, 2]"),
        (InputType.INTEGER, "42", 42),
        (InputType.INTEGER, "-7", -7),
        (InputType.NUMBER, "1.5", 1.5),
        (InputType.ARRAY, '["a", "b"]', ["a", "b"]),
        (InputType.ARRAY, "[]", []),
        (InputType.BOOLEAN, "true", True),
        (InputType.BOOLEAN, "false", False),
        (InputType.OBJECT, '{"a": 1}', {"a": 1}),
    ],
)
def test_parse_cli_value(kind: InputType, text: str, value: Any) -> None:
    parsed = parse_cli_value(InputSpec(type=kind), text)
    assert parsed == value
    assert type(parsed) is type(value)


@pytest.mark.parametrize(
    ("kind", "text"),
    [(InputType.INTEGER, "4x"), (InputType.BOOLEAN, "yes"), (InputType.ARRAY, "a,b")],
)
def test_text_that_is_not_json_stays_text_for_resolve_inputs_to_report(
    kind: InputType, text: str
) -> None:
    assert parse_cli_value(InputSpec(type=kind), text) == text


def test_an_undeclared_input_is_parsed_as_text() -> None:
    assert parse_cli_value(None, "42") == "42"


def test_cli_values_flow_into_resolve_inputs() -> None:
    given = {
        name: parse_cli_value(SPEC.inputs.get(name), text)
        for name, text in {"topic": "42", "count": "7", "flag": "true", "tags": '["x"]'}.items()
    }
    assert resolve_inputs(SPEC, given) == {
        "topic": "42",
        "count": 7,
        "ratio": 0.5,
        "flag": True,
        "tags": ["x"],
        "meta": {},
        "tone": "casual",
    }
    bad = {"topic": "x", "count": parse_cli_value(SPEC.inputs["count"], "seven")}
    assert invalid(SPEC, bad) == ["input 'count': 'seven' is not of type integer"]
