"""The vocabulary of run events that readers filter on: levels and sources."""

from __future__ import annotations

from typing import Literal, get_args

EventLevel = Literal["info", "warning", "error"]
EventSource = Literal["engine", "llm", "step"]

EVENT_LEVELS: tuple[str, ...] = get_args(EventLevel)
# The spellings of Python's logging levels a tool author may reach for.
_ALIASES: dict[str, EventLevel] = {"debug": "info", "warn": "warning", "critical": "error"}


def event_level(level: str) -> EventLevel:
    """``level`` as one of the three event levels; ValueError naming them for anything else."""
    name = level.lower()
    if name in _ALIASES:
        return _ALIASES[name]
    if name in EVENT_LEVELS:
        return name  # type: ignore[return-value]  # checked just above
    raise ValueError(f"unknown log level {level!r}: use one of {', '.join(EVENT_LEVELS)}")
