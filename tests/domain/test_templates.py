"""Templates: native values, strict undefined names, the sandbox, and static references."""

from __future__ import annotations

from typing import Any

import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from agentmill.domain import template_limits
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


# ---------------------------------------------------------------- sizes checked before allocating
# The limit is lowered to 1000 so each vector uses sizes just above it: if a check broke, the
# template would render a few thousand characters (and the test fail) instead of gigabytes.


@pytest.fixture
def small_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(template_limits, "MAX_RENDERED_CHARS", 1000)


A600 = {"a": "a" * 600, "l": [0] * 600, "t": "\t" * 10}


def refused(what: str, unit: str = "characters") -> str:
    return f"not allowed in a template: {what} makes more than 1000 {unit}"


@pytest.mark.parametrize(
    ("source", "message"),
    [
        # output accumulates piece by piece
        (
            "{% for i in range(11) %}{{ 'a' * 100 }}{% endfor %}",
            "rendered text is longer than 1000 characters",
        ),
        (
            "{% for i in range(11) %}" + "x" * 100 + "{% endfor %}",
            "rendered text is longer than 1000 characters",
        ),
        ("{{ [a, a] }}", "rendered text is longer than 1000 characters"),
        # macros and blocks build their text before the streaming check sees it
        (
            "{% macro m() %}{% for i in range(11) %}{{ 'a' * 100 }}{% endfor %}{% endmacro %}"
            "{{ m() | length }}",
            refused("a macro or block"),
        ),
        (
            "{% set x %}{% for i in range(11) %}{{ 'a' * 100 }}{% endfor %}{% endset %}{{ x | length }}",
            refused("a macro or block"),
        ),
        # doubling
        ("{{ (a + a) | length }}", refused("adding two strs")),
        ("{{ (l + l) | length }}", refused("adding two lists", "items")),
        ("{{ (a ~ a) | length }}", refused("joining with ~")),
        ("{{ ([a] * 2) | length }}", refused("repeating a list of length 1 2 times", "items")),
        ("x{{ [a, a] }}", refused("printing a value")),
        # printf-style %
        ("{{ '%*s' % (1001, 'a') }}", refused("formatting with %")),
        ("{{ '%-*s' % (-1001, 'a') }}", refused("formatting with %")),
        ("{{ '%1001s' % 'a' }}", refused("formatting with %")),
        ("{{ '%.1001f' % 1.0 }}", refused("formatting with %")),
        ("{{ '%(x)s%(x)s' % {'x': a} }}", refused("formatting with %")),
        ("{{ '%s%s' % (a, a) }}", refused("formatting with %")),
        ("{{ '%*s' | format(1001, 'a') }}", refused("formatting with %")),
        # str methods
        ("{{ 'a'.ljust(1001) }}", refused("str.ljust")),
        ("{{ 'a'.rjust(1001) }}", refused("str.rjust")),
        ("{{ 'a'.center(1001, '-') }}", refused("str.center")),
        ("{{ '1'.zfill(1001) }}", refused("str.zfill")),
        ("{{ t.expandtabs(101) }}", refused("str.expandtabs")),
        ("{{ ('a' * 100).replace('a', 'abcdefghijk') }}", refused("str.replace")),
        ("{{ ('a' * 100).translate({97: 'abcdefghijk'}) }}", refused("str.translate")),
        ("{{ ''.join([a, a]) }}", refused("str.join")),
        ("{{ 'a'.encode().ljust(1001) | length }}", refused("bytes.ljust")),
        ("{{ '{:>1001}'.format(1) }}", refused("str.format")),
        ("{{ '{:.1001f}'.format(1.0) }}", refused("str.format")),
        ("{{ '{:>{w}}'.format(1, w=1001) }}", refused("str.format")),
        ("{{ '{x:>1001}'.format_map({'x': 1}) }}", refused("str.format")),
        ("{{ '{0}{0}'.format(a) }}", refused("str.format")),
        # filters
        ("{{ 'x' | center(1001) }}", refused("center")),
        ("{{ 'x\ny' | indent(1001) }}", refused("indent")),
        ("{{ 'x\ny' | indent(a) }}", refused("indent")),
        ("{{ [1] | batch(1001, 'x') | list }}", refused("batch filling", "items")),
        ("{{ [1] | slice(1001) | list }}", refused("slice", "items")),
        ("{{ ('a' * 100) | replace('a', 'abcdefghijk') }}", refused("str.replace")),
        ("{{ ('a b ' * 100) | wordwrap(2, wrapstring='-----') }}", refused("wordwrap")),
        ("{{ [a, a] | join }}", refused("join")),
        ("{{ [a, a] | map('upper') | join }}", refused("join")),
        ("{{ [[a], [a]] | sum(start=[]) }}", refused("sum", "items")),
        ("{{ [a, a] | tojson }}", refused("tojson")),
        ("{{ [a, a] | string | length }}", refused("turning a value into text")),
        ("{{ lipsum(2, max=501) }}", refused("lipsum", "words")),
    ],
)
def test_large_results_are_refused_before_they_are_built(
    small_limit: None, source: str, message: str
) -> None:
    with pytest.raises(TemplateError) as caught:
        render(source, A600)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    "source",
    [
        "{{ 'ab' + 'cd' }} {{ [1] + [2] }} {{ (1,) + (2,) }} {{ 1 + 2.5 }} {{ 'a' ~ 1 ~ none }}",
        "{{ '%05.2f|%-4s|%*d|%%' % (3.14159, 'ab', 3, 7) }} {{ '%(x)s-%(y)r' % {'x': 1, 'y': 'b'} }}",
        "{{ 7 % 3 }} {{ '%s' % [1, 2] }} {{ '%s and %s' | format('a', 'b') }}",
        "{{ 'a'.ljust(5, '.') }}|{{ 'a'.rjust(3) }}|{{ 'a'.center(5) }}|{{ '7'.zfill(3) }}",
        "{{ 'a\tb'.expandtabs(4) }}|{{ 'aXbX'.replace('X', '--') }}|{{ 'aXbX'.replace('X', '', 1) }}",
        "{{ ', '.join(['a', 'b']) }}|{{ 'abc'.translate({97: 'A'}) }}|{{ 'a b'.split() }}",
        "{{ '{:>6}|{:.2f}|{x}|{!r}'.format('a', 2.5, 'b', x=3) }}|{{ '{:>{w}}'.format(1, w=4) }}",
        "{{ '{a}-{b}'.format_map({'a': 1, 'b': 2}) }}",
        "{{ 'x' | center(9) }}|{{ 'a\nb\n\nc' | indent(2, true, true) }}|{{ 'a\nb' | indent('> ') }}",
        "{{ [1, 2, 3, 4, 5] | batch(2, 0) | list }} {{ [1, 2, 3, 4, 5] | slice(2, 0) | list }}",
        "{{ 'aXbX' | replace('X', '-') }} {{ 'aXbX' | replace('X', '-', 1) }}",
        "{{ ('word ' * 30) | wordwrap(20) }}|{{ ('word ' * 30) | wordwrap(20, wrapstring='<br>') }}",
        "{{ [1, 2] | join(', ') }} {{ [{'n': 1}, {'n': 2}] | join('/', attribute='n') }}",
        "{{ [1, 2] | map('string') | join }} {{ [1, 2] | sum }} {{ [[1], [2]] | sum(start=[]) }}",
        "{{ [1, 'a'] | string }} {{ {'a': [1]} | pprint }} {{ ' a ' | trim | upper }}",
        "{{ {'a': 1, 'b': 'x y'} | urlencode }} {{ 'ab' | title }} {{ 'AB' | lower }}",
        "{% macro m(x) %}[{{ x }}]{% endmacro %}{{ m(1) }}{% set y %}a{{ 2 }}b{% endset %}{{ y }}",
        "{% filter upper %}abc{{ 'd' }}{% endfilter %}{% macro w() %}<{{ caller() }}>{% endmacro %}"
        "{% call w() %}in{% endcall %}",
        "{{ lipsum(1, false, 3, 4) | length > 0 }} {{ 'x' * 3 }} {{ [0] * 2 }}",
    ],
)
def test_checked_operations_render_exactly_as_jinja_does(source: str) -> None:
    plain = ImmutableSandboxedEnvironment(autoescape=False)
    assert render(source) == plain.from_string(source).render()


def test_native_values_are_size_checked_too(small_limit: None) -> None:
    assert render("{{ [a] }}", A600) == [A600["a"]]
    with pytest.raises(TemplateError) as caught:
        render("{{ [a, a] }}", A600)
    assert str(caught.value) == "rendered text is longer than 1000 characters"
