"""Templates: native values, strict undefined names, the sandbox, and static references."""

from __future__ import annotations

from typing import Any

import pytest

from agentmill.domain.templates import (
    MAX_RENDERED_CHARS,
    References,
    TemplateError,
    compile_template,
    is_template,
    references,
    render_value,
    template_strings,
)

CONTEXT: dict[str, Any] = {
    "inputs": {"topic": "bees", "n": 3},
    "steps": {
        "plan": {"output": {"tasks": ["define audience", "pick platform"]}},
        "review": {"output": {"approved": False, "comment": None}},
    },
    "run": {"id": "run_1"},
}


def render(source: str, context: dict[str, Any] | None = None) -> Any:
    return compile_template(source).render(CONTEXT if context is None else context)


# ---------------------------------------------------------------- native values and text


def test_a_single_expression_returns_a_native_list() -> None:
    value = render("{{ steps.plan.output.tasks }}")
    assert value == ["define audience", "pick platform"]
    assert isinstance(value, list)


def test_a_single_expression_returns_a_native_bool_even_with_surrounding_blanks() -> None:
    assert render("  {{ steps.review.output.approved }}\n") is False
    assert render("{{ not steps.review.output.approved }}") is True


def test_a_single_expression_returns_a_native_int_and_dict_and_none() -> None:
    assert render("{{ inputs.n + 1 }}") == 4
    assert type(render("{{ inputs.n + 1 }}")) is int
    assert render("{{ {'a': inputs.n} }}") == {"a": 3}
    assert render("{{ steps.review.output.comment }}") is None


def test_mixed_text_renders_to_a_string() -> None:
    assert render("n = {{ inputs.n }}") == "n = 3"
    assert render("{{ inputs.n }}{{ inputs.n }}") == "33"
    assert render("{{ inputs.n }} and {{ inputs.topic }}") == "3 and bees"
    assert render("{% for t in steps.plan.output.tasks %}[{{ t }}]{% endfor %}") == (
        "[define audience][pick platform]"
    )


def test_braces_inside_a_single_expression_keep_it_text() -> None:
    assert render("{{ 'a' }}}}") == "a}}"


def test_the_json_filters() -> None:
    assert render("{{ inputs | tojson }}") == '{"topic": "bees", "n": 3}'
    assert render("{{ 'é' | tojson }}") == '"é"'
    assert render("{{ '{\"a\": [1, 2]}' | fromjson }}") == {"a": [1, 2]}


# ---------------------------------------------------------------- undefined is an error


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("{{ nope }}", "'nope' is undefined in '{{ nope }}'"),
        ("{{ nope.x }}", "'nope' is undefined in '{{ nope.x }}'"),
        ("say {{ nope }}", "'nope' is undefined in 'say {{ nope }}'"),
        (
            "{{ inputs.missing }}",
            "'dict object' has no attribute 'missing' in '{{ inputs.missing }}'",
        ),
        (
            "say {{ inputs.missing }}",
            "'dict object' has no attribute 'missing' in 'say {{ inputs.missing }}'",
        ),
        (
            "{{ steps.plan.output.tasks | length + inputs.missing }}",
            "'dict object' has no attribute 'missing' in "
            "'{{ steps.plan.output.tasks | length + inputs.missing }}'",
        ),
        (
            "{{ inputs.missing if true else 1 }}",
            "'dict object' has no attribute 'missing' in '{{ inputs.missing if true else 1 }}'",
        ),
    ],
)
def test_undefined_names_and_attributes_raise(source: str, message: str) -> None:
    with pytest.raises(TemplateError) as caught:
        render(source)
    assert str(caught.value) == message


def test_undefined_can_still_be_tested_for() -> None:
    assert render("{{ inputs.missing is defined }}") is False
    assert render("{{ inputs.missing | default('none') }}") == "none"


@pytest.mark.parametrize(
    "source", ["{{ [inputs.missing] }}", "{{ {'a': inputs.missing} }}", "x {{ [nope] }}"]
)
def test_undefined_inside_a_literal_raises_too(source: str) -> None:
    with pytest.raises(TemplateError):
        render(source)


