"""Loading and validating workflow specs: every problem, with its message and where it is."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from agentmill.domain.source import MAX_SOURCE_BYTES
from agentmill.domain.spec import (
    LlmStep,
    MapStep,
    MapWorkflow,
    WorkflowSpec,
    WorkflowStep,
    check_model_name,
)
from agentmill.domain.validation import load_workflow_file, load_workflow_text
from agentmill.errors import Problem, SpecError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
EXAMPLE_FILES = sorted(EXAMPLES.rglob("*.yaml"))

Found = tuple[str, str, int | None, int | None]


def load(text: str) -> WorkflowSpec:
    return load_workflow_text(textwrap.dedent(text))


def problems(text: str | bytes) -> list[Found]:
    """(path, message, line, column) of every problem, in the order SpecError lists them."""
    source = textwrap.dedent(text) if isinstance(text, str) else text
    with pytest.raises(SpecError) as caught:
        load_workflow_text(source)
    return [(p.path, p.message, p.line, p.column) for p in caught.value.problems]


def file_problems(path: Path) -> list[tuple[str, str, int | None, int | None, str | None]]:
    with pytest.raises(SpecError) as caught:
        load_workflow_file(path)
    return [(p.path, p.message, p.line, p.column, p.source) for p in caught.value.problems]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


# ---------------------------------------------------------------- YAML safety and syntax


def test_a_yaml_syntax_error_names_the_line_and_column_of_the_problem() -> None:
    assert problems("""\
        name: broken
        steps:
          - id: a
            model: scripted/x
            prompt: hi: there
        """) == [("", "invalid YAML: mapping values are not allowed in this context", 5, 15)]


def test_a_tab_in_the_indentation_is_a_syntax_error_on_its_line() -> None:
    assert problems("name: x\nsteps:\n  - id: a\n\tvalue: 1\n") == [
        (
            "",
            "invalid YAML: while scanning a plain scalar found a tab character that violates indentation (it started at line 3, column 9)",
            4,
            1,
        )
    ]


def test_a_duplicate_top_level_key_points_at_the_second_one() -> None:
    assert problems("""\
        name: first
        name: second
        steps:
          - id: a
            value: 1
        """) == [("name", "duplicate key 'name' (first given on line 1)", 2, 1)]


def test_a_duplicate_key_inside_a_step_points_at_the_second_one() -> None:
    assert problems("""\
        name: x
        steps:
          - id: a
            value: 1
            value: 2
        """) == [("steps[0].value", "duplicate key 'value' (first given on line 4)", 5, 5)]


@pytest.mark.parametrize(
    ("value", "tag"),
    [
        ("!!python/object:os.system {}", "tag:yaml.org,2002:python/object:os.system"),
        ("!!python/object/new:os.system hi", "tag:yaml.org,2002:python/object/new:os.system"),
        ("!!python/name:os.system ''", "tag:yaml.org,2002:python/name:os.system"),
        ("!!binary aGVsbG8=", "tag:yaml.org,2002:binary"),
        ("!!set {a, b}", "tag:yaml.org,2002:set"),
        ("!custom text", "!custom"),
    ],
)
def test_non_standard_yaml_tags_are_rejected_where_they_are(value: str, tag: str) -> None:
    text = f"name: x\nsteps:\n  - id: a\n    value: {value}\n"
    assert problems(text) == [("steps[0].value", f"YAML tag {tag!r} is not allowed", 4, 5)]


def test_the_problem_text_gives_source_line_column_and_path() -> None:
    with pytest.raises(SpecError) as caught:
        load_workflow_text(
            "name: x\nsteps:\n  - id: a\n    value: !!python/object:os.system {}\n",
            source="evil.yaml",
        )
    assert str(caught.value) == (
        "1 problem in workflow spec\n"
        "  evil.yaml:4:5: steps[0].value: "
        "YAML tag 'tag:yaml.org,2002:python/object:os.system' is not allowed"
    )


def test_a_python_tag_on_a_sequence_is_rejected_too() -> None:
    text = "name: x\nsteps:\n  - id: a\n    value: !!python/object/apply:os.system [ls]\n"
    assert problems(text) == [
        (
            "steps[0].value",
            "YAML tag 'tag:yaml.org,2002:python/object/apply:os.system' is not allowed",
            4,
            5,
        )
    ]


@pytest.mark.parametrize(
    "text",
    [
        "name: x\nsteps:\n  - id: a\n    <<: {value: 1}\n",
        "name: x\n!custom k: 1\nsteps:\n  - id: a\n    value: 1\n",
    ],
    ids=["merge-key", "tagged-key"],
)
def test_unusual_mapping_keys_are_reported_not_raised(text: str) -> None:
    with pytest.raises(SpecError):
        load_workflow_text(text)


@pytest.mark.parametrize("value", ["!!int abc", "!!bool maybe", "!!float abc"])
def test_an_explicit_scalar_tag_with_a_bad_value_is_reported_not_raised(value: str) -> None:
    with pytest.raises(SpecError):
        load_workflow_text(f"name: x\nsteps:\n  - id: a\n    value: {value}\n")


def test_a_file_of_exactly_the_size_limit_loads_one_byte_more_does_not() -> None:
    spec = "name: big\nsteps:\n  - id: a\n    value: 1\n"
    padding = "#" * (MAX_SOURCE_BYTES - len(spec) - 1) + "\n"
    assert MAX_SOURCE_BYTES == 1024 * 1024
    assert len((spec + padding).encode()) == MAX_SOURCE_BYTES
    assert load_workflow_text(spec + padding).name == "big"

    too_big = "file is larger than 1048576 bytes"
    assert problems(spec + padding + "\n") == [("", too_big, None, None)]
    assert problems((spec + padding + "\n").encode()) == [("", too_big, None, None)]


def test_the_size_limit_counts_bytes_not_characters() -> None:
    spec = "name: big\nsteps:\n  - id: a\n    value: 1\n"
    # 'é' is two bytes in UTF-8: the text has fewer characters than the limit but more bytes.
    padding = "#" + "é" * ((MAX_SOURCE_BYTES - len(spec)) // 2) + "\n"
    assert len(spec + padding) < MAX_SOURCE_BYTES < len((spec + padding).encode())
    assert problems(spec + padding) == [("", "file is larger than 1048576 bytes", None, None)]


def test_an_alias_expansion_bomb_is_rejected() -> None:
    lines = ['lol0: &lol0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, 9):
        refs = ", ".join([f"*lol{level - 1}"] * 9)
        lines.append(f"lol{level}: &lol{level} [{refs}]")
    bomb = "\n".join(lines) + "\n"  # 9**9 = 387 million strings once expanded
    assert problems(bomb) == [("", "document expands to more than 100000 values", None, None)]


def test_a_few_aliases_are_fine() -> None:
    spec = load("""\
        name: reuse
        steps:
          - id: a
            value: &pair [1, 2]
          - id: b
            value: *pair
        """)
    assert [step.value for step in spec.steps] == [[1, 2], [1, 2]]


def test_nesting_up_to_the_depth_limit_loads_one_level_more_does_not() -> None:
    spec = "name: deep\nsteps:\n  - id: a\n    value: 1\noutputs:\n  o: "
    # outputs is at depth 1, outputs.o at depth 2; n nested lists reach depth n + 1.
    at_limit = load_workflow_text(spec + "[" * 63 + "]" * 63 + "\n")
    assert at_limit.name == "deep"
    assert problems(spec + "[" * 64 + "]" * 64 + "\n") == [
        ("", "document is nested deeper than 64 levels", None, None)
    ]


def test_text_that_is_not_utf8_is_rejected() -> None:
    assert problems(b"name: \xff\n") == [
        (
            "",
            "file is not UTF-8: 'utf-8' codec can't decode byte 0xff in position 6: "
            "invalid start byte",
            None,
            None,
        )
    ]


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_an_empty_file_is_rejected(text: str) -> None:
    assert problems(text) == [("", "file is empty", None, None)]


@pytest.mark.parametrize(
    "text", ["- name: x\n- steps: []\n", "just some text\n", "[1, 2]\n", "42\n"]
)
def test_the_top_level_must_be_a_mapping(text: str) -> None:
    assert problems(text) == [("", "a workflow must be a mapping (name, steps, …)", 1, 1)]


def test_json_is_accepted_too() -> None:
    spec = load_workflow_text('{"name": "j", "steps": [{"id": "a", "value": {"k": [1, 2]}}]}')
    assert spec.step("a").value == {"k": [1, 2]}


def test_dates_stay_text() -> None:
    spec = load("""\
        name: dated
        steps:
          - id: a
            value: 2024-01-02
        """)
    assert spec.step("a").value == "2024-01-02"


def test_a_file_that_cannot_be_read_is_reported(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    assert file_problems(missing) == [
        ("", "cannot read file: No such file or directory", None, None, str(missing))
    ]


# ---------------------------------------------------------------- structure


def test_an_unknown_key_gets_a_did_you_mean_hint() -> None:
    assert problems("""\
        name: typo
        steps:
          - id: a
            model: scripted/x
            promt: hi
        """) == [
        ("steps[0].prompt", "missing required key 'prompt'", 3, 5),
        ("steps[0].promt", "unknown key 'promt' (did you mean 'prompt'?)", 5, 5),
    ]


def test_an_unknown_top_level_key_with_and_without_a_close_match() -> None:
    assert problems("""\
        name: x
        output: {}
        colour: red
        steps:
          - id: a
            value: 1
        """) == [
        ("output", "unknown key 'output' (did you mean 'outputs'?)", 2, 1),
        ("colour", "unknown key 'colour'", 3, 1),
    ]


def test_a_key_that_belongs_to_another_step_kind_gets_no_hint_naming_itself() -> None:
    found = problems("""\
        name: x
        steps:
          - id: a
            model: scripted/x
            prompt: hi
            message: hello
        """)
    assert found == [("steps[0].message", "unknown key 'message'", 6, 5)]


def test_a_step_without_its_prompt_is_missing_a_required_key() -> None:
    assert problems("""\
        name: x
        steps:
          - id: ask
            model: scripted/x
        """) == [("steps[0].prompt", "missing required key 'prompt'", 3, 5)]


def test_a_workflow_without_a_name_is_missing_a_required_key() -> None:
    assert problems("""\
        description: nameless
        steps:
          - id: a
            value: 1
        """) == [("name", "missing required key 'name'", 1, 1)]


def test_a_workflow_needs_at_least_one_step() -> None:
    assert problems("name: x\nsteps: []\n") == [
        ("steps", "List should have at least 1 item after validation, not 0", 2, 1)
    ]


def test_a_step_whose_kind_cannot_be_inferred() -> None:
    assert problems("""\
        name: x
        steps:
          - id: a
            prompt: which model?
        """) == [
        (
            "steps[0]",
            "cannot tell the step's kind: give 'type' (llm, agent, template, human, map or workflow)",
            3,
            5,
        )
    ]


def test_a_map_inner_step_whose_kind_cannot_be_inferred() -> None:
    assert problems("""\
        name: x
        steps:
          - id: m
            over: "{{ [1, 2] }}"
            step:
              prompt: "{{ item }}"
        """) == [
        (
            "steps[0].step",
            "cannot tell the step's kind: give 'type' (llm, agent, template or workflow)",
            5,
            5,
        )
    ]


def test_step_kinds_are_inferred_from_their_keys() -> None:
    spec = load("""\
        name: kinds
        agents:
          w: {model: scripted/w}
        steps:
          - id: by_model
            model: scripted/x
            prompt: hi
          - id: by_agent
            agent: w
            prompt: hi
          - id: by_value
            value: 1
          - id: by_over
            over: "{{ [1] }}"
            step: {value: "{{ item }}"}
          - id: by_spec
            spec: {name: child, steps: [{id: s, value: 1}]}
          - id: llm_with_agent
            type: llm
            agent: w
            prompt: hi
          - id: ask
            type: human
        """)
    assert [step.type for step in spec.steps] == [
        "llm",
        "agent",
        "template",
        "map",
        "workflow",
        "llm",
        "human",
    ]


@pytest.mark.parametrize("step_id", ["1a", "my-step", "a b", "steps.x", "x" * 65])
def test_an_invalid_step_id(step_id: str) -> None:
    text = f"name: x\nsteps:\n  - id: {json.dumps(step_id)}\n    value: 1\n"
    assert problems(text) == [
        (
            "steps[0].id",
            f"step id {step_id!r} must start with a letter or '_' and contain only letters, "
            "digits and '_' (it is used in templates as steps.<id>)",
            3,
            5,
        )
    ]


@pytest.mark.parametrize("step_id", ["a", "_private", "Step_2", "x" * 64])
def test_a_valid_step_id(step_id: str) -> None:
    spec = load_workflow_text(f"name: x\nsteps:\n  - id: {step_id}\n    value: 1\n")
    assert spec.steps[0].id == step_id


# ---------------------------------------------------------------- ids, needs and cycles


def test_duplicate_step_ids_point_at_the_later_one() -> None:
    assert problems("""\
        name: x
        steps:
          - id: a
            value: 1
          - id: a
            value: 2
        """) == [("steps[1].id", "duplicate step id 'a' (first at steps[0])", 5, 5)]


def test_needs_naming_a_missing_step_gets_a_hint() -> None:
    assert problems("""\
        name: x
        steps:
          - id: summary
            value: 1
          - id: report
            needs: [summery, nothing_like_it]
            value: 2
        """) == [
        (
            "steps[1].needs[0]",
            "step 'report' needs 'summery', which is not a step (did you mean 'summary'?)",
            6,
            13,
        ),
        (
            "steps[1].needs[1]",
            "step 'report' needs 'nothing_like_it', which is not a step",
            6,
            22,
        ),
    ]


def test_a_step_cannot_need_itself() -> None:
    assert problems("""\
        name: x
        steps:
          - id: loop
            needs:
              - loop
            value: 1
        """) == [("steps[0].needs[0]", "step 'loop' needs itself", 5, 9)]


def test_a_three_step_cycle_is_printed_in_execution_order() -> None:
    # c -> a (a needs c), a -> b (b needs a), b -> c (c needs b)
    assert problems("""\
        name: x
        steps:
          - id: a
            needs: [c]
            value: 1
          - id: b
            needs: [a]
            value: 2
          - id: c
            needs: [b]
            value: 3
        """) == [("steps[1].needs", "cycle: b -> c -> a -> b", 7, 5)]


def test_a_three_step_cycle_listed_against_execution_order() -> None:
    assert problems("""\
        name: x
        steps:
          - id: c
            needs: [b]
            value: 3
          - id: b
            needs: [a]
            value: 2
          - id: a
            needs: [c]
            value: 1
        """) == [("steps[2].needs", "cycle: a -> b -> c -> a", 10, 5)]


def test_a_two_step_cycle() -> None:
    assert problems("""\
        name: x
        steps:
          - id: a
            needs: [b]
            value: 1
          - id: b
            needs: [a]
            value: 2
        """) == [("steps[1].needs", "cycle: b -> a -> b", 7, 5)]


def test_a_cycle_downstream_of_valid_steps_is_reported_once() -> None:
    assert problems("""\
        name: x
        steps:
          - id: start
            value: 0
          - id: a
            needs: [start, b]
            value: 1
          - id: b
            needs: [a]
            value: 2
          - id: after
            needs: [a, b]
            value: 3
        """) == [("steps[2].needs", "cycle: b -> a -> b", 9, 5)]


# ---------------------------------------------------------------- template references


def test_a_template_may_only_read_upstream_steps() -> None:
    assert problems("""\
        name: x
        steps:
          - id: draft
            value: text
          - id: review
            value: "{{ steps.draft.output }}"
        """) == [
        (
            "steps[1].value",
            "step 'review' refers to steps.draft, which is not upstream of it "
            "(add 'draft' to its needs)",
            6,
            5,
        )
    ]


def test_transitive_needs_count_as_upstream() -> None:
    spec = load("""\
        name: x
        steps:
          - id: a
            value: 1
          - id: b
            needs: [a]
            value: 2
          - id: c
            needs: [b]
            value: "{{ steps.a.output }} {{ steps['b'].output }}"
        """)
    assert spec.step("c").needs == ["b"]


def test_a_sibling_branch_is_not_upstream() -> None:
    assert problems("""\
        name: x
        steps:
          - id: a
            value: 1
          - id: left
            needs: [a]
            value: 2
          - id: right
            needs: [a]
            value: "{{ steps['left'].output }}"
        """) == [
        (
            "steps[2].value",
            "step 'right' refers to steps.left, which is not upstream of it "
            "(add 'left' to its needs)",
            10,
            5,
        )
    ]


def test_a_step_cannot_read_its_own_output() -> None:
    assert problems("""\
        name: x
        steps:
          - id: a
            value: "{{ steps.a.output }}"
        """) == [("steps[0].value", "step 'a' refers to its own output", 4, 5)]


def test_templates_naming_unknown_steps_inputs_and_names() -> None:
    assert problems("""\
        name: x
        inputs:
          topic: {type: string}
        steps:
          - id: summary
            value: 1
          - id: b
            needs: [summary]
            value:
              one: "{{ steps.sumary.output }}"
              two: "Write about {{ inputs.topik }}"
              three: ["{{ foo }}", "{{ run.id }}"]
        """) == [
        (
            "steps[1].value.one",
            "template refers to steps.sumary, which is not a step (did you mean 'summary'?)",
            10,
            7,
        ),
        (
            "steps[1].value.two",
            "template refers to inputs.topik, which is not an input (did you mean 'topic'?)",
            11,
            7,
        ),
        (
            "steps[1].value.three[0]",
            "unknown name 'foo' in template (available: inputs, run, steps)",
            12,
            15,
        ),
    ]


def test_templates_in_prompts_system_messages_and_when_are_checked() -> None:
    assert problems("""\
        name: x
        steps:
          - id: a
            model: scripted/x
            system: "{{ nobody }}"
            prompt: "{{ inputs.nothing }}"
            when: "{{ steps.zzz.output }}"
        """) == [
        (
            "steps[0].system",
            "unknown name 'nobody' in template (available: inputs, run, steps)",
            5,
            5,
        ),
        ("steps[0].prompt", "template refers to inputs.nothing, which is not an input", 6, 5),
        ("steps[0].when", "template refers to steps.zzz, which is not a step", 7, 5),
    ]


def test_agent_system_prompts_see_only_inputs_and_run_and_outputs_see_steps() -> None:
    assert problems("""\
        name: x
        agents:
          w:
            model: scripted/w
            system: "After {{ steps.a.output }}"
        steps:
          - id: a
            value: 1
        outputs:
          ok: "{{ steps.a.output }}"
          missing: "{{ steps.b.output }}"
          nested: ["{{ steps.a.output }}", {deep: "{{ outside }}"}]
        """) == [
        ("agents.w.system", "unknown name 'steps' in template (available: inputs, run)", 5, 5),
        ("outputs.missing", "template refers to steps.b, which is not a step", 11, 3),
        (
            "outputs.nested[1].deep",
            "unknown name 'outside' in template (available: inputs, run, steps)",
            12,
            37,
        ),
    ]


def test_item_and_index_are_allowed_only_inside_a_map_inner_step() -> None:
    assert problems("""\
        name: x
        steps:
          - id: fan
            over: "{{ item }}"
            step:
              value: "{{ index }}: {{ item }}"
          - id: plain
            value: "{{ item }} {{ index }}"
        """) == [
        ("steps[0].over", "unknown name 'item' in template (available: inputs, run, steps)", 4, 5),
        (
            "steps[1].value",
            "unknown name 'index' in template (available: inputs, run, steps)",
            8,
            5,
        ),
        (
            "steps[1].value",
            "unknown name 'item' in template (available: inputs, run, steps)",
            8,
            5,
        ),
    ]


def test_a_map_inner_step_cannot_read_its_own_map() -> None:
    assert problems("""\
        name: x
        steps:
          - id: fan
            over: "{{ [1, 2] }}"
            step:
              value: "{{ steps.fan.output }}"
        """) == [("steps[0].step.value", "step 'fan' refers to its own output", 6, 7)]


def test_a_map_inner_step_sees_item_and_index_but_nothing_else_new() -> None:
    assert problems("""\
        name: x
        steps:
          - id: fan
            over: "{{ [1, 2] }}"
            step:
              value: "{{ item }} {{ index }} {{ element }}"
        """) == [
        (
            "steps[0].step.value",
            "unknown name 'element' in template (available: index, inputs, item, run, steps)",
            6,
            7,
        )
    ]


def test_template_syntax_errors() -> None:
    assert problems("""\
        name: x
        steps:
          - id: a
            value: "{{ 1 + }}"
          - id: b
            value: "{% if %}yes{% endif %}"
          - id: c
            value: "hello {{ name"
        """) == [
        ("steps[0].value", "template syntax error: unexpected 'end of print statement'", 4, 5),
        (
            "steps[1].value",
            "template syntax error: Expected an expression, got 'end of statement block'",
            6,
            5,
        ),
        (
            "steps[2].value",
            "template syntax error: unexpected end of template, expected 'end of print statement'.",
            8,
            5,
        ),
    ]


def test_loop_variables_and_set_names_are_not_unknown_names() -> None:
    spec = load("""\
        name: x
        steps:
          - id: a
            value: [1, 2]
          - id: b
            needs: [a]
            value: "{% set sep = ', ' %}{% for n in steps.a.output %}{{ n }}{{ sep }}{% endfor %}"
        """)
    assert spec.step("b").needs == ["a"]


def test_the_jinja_loop_variable_is_not_an_unknown_name() -> None:
    load("""\
        name: x
        steps:
          - id: a
            value: [1, 2]
          - id: b
            needs: [a]
            value: "{% for n in steps.a.output %}{{ loop.index }}: {{ n }} {% endfor %}"
        """)


# ---------------------------------------------------------------- models and agents

MODEL_FORM = (
    "is not of the form 'provider/model' (for example 'openai/gpt-4o-mini' or 'scripted/echo')"
)


@pytest.mark.parametrize("model", ["gpt4", "openai/", "Open AI/x", "openai/gpt 4", "/gpt-4o"])
def test_a_malformed_model_name_on_a_step(model: str) -> None:
    text = f"name: x\nsteps:\n  - id: a\n    model: {json.dumps(model)}\n    prompt: hi\n"
    assert problems(text) == [("steps[0].model", f"model {model!r} {MODEL_FORM}", 4, 5)]


@pytest.mark.parametrize(
    "model", ["openai/gpt-4o-mini", "scripted/echo", "openrouter/meta-llama/llama-3", "a.b_c-d/x"]
)
def test_well_formed_model_names(model: str) -> None:
    assert check_model_name(model) == model


def test_malformed_model_names_on_an_agent_and_its_fallbacks() -> None:
    assert problems("""\
        name: x
        agents:
          w:
            model: gpt4
            fallbacks: [openai/gpt-4o, "openai/", "bad name"]
        steps:
          - id: a
            agent: w
            prompt: hi
        """) == [
        ("agents.w.model", f"model 'gpt4' {MODEL_FORM}", 4, 5),
        ("agents.w.fallbacks[1]", f"model 'openai/' {MODEL_FORM}", 5, 32),
        ("agents.w.fallbacks[2]", f"model 'bad name' {MODEL_FORM}", 5, 43),
    ]


def test_an_undefined_agent_with_and_without_a_hint() -> None:
    assert problems("""\
        name: x
        agents:
          writer: {model: scripted/w}
        steps:
          - id: a
            agent: writter
            prompt: hi
          - id: b
            type: llm
            agent: nobody
            prompt: hi
          - id: fan
            over: "{{ [1] }}"
            step:
              agent: ghost
              prompt: "{{ item }}"
        """) == [
        (
            "steps[0].agent",
            "agent 'writter' is not defined under 'agents' (did you mean 'writer'?)",
            6,
            5,
        ),
        ("steps[1].agent", "agent 'nobody' is not defined under 'agents'", 10, 5),
        ("steps[2].step.agent", "agent 'ghost' is not defined under 'agents'", 15, 7),
    ]


def test_an_agent_delegating_to_an_undefined_agent_or_to_itself() -> None:
    assert problems("""\
        name: x
        agents:
          lead: {model: scripted/l, tools: ["agent:writter", "agent:lead", python]}
          writer: {model: scripted/w}
        steps:
          - {id: a, agent: lead, prompt: hi}
        """) == [
        (
            "agents.lead.tools[0]",
            "tool 'agent:writter': agent 'writter' is not defined under 'agents' "
            "(did you mean 'writer'?)",
            3,
            37,
        ),
        ("agents.lead.tools[1]", "agent 'lead' cannot delegate to itself", 3, 54),
    ]


def test_agents_delegating_to_each_other_in_a_cycle() -> None:
    assert problems("""\
        name: x
        agents:
          lead: {model: scripted/l, tools: ["agent:a"]}
          a: {model: scripted/a, tools: [python, "agent:b"]}
          b: {model: scripted/b, tools: ["agent:c"]}
          c: {model: scripted/c, tools: ["agent:a"]}
        steps:
          - {id: s, agent: lead, prompt: hi}
        """) == [
        (
            "agents.c.tools[0]",
            "agents delegate to each other in a cycle: a -> b -> c -> a",
            6,
            34,
        ),
    ]


def test_a_delegate_needs_a_name_every_provider_takes_as_a_tool_name() -> None:
    assert problems("""\
        name: x
        agents:
          lead: {model: scripted/l, tools: ["agent:the writer"]}
          the writer: {model: scripted/w}
        steps:
          - {id: s, agent: lead, prompt: hi}
        """) == [
        (
            "agents.lead.tools[0]",
            "tool 'agent:the writer': agent 'the writer' is offered to the model as a tool by "
            "its name, which must be 1 to 64 letters, digits, '-' or '_'",
            3,
            37,
        ),
    ]


def test_a_team_that_delegates_without_a_cycle_is_valid() -> None:
    spec = load_workflow_text("""\
        name: x
        agents:
          lead: {model: scripted/l, tools: ["agent:a", "agent:b"]}
          a: {model: scripted/a, tools: ["agent:b"]}
          b: {model: scripted/b}
        steps:
          - {id: s, agent: lead, prompt: hi}
        """)
    assert spec.agents["lead"].tools == ["agent:a", "agent:b"]


def test_an_llm_step_needs_a_model_or_an_agent() -> None:
    assert problems("""\
        name: x
        steps:
          - id: a
            type: llm
            prompt: hi
        """) == [("steps[0]", "step 'a' needs 'model' or 'agent'", 3, 5)]


# ---------------------------------------------------------------- output schemas and inputs


def test_an_invalid_output_schema_names_the_place_inside_the_schema() -> None:
    assert problems("""\
        name: x
        steps:
          - id: a
            model: scripted/x
            prompt: hi
            output_schema:
              type: object
              properties:
                tags:
                  type: array
                  items: {type: strin}
          - id: b
            value: 1
            output_schema: {required: not-a-list}
        """) == [
        (
            "steps[0].output_schema.properties.tags.items.type",
            "invalid JSON Schema at .properties.tags.items.type: "
            "'strin' is not valid under any of the given schemas",
            11,
            19,
        ),
        (
            "steps[1].output_schema.required",
            "invalid JSON Schema at .required: 'not-a-list' is not of type 'array'",
            14,
            21,
        ),
    ]


def test_an_input_default_must_have_the_input_type() -> None:
    assert problems("""\
        name: x
        inputs:
          n: {type: integer, default: "3"}
          flag: {type: boolean, default: 1}
          count: {type: integer, default: true}
          tags: {type: array, default: [a]}
        steps:
          - id: a
            value: 1
        """) == [
        ("inputs.n.default", "default '3' is not of type integer", 3, 22),
        ("inputs.flag.default", "default 1 is not of type boolean", 4, 25),
        ("inputs.count.default", "default True is not of type integer", 5, 26),
    ]


def test_an_input_default_must_be_one_of_its_enum() -> None:
    found = problems("""\
        name: x
        inputs:
          tone: {type: string, enum: [formal, casual], default: angry}
        steps:
          - id: a
            value: 1
        """)
    assert [path for path, *_ in found] == ["inputs.tone.default"]


# ---------------------------------------------------------------- sub-workflows

CHILD = """\
    name: child
    inputs:
      text: {type: string}
      words: {type: integer, default: 40}
    steps:
      - id: s
        value: "{{ inputs.text }}"
    outputs:
      summary: "{{ steps.s.output }}"
    """


def test_a_sub_workflow_file_is_loaded_relative_to_its_parent(tmp_path: Path) -> None:
    write(tmp_path / "lib" / "child.yaml", CHILD)
    parent = write(
        tmp_path / "parent.yaml",
        """\
        name: parent
        steps:
          - id: one
            workflow: lib/child.yaml
            inputs: {text: hi}
          - id: many
            over: "{{ ['a', 'b'] }}"
            step:
              workflow: lib/child.yaml
              inputs: {text: "{{ item }}", words: 5}
        """,
    )
    spec = load_workflow_file(parent)
    one, many = spec.steps
    assert isinstance(one, WorkflowStep)
    assert isinstance(many, MapStep)
    assert isinstance(many.step, MapWorkflow)
    assert one.spec is not None
    assert many.step.spec is not None
    assert one.spec.name == many.step.spec.name == "child"
    assert one.spec.step("s").value == "{{ inputs.text }}"


def test_a_missing_sub_workflow_file(tmp_path: Path) -> None:
    parent = write(
        tmp_path / "parent.yaml",
        """\
        name: parent
        steps:
          - id: sub
            workflow: lib/nope.yaml
        """,
    )
    assert file_problems(parent) == [
        ("steps[0].workflow", "sub-workflow file 'lib/nope.yaml' not found", 4, 5, str(parent))
    ]


def test_a_sub_workflow_given_an_unknown_input_and_missing_a_required_one(tmp_path: Path) -> None:
    write(tmp_path / "child.yaml", CHILD)
    parent = write(
        tmp_path / "parent.yaml",
        """\
        name: parent
        steps:
          - id: sub
            workflow: child.yaml
            inputs:
              txt: hello
        """,
    )
    assert file_problems(parent) == [
        ("steps[0].inputs", "sub-workflow 'child' needs input 'text'", 5, 5, str(parent)),
        (
            "steps[0].inputs.txt",
            "sub-workflow 'child' has no input 'txt' (did you mean 'text'?)",
            6,
            7,
            str(parent),
        ),
    ]


def test_a_map_of_sub_workflows_checks_their_inputs_too(tmp_path: Path) -> None:
    write(tmp_path / "child.yaml", CHILD)
    parent = write(
        tmp_path / "parent.yaml",
        """\
        name: parent
        steps:
          - id: fan
            over: "{{ ['a'] }}"
            step:
              workflow: child.yaml
              inputs: {words: "{{ index }}"}
        """,
    )
    assert file_problems(parent) == [
        ("steps[0].step.inputs", "sub-workflow 'child' needs input 'text'", 7, 7, str(parent))
    ]


def test_sub_workflows_that_include_each_other(tmp_path: Path) -> None:
    a = write(
        tmp_path / "a.yaml",
        """\
        name: a
        steps:
          - id: call_b
            workflow: b.yaml
        """,
    )
    b = write(
        tmp_path / "b.yaml",
        """\
        name: b
        steps:
          - id: call_a
            workflow: a.yaml
        """,
    )
    assert file_problems(a) == [
        ("steps[0].workflow", "sub-workflow 'b.yaml' is invalid", 4, 5, str(a)),
        (
            "steps[0].workflow",
            "sub-workflows include each other: a.yaml -> b.yaml -> a.yaml",
            4,
            5,
            str(b),
        ),
    ]


def test_a_workflow_that_includes_itself(tmp_path: Path) -> None:
    me = write(
        tmp_path / "me.yaml",
        """\
        name: me
        steps:
          - id: again
            workflow: ./me.yaml
        """,
    )
    assert file_problems(me) == [
        ("steps[0].workflow", "sub-workflows include each other: me.yaml -> me.yaml", 4, 5, str(me))
    ]


def test_an_invalid_sub_workflow_reports_its_own_problems_in_its_own_file(tmp_path: Path) -> None:
    bad = write(
        tmp_path / "bad.yaml",
        """\
        name: bad
        steps:
          - id: s
            value: "{{ steps.nope.output }}"
        """,
    )
    parent = write(
        tmp_path / "parent.yaml",
        """\
        name: parent
        steps:
          - id: first
            value: 1
          - id: sub
            workflow: bad.yaml
        """,
    )
    # Both problems are reported; how problems of two files interleave is not specified.
    assert sorted(file_problems(parent), key=str) == sorted(
        [
            (
                "steps[0].value",
                "template refers to steps.nope, which is not a step",
                4,
                5,
                str(bad),
            ),
            ("steps[1].workflow", "sub-workflow 'bad.yaml' is invalid", 6, 5, str(parent)),
        ],
        key=str,
    )


def test_a_sub_workflow_file_cannot_be_resolved_without_a_directory() -> None:
    assert problems("""\
        name: x
        steps:
          - id: sub
            workflow: lib/child.yaml
        """) == [
        (
            "steps[0].workflow",
            "sub-workflow file 'lib/child.yaml' cannot be resolved here; inline it with 'spec:'",
            4,
            5,
        )
    ]


def test_load_workflow_text_resolves_files_against_base_dir(tmp_path: Path) -> None:
    write(tmp_path / "child.yaml", CHILD)
    text = "name: x\nsteps:\n  - id: sub\n    workflow: child.yaml\n    inputs: {text: hi}\n"
    spec = load_workflow_text(text, base_dir=tmp_path)
    sub = spec.step("sub")
    assert isinstance(sub, WorkflowStep)
    assert sub.spec is not None
    assert sub.spec.name == "child"


def test_a_workflow_step_gives_a_file_or_an_inline_spec_not_both_nor_neither() -> None:
    assert problems("""\
        name: x
        steps:
          - id: both
            workflow: lib/x.yaml
            spec: {name: c, steps: [{id: s, value: 1}]}
          - id: neither
            type: workflow
        """) == [
        ("steps[0].spec", "give either 'workflow' (a file) or 'spec'", 5, 5),
        ("steps[1]", "a workflow step needs 'workflow' (a file) or 'spec' (inline)", 6, 5),
    ]


def test_an_inline_sub_workflow_is_checked_with_positions_inside_the_parent() -> None:
    assert problems("""\
        name: x
        steps:
          - id: sub
            spec:
              name: child
              inputs: {text: {type: string}}
              steps:
                - id: s
                  value: "{{ inputs.bogus }}"
            inputs: {txt: hi}
        """) == [
        (
            "steps[0].spec.steps[0].value",
            "template refers to inputs.bogus, which is not an input",
            9,
            11,
        ),
        ("steps[0].inputs", "sub-workflow 'child' needs input 'text'", 10, 5),
        (
            "steps[0].inputs.txt",
            "sub-workflow 'child' has no input 'txt' (did you mean 'text'?)",
            10,
            14,
        ),
    ]


# ---------------------------------------------------------------- many problems at once


def test_every_cross_field_problem_is_reported_at_once_sorted_by_line() -> None:
    with pytest.raises(SpecError) as caught:
        load("""\
            name: many
            steps:
              - id: a
                value: "{{ steps.b.output }}"
              - id: b
                needs: [c]
                value: 1
              - id: a
                value: 2
            outputs:
              o: "{{ nope }}"
            """)
    error = caught.value
    assert [(p.path, p.message, p.line, p.column) for p in error.problems] == [
        (
            "steps[0].value",
            "step 'a' refers to steps.b, which is not upstream of it (add 'b' to its needs)",
            4,
            5,
        ),
        ("steps[1].needs[0]", "step 'b' needs 'c', which is not a step", 6, 13),
        ("steps[2].id", "duplicate step id 'a' (first at steps[0])", 8, 5),
        ("outputs.o", "unknown name 'nope' in template (available: inputs, run, steps)", 11, 3),
    ]
    assert str(error).splitlines() == [
        "4 problems in workflow spec",
        "  <spec>:4:5: steps[0].value: "
        "step 'a' refers to steps.b, which is not upstream of it (add 'b' to its needs)",
        "  <spec>:6:13: steps[1].needs[0]: step 'b' needs 'c', which is not a step",
        "  <spec>:8:5: steps[2].id: duplicate step id 'a' (first at steps[0])",
        "  <spec>:11:3: outputs.o: unknown name 'nope' in template (available: inputs, run, steps)",
    ]


def test_structural_and_sub_workflow_problems_are_reported_together(tmp_path: Path) -> None:
    parent = write(
        tmp_path / "parent.yaml",
        """\
        name: parent
        steps:
          - id: a
            model: gpt4
            prompt: hi
            timeot: 3
          - id: sub
            workflow: missing.yaml
        """,
    )
    assert [(path, message, line) for path, message, line, _, _ in file_problems(parent)] == [
        ("steps[0].model", f"model 'gpt4' {MODEL_FORM}", 4),
        ("steps[0].timeot", "unknown key 'timeot' (did you mean 'timeout'?)", 6),
        ("steps[1].workflow", "sub-workflow file 'missing.yaml' not found", 8),
    ]


def test_spec_error_sorts_problems_by_line_then_column() -> None:
    error = SpecError(
        [
            Problem(path="b", message="third", line=9, column=1),
            Problem(path="a", message="no position"),
            Problem(path="c", message="second", line=2, column=7),
            Problem(path="d", message="first", line=2, column=3),
        ]
    )
    assert [p.message for p in error.problems] == ["no position", "first", "second", "third"]
    assert str(error).splitlines()[0] == "4 problems in workflow spec"


# ---------------------------------------------------------------- examples and round trips


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: str(p.relative_to(EXAMPLES)))
def test_every_example_validates(path: Path) -> None:
    spec = load_workflow_file(path)
    assert spec.name
    assert spec.steps


def test_the_examples_include_the_sub_workflow_and_its_library() -> None:
    names = {str(p.relative_to(EXAMPLES)) for p in EXAMPLE_FILES}
    assert {"sub-workflow.yaml", "lib/summarize.yaml"} <= names


def test_the_sub_workflow_example_inlines_its_library_file() -> None:
    spec = load_workflow_file(EXAMPLES / "sub-workflow.yaml")
    first, all_, _digest = spec.steps
    assert isinstance(first, WorkflowStep)
    assert isinstance(all_, MapStep)
    assert isinstance(all_.step, MapWorkflow)
    assert first.spec == all_.step.spec == load_workflow_file(EXAMPLES / "lib" / "summarize.yaml")


EVERY_KIND = """\
    name: every-kind
    description: one step of each kind
    inputs:
      topic: {type: string}
      n: {type: integer, default: 2}
    agents:
      writer:
        model: scripted/writer
        system: "Write about {{ inputs.topic }}"
        fallbacks: [scripted/backup]
        options: {latency: 0, reply: {a: 1}}
    steps:
      - id: ask
        model: scripted/x
        prompt: "{{ inputs.topic }}"
        retry: {max_attempts: 3, backoff: 0.1}
        timeout: 5
        output_schema: {type: object, properties: {a: {type: integer}}}
      - id: write
        agent: writer
        needs: [ask]
        prompt: "{{ steps.ask.output }}"
      - id: shape
        needs: [write]
        value: {text: "{{ steps.write.output }}", n: "{{ inputs.n }}", list: [1, true, null]}
      - id: approve
        type: human
        needs: [shape]
        message: ok?
        on_reject: fail
      - id: fan
        needs: [approve]
        over: "{{ range(inputs.n) | list }}"
        concurrency: 2
        when: "{{ steps.approve.output.approved }}"
        on_failure: continue
        step: {type: llm, agent: writer, prompt: "{{ item }}"}
      - id: child
        needs: [fan]
        spec:
          name: child
          inputs: {x: {type: array}}
          steps: [{id: s, value: "{{ inputs.x }}"}]
        inputs: {x: "{{ steps.fan.output }}"}
    outputs:
      result: "{{ steps.child.output }}"
    timeout: 60
    """


def roundtrip(spec: WorkflowSpec) -> WorkflowSpec:
    document = json.loads(json.dumps(spec.model_dump(mode="json", exclude_unset=True)))
    return WorkflowSpec.model_validate(document)


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: str(p.relative_to(EXAMPLES)))
def test_an_example_round_trips_through_its_stored_document(path: Path) -> None:
    spec = load_workflow_file(path)
    again = roundtrip(spec)
    assert again == spec
    assert again.model_dump(mode="json", exclude_unset=True) == spec.model_dump(
        mode="json", exclude_unset=True
    )


def test_a_spec_with_every_step_kind_round_trips() -> None:
    spec = load(EVERY_KIND)
    again = roundtrip(spec)
    assert again == spec
    assert again.model_dump(mode="json", exclude_unset=True) == spec.model_dump(
        mode="json", exclude_unset=True
    )
    ask = again.step("ask")
    assert isinstance(ask, LlmStep)
    assert ask.retry is not None
    assert ask.retry.max_attempts == 3
    assert [step.type for step in again.steps] == [
        "llm",
        "agent",
        "template",
        "human",
        "map",
        "workflow",
    ]


def test_the_stored_document_keeps_only_what_the_author_wrote() -> None:
    spec = load(EVERY_KIND)
    document = spec.model_dump(mode="json", exclude_unset=True)
    assert document["steps"][2] == {
        "id": "shape",
        "needs": ["write"],
        "value": {
            "text": "{{ steps.write.output }}",
            "n": "{{ inputs.n }}",
            "list": [1, True, None],
        },
    }
    # whether an input is required depends on whether a default was written: it must survive
    again = roundtrip(spec)
    assert again.inputs["topic"].required is True
    assert again.inputs["n"].required is False


def test_a_need_listed_twice_is_reported() -> None:
    assert problems("""\
        name: x
        steps:
          - id: a
            value: 1
          - id: b
            needs: [a, a]
            value: 2
        """) == [("steps[1].needs[1]", "step 'b' lists 'a' twice in needs", 6, 16)]


# ---------------------------------------------------------------- named queues


def test_steps_and_map_items_go_to_the_default_queue_unless_they_name_one() -> None:
    spec = load_workflow_text("""\
name: q
steps:
  - id: a
    value: 1
  - id: b
    value: 2
    queue: gpu
  - id: m
    over: "[1, 2]"
    queue: fan-out_2
    step:
      value: "{{ item }}"
      queue: rate-limited
""")
    a, b, m = spec.steps
    assert (a.queue, b.queue, m.queue) == ("default", "gpu", "fan-out_2")
    assert isinstance(m, MapStep)
    assert m.step.queue == "rate-limited"


@pytest.mark.parametrize("name", ["GPU", "", "has space", "a" * 33, "dots.not.allowed"])
def test_a_bad_queue_name_is_reported_where_it_is(name: str) -> None:
    message = (
        f"queue {name!r} must be 1 to 32 lowercase letters, digits, '-' or '_' "
        "(for example 'gpu' or 'rate-limited')"
    )
    assert problems(f"""\
name: q
steps:
  - id: a
    value: 1
    queue: "{name}"
  - id: m
    over: "[1]"
    step:
      value: 1
      queue: "{name}"
""") == [
        ("steps[0].queue", message, 5, 5),
        ("steps[1].step.queue", message, 10, 7),
    ]
