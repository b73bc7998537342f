"""Jinja sandbox escape attempts written into workflows, end to end: refused when the workflow is
checked where they can be seen, else the step fails with a clear message; nothing of the server
(its environment, its secrets) ever reaches an output, an error or an event. Values given to a
run (inputs, upstream outputs) are data and are never rendered as templates."""

from __future__ import annotations

import json
import os

import pytest

from agentmill.domain.states import RunStatus, StepStatus
from agentmill.domain.validation import load_workflow_text
from agentmill.engine.engine import Engine
from agentmill.errors import SpecError
from tests.factories import run_workflow, steps_by_key

SECRET = "s3cret-do-not-leak-7f3a"


@pytest.fixture(autouse=True)
def secret_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A secret the worker's process holds, as a provider key would be."""
    monkeypatch.setenv("AGENTMILL_TEST_LEAK_CANARY", SECRET)


def flow(*, system: str = "Be brief.", prompt: str = "hi", when: str = "", over: str = "") -> str:
    lines = [
        "name: escape",
        "inputs:",
        "  x: {type: string, default: plain}",
        "agents:",
        "  a:",
        "    model: scripted/a",
        f"    system: {json.dumps(system)}",
        '    options: {reply: "{{ prompt }}"}',
        "steps:",
        "  - id: s",
        "    agent: a",
        f"    prompt: {json.dumps(prompt)}",
    ]
    if when:
        lines.append(f"    when: {json.dumps(when)}")
    if over:
        lines += [
            "  - id: m",
            f"    over: {json.dumps(over)}",
            "    step: {value: '{{ item }}'}",
        ]
    return "\n".join(lines) + "\n"


def problems(text: str) -> list[tuple[str, str]]:
    with pytest.raises(SpecError) as caught:
        load_workflow_text(text)
    return [(p.path, p.message) for p in caught.value.problems]


def internal(name: str) -> str:
    return f"not allowed in a template: {name!r} is a Python internal"


@pytest.mark.parametrize(
    ("where", "text", "expected"),
    [
        (
            "system",
            "{{ ''.__class__.__mro__[1].__subclasses__() }}",
            [
                ("agents.a.system", internal("__class__")),
                ("agents.a.system", internal("__mro__")),
                ("agents.a.system", internal("__subclasses__")),
            ],
        ),
        (
            "prompt",
            "{{ cycler.__init__.__globals__.os }}",
            [
                ("steps[0].prompt", internal("__globals__")),
                ("steps[0].prompt", internal("__init__")),
            ],
        ),
        ("when", "{{ lipsum.__globals__ }}", [("steps[0].when", internal("__globals__"))]),
        (
            "prompt",
            "x {{ self._TemplateReference__context }}",
            [("steps[0].prompt", internal("_TemplateReference__context"))],
        ),
        ("over", "{{ inputs.x.__class__ }}", [("steps[1].over", internal("__class__"))]),
        ("prompt", "{{ inputs['__class__'] }}", [("steps[0].prompt", internal("__class__"))]),
        (
            "prompt",
            "x {{ self }}",
            [
                (
                    "steps[0].prompt",
                    "unknown name 'self' in template (available: inputs, run, steps)",
                )
            ],
        ),
    ],
)
def test_escape_attempts_that_can_be_seen_are_refused_when_the_workflow_is_checked(
    where: str, text: str, expected: list[tuple[str, str]]
) -> None:
    assert problems(flow(**{where: text})) == expected


@pytest.mark.parametrize(
    ("prompt", "error"),
    [
        (
            "{{ '{0.__class__}'.format(1) }}",
            "not allowed in a template: access to attribute '__class__' of 'int' object is unsafe.",
        ),
        (
            "{{ '{0.__globals__}'.format(lipsum) }}",
            "not allowed in a template: access to attribute '__globals__' of 'function' object "
            "is unsafe.",
        ),
        (
            "{{ inputs.x | attr('__class__') }}",
            "not allowed in a template: access to attribute '__class__' of 'str' object is unsafe.",
        ),
        (
            "{{ lipsum['__glob' ~ 'als__'] }}",
            "not allowed in a template: access to attribute '__globals__' of 'function' object "
            "is unsafe.",
        ),
        (
            "{{ range(10**9) | list }}",
            "OverflowError: Range too big. The sandbox blocks ranges larger than MAX_RANGE "
            "(100000). in '{{ range(10**9) | list }}'",
        ),
        (
            "{{ 'x' * 10**10 }}",
            "not allowed in a template: repeating a str of length 1 10000000000 times makes more "
            "than 1000000 items",
        ),
        (
            "{{ 10 ** 100000000 }}",
            "not allowed in a template: 10 ** 100000000 is too large a number",
        ),
        (
            "{% for i in range(100000) %}{{ 'a' * 1000000 }}{% endfor %}",
            "rendered text is longer than 1000000 characters",
        ),
        (
            "{{ 'a'.ljust(10**10) }}",
            "not allowed in a template: str.ljust makes more than 1000000 characters",
        ),
        (
            "{{ '%*s' % (10**10, 'a') }}",
            "not allowed in a template: formatting with % makes more than 1000000 characters",
        ),
        (
            "{{ '{:>10000000000}'.format(1) }}",
            "not allowed in a template: str.format makes more than 1000000 characters",
        ),
        (
            "{{ 'x' | indent(10**10) }}",
            "not allowed in a template: indent makes more than 1000000 characters",
        ),
    ],
)
async def test_escape_attempts_that_only_show_at_run_time_fail_the_step_clearly(
    engine: Engine, prompt: str, error: str
) -> None:
    run = await run_workflow(engine, flow(prompt=prompt))

    assert run.status == RunStatus.FAILED
    step = (await steps_by_key(engine, run.id))["s"]
    assert step.status == StepStatus.FAILED
    assert step.attempt == 1  # a refused template is not retried
    assert step.error == f"template error: {error}"
    await assert_nothing_leaked(engine, run.id)


async def test_input_values_and_upstream_outputs_are_never_rendered(engine: Engine) -> None:
    hostile = "{{ 7 * 7 }} {{ cycler.__init__.__globals__.os.environ }} {% raw %}x{% endraw %}"
    spec = """
    name: data-stays-data
    inputs:
      x: {type: string}
    agents:
      echo: {model: scripted/echo, options: {reply: "{{ prompt }}"}}
    steps:
      - id: told
        agent: echo
        prompt: "{{ inputs.x }}"
      - id: quoted
        needs: [told]
        value: "said: {{ steps.told.output }}"
      - id: again
        needs: [quoted]
        agent: echo
        prompt: "{{ steps.quoted.output }}"
    outputs:
      raw: "{{ inputs.x }}"
      last: "{{ steps.again.output }}"
    """
    run = await run_workflow(engine, spec, {"x": hostile})

    assert run.status == RunStatus.COMPLETED
    steps = await steps_by_key(engine, run.id)
    assert steps["told"].output == hostile
    assert steps["quoted"].output == f"said: {hostile}"
    assert run.outputs == {"raw": hostile, "last": f"said: {hostile}"}
    await assert_nothing_leaked(engine, run.id)


async def assert_nothing_leaked(engine: Engine, run_id: str) -> None:
    run = await engine.get_run(run_id)
    stored = json.dumps(
        [
            run.outputs if run else None,
            run.error if run else None,
            [(s.output, s.error) for s in await engine.steps(run_id)],
            await engine.events(run_id=run_id),
        ],
        default=str,
    )
    assert SECRET not in stored
    assert os.environ["PATH"] not in stored
