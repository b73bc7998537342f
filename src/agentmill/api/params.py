"""Types of query parameters that pydantic's lax parsing would otherwise stretch."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated

from pydantic import BeforeValidator

_NUMBER = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*")


def _date_time_only(value: object) -> object:
    # Pydantic reads "0.5" as 0.5 seconds after the epoch; a client sending a number meant
    # something else (milliseconds? a day count?), so it is told rather than guessed at.
    if isinstance(value, str) and _NUMBER.fullmatch(value):
        raise ValueError("must be an ISO 8601 date-time such as 2026-01-31T12:00:00Z, not a number")
    return value


Timestamp = Annotated[datetime, BeforeValidator(_date_time_only)]
"""A date-time given as ISO 8601 text; numbers are refused."""
