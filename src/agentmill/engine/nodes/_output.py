"""Turning a model's text into a step output, checked against ``output_schema``."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from agentmill.errors import RetryableError

_FENCE = re.compile(r"```(?:json)?[ \t]*\n(?P<body>.*?)\n[ \t]*```", re.DOTALL)


def parse_output(text: str, schema: Mapping[str, Any] | None) -> Any:
    """The text itself, or with a schema the JSON value it holds (fences allowed).

    A model that answers off-schema may do better on the next attempt, so it is retryable."""
    if schema is None:
        return text
    fenced = None if text.lstrip().startswith(("{", "[")) else _FENCE.search(text)
    body = fenced.group("body") if fenced else text
    try:
        value = json.loads(body)
    except json.JSONDecodeError as exc:
        raise RetryableError(
            f"output is not JSON ({exc.msg} at line {exc.lineno}): {text[:200]!r}"
        ) from None
    import jsonschema  # only steps with an output schema check one; not loaded at start

    error = jsonschema.exceptions.best_match(
        jsonschema.Draft202012Validator(schema).iter_errors(value)
    )
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        raise RetryableError(f"output does not match output_schema at {where}: {error.message}")
    return value
