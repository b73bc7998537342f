"""Functions the tool-loop tests register as custom tools (by import path)."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated

from pydantic import Field

CALLS: list[tuple[str, float, float]] = []  # (name, started, finished), for the overlap test


def add(a: int, b: int) -> int:
    """Add two whole numbers."""
    return a + b


async def slow_echo(
    text: Annotated[str, Field(description="What to echo")], delay: float = 0.2
) -> dict[str, str]:
    """Echo text after a delay."""
    started = time.monotonic()
    await asyncio.sleep(delay)
    CALLS.append((text, started, time.monotonic()))
    return {"echo": text}


def boom(reason: str) -> str:
    """Always fails."""
    raise RuntimeError(f"boom: {reason}")
