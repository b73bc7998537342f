"""Denial of service by a template or a workflow: bounded work, no recursion on user input."""

from __future__ import annotations

import json

import pytest

from agentmill.domain.templates import TemplateError, compile_template
from agentmill.domain.validation import load_workflow_text
from agentmill.errors import SpecError

PROBE = "{% for i in range(100000) %}{% for j in range(500) %}{% endfor %}{% endfor %}done"


def test_the_probe_template_stops_at_the_work_budget() -> None:
    with pytest.raises(TemplateError) as caught:
        compile_template(PROBE).render({})
    assert "does more than 200,000 loop iterations and filtered items" in str(caught.value)


def test_a_filter_over_a_huge_range_is_charged() -> None:
    with pytest.raises(TemplateError, match="200,000 loop iterations"):
        compile_template("{{ range(90000)|sum + range(90000)|sum + range(90000)|sum }}").render({})


def test_work_under_the_budget_renders() -> None:
    text = "{% for i in range(300) %}{% for j in range(300) %}{% endfor %}{% endfor %}ok"
    assert compile_template(text).render({}) == "ok"


def test_each_render_has_its_own_budget() -> None:
    template = compile_template(
        "{% for i in range(60000) %}{% endfor %}{% for i in range(60000) %}{% endfor %}ok"
    )
    assert template.render({}) == "ok"
    assert template.render({}) == "ok"


def _chain(n: int, *, reverse: bool) -> str:
    steps = [
        {"id": f"s{k}", "type": "template", "value": "x", **({"needs": [f"s{k - 1}"]} if k else {})}
        for k in range(n)
    ]
    if reverse:
        steps.reverse()
    return json.dumps({"name": "chain", "steps": steps})


@pytest.mark.parametrize("reverse", [False, True])
def test_a_long_chain_validates_without_recursion(reverse: bool) -> None:
    spec = load_workflow_text(_chain(3000, reverse=reverse))
    assert len(spec.steps) == 3000


def test_a_long_cycle_is_reported_without_recursion() -> None:
    data = json.loads(_chain(3000, reverse=False))
    data["steps"][0]["needs"] = ["s2999"]
    with pytest.raises(SpecError) as caught:
        load_workflow_text(json.dumps(data))
    assert any(p.message.startswith("cycle: ") for p in caught.value.problems)


def test_a_reference_to_a_step_not_upstream_is_still_refused() -> None:
    data = json.loads(_chain(3, reverse=False))
    data["steps"][1]["value"] = "{{ steps.s2.output }}"
    with pytest.raises(SpecError) as caught:
        load_workflow_text(json.dumps(data))
    assert any("which is not upstream of it" in p.message for p in caught.value.problems)
