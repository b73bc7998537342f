"""How long to wait before trying again: one exponential backoff for every retry loop (model
calls, step retries, webhooks, reconnecting to Redis or PostgreSQL)."""

from __future__ import annotations

import math
import random


def backoff_delay(
    attempt: int,
    *,
    base: float,
    multiplier: float = 2.0,
    cap: float | None = None,
    jitter: bool = False,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait after try ``attempt`` (1 for the first) failed.

    ``base * multiplier ** (attempt - 1)``, at most ``cap``. With ``jitter`` the wait is drawn
    uniformly between half of that and all of it, so retries that failed together do not all
    come back together, yet none comes back sooner than half the backoff. A loop that fails
    for hours never overflows: past ``cap`` the wait stays ``cap``.
    """
    if attempt < 1:
        raise ValueError(f"attempt counts from 1, got {attempt}")
    try:
        delay = base * multiplier ** (attempt - 1)
    except OverflowError:  # a float power past 1e308, or an int too large for a float
        delay = math.inf
    if cap is not None:
        delay = min(cap, delay)
    if jitter:
        delay = (rng or random).uniform(delay / 2, delay)
    return delay
