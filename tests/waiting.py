"""Waiting for the condition a test means, never for a fixed time.

A test that needs "the worker has started the step" or "the follower is waiting" polls for that
fact with a generous timeout: on a busy machine (``pytest -n 2`` on two cores) it only takes
longer, and a condition that never comes fails with the test's own message, not a hang.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

TIMEOUT = 30.0  # far longer than any condition takes; only a broken feature reaches it


async def until(
    predicate: Callable[[], bool | Awaitable[bool]],
    within: float = TIMEOUT,
    *,
    every: float = 0.02,
    message: str = "the condition never held",
) -> None:
    """Return once ``predicate()`` (sync or async) is true; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} (waited {within:g} s)")
        await asyncio.sleep(every)


def until_sync(
    predicate: Callable[[], bool],
    within: float = TIMEOUT,
    *,
    every: float = 0.02,
    message: str = "the condition never held",
) -> None:
    """:func:`until` for tests without an event loop (threads, subprocesses)."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} (waited {within:g} s)")
        time.sleep(every)