def test_a_failing_operation_is_a_template_error() -> None:
    with pytest.raises(TemplateError) as caught:
        render("{{ inputs.n / 0 }}")
    assert str(caught.value) == "ZeroDivisionError: division by zero in '{{ inputs.n / 0 }}'"


def test_rendered_text_is_bounded() -> None:
    assert MAX_RENDERED_CHARS == 1_000_000
    assert len(render("x{{ 'y' * 999999 }}")) == MAX_RENDERED_CHARS
    with pytest.raises(TemplateError) as caught:
        render("x{{ 'y' * 1000000 }}")
    assert str(caught.value) == "rendered text is longer than 1000000 characters"


def test_a_native_expression_is_bounded_too() -> None:
    with pytest.raises(TemplateError):
        render("{{ 'y' * 1000001 }}")


# ---------------------------------------------------------------- the sandbox


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (
            "{{ ''.__class__.__mro__ }}",
            "not allowed in a template: access to attribute '__class__' of 'str' object is unsafe.",
        ),
        (
            "text {{ ''.__class__.__mro__[1].__subclasses__() }}",
            "not allowed in a template: access to attribute '__class__' of 'str' object is unsafe.",
        ),
        (
            "{{ cycler.__init__.__globals__ }}",
            "not allowed in a template: access to attribute '__init__' of 'type' object is unsafe.",
        ),
        (
            "{{ steps.plan.output.tasks.append('rm -rf') }}",
            "not allowed in a template: access to attribute 'append' of 'list' object is unsafe.",
        ),
    ],
)
def test_the_sandbox_blocks_unsafe_access(source: str, message: str) -> None:
    with pytest.raises(TemplateError) as caught:
        render(source)
    assert str(caught.value) == message


def test_the_sandbox_keeps_the_data_unchanged() -> None:
    tasks = ["a"]
    with pytest.raises(TemplateError):
        render("{{ tasks.append('b') }}", {"tasks": tasks})
    assert tasks == ["a"]


def test_huge_ranges_are_refused() -> None:
    with pytest.raises(TemplateError) as caught:
        render("{{ range(10 ** 7) | list | length }}")
    assert str(caught.value).startswith("OverflowError: Range too big.")


def test_multiplying_and_powers_work_within_bounds() -> None:
    assert render("{{ 'ab' * 3 }}|{{ 3 * 'ab' }}|{{ [0] * 2 }}") == "ababab|ababab|[0, 0]"
    assert render("{{ 2 ** 10 }}") == 1024
    assert render("{{ 2.5 * 2 }}") == 5.0
    assert render("{{ 1 ** 100000000 }}") == 1
    assert render("{{ 2 ** -2 }}") == 0.25
    assert render("{{ 2 ** 30000 }}") == 2**30000


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (
            "{{ [1, 2] * 500001 }}",
            "not allowed in a template: repeating a list of length 2 500001 times makes more "
            "than 1000000 items",
        ),
        ("{{ (-3) ** 50000 }}", "not allowed in a template: -3 ** 50000 is too large a number"),
    ],
)
def test_repetitions_and_powers_too_large_are_refused_before_they_run(
    source: str, message: str
) -> None:
    with pytest.raises(TemplateError) as caught:
        render(source)
    assert str(caught.value) == message


def test_references_list_python_internals_it_reaches_for() -> None:
    refs = references("{{ x.__class__ }} {{ y['_Foo__bar'] }} {{ z._id }} {{ w.a__b }}")
    assert refs.internals == {"__class__", "_Foo__bar"}


# ---------------------------------------------------------------- data stays data


def test_a_value_containing_template_syntax_is_not_rendered_again() -> None:
    hostile = {"text": "{{ 7 * 7 }} {% for x in range(3) %}x{% endfor %}"}
    assert render("{{ text }}", hostile) == "{{ 7 * 7 }} {% for x in range(3) %}x{% endfor %}"
    assert render("got: {{ text }}", hostile) == (
        "got: {{ 7 * 7 }} {% for x in range(3) %}x{% endfor %}"
    )
    assert render_value(["{{ text }}", {"k": "{{ text }}"}], hostile) == [
        hostile["text"],
        {"k": hostile["text"]},
    ]


