"""Answering a human step's form on a terminal: one prompt per field for flat forms, else JSON.

A form is flat when every property is a string, integer, number or boolean (enums allowed);
each is asked in order, with the step's ``default`` (or the property's own) as the suggestion.
Any other form is answered as one JSON object. The answer is checked against the form before it
is sent, and asked again when it does not match.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

from rich.console import Console
from rich.prompt import Confirm, Prompt

from agentmill.domain.forms import answer_problem

Ask = Callable[[Callable[[], Any]], Any]  # runs a blocking question; awaited by the caller
_SCALARS = {"string", "integer", "number", "boolean"}


def is_flat(form: Mapping[str, Any]) -> bool:
    properties = form.get("properties")
    return (
        isinstance(properties, Mapping)
        and bool(properties)
        and all(isinstance(p, Mapping) and p.get("type") in _SCALARS for p in properties.values())
    )


async def ask_answer(
    form: Mapping[str, Any], default: Mapping[str, Any] | None, console: Console, ask: Ask
) -> dict[str, Any]:
    """Ask until the answer matches ``form``."""
    while True:
        answer: dict[str, Any] | None
        if is_flat(form):
            answer = await _ask_fields(form, default or {}, console, ask)
        else:
            answer = await _ask_json(default, console, ask)
        if answer is None:
            continue
        problem = answer_problem(form, answer)
        if problem is None:
            return answer
        console.print(f"[red]not valid at {problem[0]}:[/] {problem[1]}", highlight=False)


async def _ask_fields(
    form: Mapping[str, Any], default: Mapping[str, Any], console: Console, ask: Ask
) -> dict[str, Any]:
    required = set(form.get("required", ()))
    answer: dict[str, Any] = {}
    for name, prop in form["properties"].items():
        kind = prop["type"]
        suggested = default.get(name, prop.get("default"))
        label = name + ("" if name in required else " (optional)")
        if prop.get("description"):
            label += f" — {prop['description']}"
        if kind == "boolean":
            answer[name] = await ask(
                partial(Confirm.ask, label, console=console, default=bool(suggested))
            )
            continue
        choices = [str(c) for c in prop["enum"]] if "enum" in prop else None
        text: str = await ask(
            partial(
                Prompt.ask,
                label,
                console=console,
                choices=choices,
                default="" if suggested is None else str(suggested),
                show_default=suggested is not None,
            )
        )
        if text == "" and name not in required:
            continue
        answer[name] = _typed(kind, text)
    return answer


def _typed(kind: str, text: str) -> Any:
    """The field's text as its type; left as text when it is not one (the check says why)."""
    try:
        if kind == "integer":
            return int(text)
        if kind == "number":
            return float(text)
    except ValueError:
        return text
    return text


async def _ask_json(
    default: Mapping[str, Any] | None, console: Console, ask: Ask
) -> dict[str, Any] | None:
    suggested = json.dumps(default) if default is not None else ""
    text: str = await ask(
        lambda: Prompt.ask(
            "Answer (a JSON object)",
            console=console,
            default=suggested,
            show_default=bool(suggested),
        )
    )
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        console.print(f"[red]not JSON:[/] {exc}", highlight=False)
        return None
    if not isinstance(value, dict):
        console.print("[red]the answer must be a JSON object[/]")
        return None
    return value
