"""Pieces every HTTP provider needs: one TLS context, and failures reported the same way.

A provider's message reads ``provider/model: 429 Too Many Requests: <the upstream's own
message> (retry after 3s)``; these helpers build the status part and read how long the upstream
asked us to wait.
"""

from __future__ import annotations

import functools
import math
import ssl
import time
from collections.abc import Mapping
from datetime import UTC
from email.utils import parsedate_to_datetime
from http import HTTPStatus

import httpx

from agentmill.errors import RetryableError, StepFailed


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The TLS context every provider client shares: building one reads the whole CA bundle
    (a tenth of a second), which would otherwise happen for every client."""
    return httpx.create_ssl_context()


def is_retryable(status: int | None) -> bool:
    """Whether trying again may work: no status (the answer never came), 408, 409, 429, 5xx."""
    return status is None or status in (408, 409, 429) or status >= 500


def failure(
    model: str, status: int | None, upstream: str, retry_after: float | None = None
) -> RetryableError | StepFailed:
    """``RetryableError`` or ``StepFailed`` for an upstream answer with ``status``."""
    head = f"{status} {phrase(status)}: " if status is not None else ""
    message = f"{model}: {head}{upstream}"
    if retry_after is not None:
        message += f" (retry after {retry_after:g}s)"
    if is_retryable(status):
        return RetryableError(message, retry_after=retry_after, status=status)
    return StepFailed(message, status=status)


def phrase(status: int) -> str:
    """``Too Many Requests`` for 429; ``Error`` for a status HTTP does not name."""
    if status == 529:
        return "Overloaded"  # Anthropic's own status, not in the HTTP registry
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds to wait from ``retry-after-ms``, or ``Retry-After`` in seconds or as an HTTP
    date; None when the server said nothing usable."""
    if not headers:
        return None
    lowered = {k.lower(): v for k, v in headers.items()}
    if "retry-after-ms" in lowered:
        seconds = _number(lowered["retry-after-ms"])
        if seconds is not None:
            return max(seconds / 1000, 0.0)
    value = lowered.get("retry-after", "").strip()
    if not value:
        return None
    seconds = _number(value)
    if seconds is None:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - time.time()
    return max(seconds, 0.0)


def _number(value: str) -> float | None:
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None