def test_autoescaping_is_off() -> None:
    assert render("{{ html }}!", {"html": "<b>&</b>"}) == "<b>&</b>!"


# ---------------------------------------------------------------- render_value


def test_render_value_walks_dicts_and_lists() -> None:
    value = {
        "tasks": "{{ steps.plan.output.tasks }}",
        "summary": ["first: {{ steps.plan.output.tasks[0] }}", 7, None, True],
        "nested": {"deep": ["{{ inputs.n > 1 }}"], "plain": "no template here"},
    }
    assert render_value(value, CONTEXT) == {
        "tasks": ["define audience", "pick platform"],
        "summary": ["first: define audience", 7, None, True],
        "nested": {"deep": [True], "plain": "no template here"},
    }


def test_render_value_leaves_non_templates_alone() -> None:
    assert render_value("plain { braces }", {}) == "plain { braces }"
    assert render_value(3.5, {}) == 3.5
    assert render_value(None, {}) is None


def test_render_value_raises_for_an_undefined_name_deep_inside() -> None:
    with pytest.raises(TemplateError) as caught:
        render_value({"a": [1, {"b": "{{ nope }}"}]}, CONTEXT)
    assert str(caught.value) == "'nope' is undefined in '{{ nope }}'"


def test_is_template_and_template_strings() -> None:
    assert is_template("{{ x }}")
    assert is_template("{% if x %}y{% endif %}")
    assert is_template("{# a comment #}")
    assert not is_template("{ x }")
    assert list(
        template_strings({"a": ["no", "{{ x }}"], "b": {"c": "{% if y %}{% endif %}"}})
    ) == [
        (("a", 1), "{{ x }}"),
        (("b", "c"), "{% if y %}{% endif %}"),
    ]


# ---------------------------------------------------------------- compile errors


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("{{ 1 + }}", "template syntax error: unexpected 'end of template'"),
        ("x {{ 1 + }}", "template syntax error: unexpected 'end of print statement'"),
        ("{% if %}", "template syntax error: Expected an expression, got 'end of statement block'"),
    ],
)
def test_a_syntax_error_is_a_template_error(source: str, message: str) -> None:
    with pytest.raises(TemplateError) as caught:
        compile_template(source)
    assert str(caught.value) == message


def test_compiled_templates_are_cached() -> None:
    assert compile_template("{{ inputs.n }} cached") is compile_template("{{ inputs.n }} cached")


# ---------------------------------------------------------------- references


def test_references_find_steps_inputs_and_top_level_names() -> None:
    refs = references(
        "{{ steps.x.output }} {{ steps['y'].output }} {{ inputs.z }} {{ run.id }} {{ item }}"
    )
    assert refs == References(
        names=frozenset({"steps", "inputs", "run", "item"}),
        steps=frozenset({"x", "y"}),
        inputs=frozenset({"z"}),
    )


def test_references_inside_statements_and_filters() -> None:
    refs = references(
        "{% if steps.gate.output %}{{ steps.a.output | map(attribute=inputs.key) | list }}{% endif %}"
    )
    assert refs.steps == {"gate", "a"}
    assert refs.inputs == {"key"}
    assert refs.names == {"steps", "inputs"}


def test_references_ignore_loop_and_set_variables_and_globals() -> None:
    refs = references(
        "{% for task in steps.plan.output.tasks %}{{ task.title }}{% endfor %}"
        "{% set sep = ', ' %}{{ sep }}{{ range(3) | list }}{{ dict(a=1) }}"
    )
    assert refs.names == {"steps"}
    assert refs.steps == {"plan"}


def test_references_of_a_dynamic_index_name_no_step() -> None:
    refs = references("{{ steps[inputs.which].output }}")
    assert refs.steps == frozenset()
    assert refs.names == {"steps", "inputs"}
    assert refs.inputs == {"which"}


def test_references_of_plain_text_are_empty() -> None:
    assert references("no templates here") == References(
        names=frozenset(), steps=frozenset(), inputs=frozenset()
    )


def test_references_report_syntax_errors() -> None:
    with pytest.raises(TemplateError) as caught:
        references("{% for x in %}{% endfor %}")
    assert str(caught.value).startswith("template syntax error: ")
