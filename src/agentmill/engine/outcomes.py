"""What executing a step produced; the transitions turn each into one transaction."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Any

from agentmill.gateway.types import CallReport, Usage


@dataclass(frozen=True, kw_only=True)
class LogLine:
    message: str
    level: str = "info"
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Succeeded:
    output: Any


@dataclass(frozen=True, kw_only=True)
class Skipped:
    reason: str


@dataclass(frozen=True, kw_only=True)
class Failed:
    error: str
    retryable: bool
    retry_after: float | None = None
    budget: bool = False


@dataclass(frozen=True, kw_only=True)
class WaitForHuman:
    message: str | None
    form: dict[str, Any] | None = None
    default: dict[str, Any] | None = None  # the form's answer when nobody gives one
    deadline: datetime | None = None  # when the step's on_timeout applies


@dataclass(frozen=True, kw_only=True)
class FanOut:
    items: list[Any]


@dataclass(frozen=True, kw_only=True)
class StartChildRun:
    spec_path: str
    inputs: dict[str, Any]


Outcome = Succeeded | Skipped | Failed | WaitForHuman | FanOut | StartChildRun


@dataclass(kw_only=True)
class StepReport:
    """An outcome plus what the step used on the way (calls, logs, time)."""

    outcome: Outcome
    calls: tuple[CallReport, ...] = ()  # every request to a provider, failed ones too
    logs: tuple[LogLine, ...] = ()
    duration_ms: float = 0.0

    @cached_property
    def usage(self) -> Usage:
        total = Usage()
        for call in self.calls:
            total += call.usage
        return total
