"""Spending limits and how they apply to a call: a :class:`Budget` as a workspace sets it, a
:class:`BudgetLine` for one subject in one period. The gateway enforces them
(gateway/budgets.py), the store persists them and sums what each line has spent."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import StrEnum

from agentmill.errors import BudgetExceeded


class BudgetScope(StrEnum):
    WORKSPACE = "workspace"
    API_KEY = "api_key"
    USER = "user"
    RUN = "run"


class BudgetPeriod(StrEnum):
    TOTAL = "total"
    MONTHLY = "monthly"
    DAILY = "daily"


@dataclass(frozen=True, kw_only=True)
class Budget:
    """A spending limit in USD (of price, what the workspace is charged).

    ``subject_id`` names the one API key, user or run it limits; ``None`` means *each* of them
    (every API key gets this budget of its own). Workspace budgets have no subject.
    """

    id: str
    workspace_id: str
    scope: BudgetScope
    subject_id: str | None
    period: BudgetPeriod
    limit: Decimal
    soft_ratio: Decimal = Decimal("0.8")


@dataclass(frozen=True, kw_only=True)
class BudgetLine:
    """One budget as it applies to one subject in one period."""

    budget: Budget
    subject: str  # the workspace, key, user or run id
    period_start: datetime | None  # None: since the beginning (a total budget)
    period_end: datetime | None

    @property
    def key(self) -> str:
        start = self.period_start.strftime("%Y%m%d") if self.period_start else "total"
        return f"{self.budget.id}:{self.subject}:{start}"

    @property
    def label(self) -> str:
        period = "" if self.budget.period is BudgetPeriod.TOTAL else f" {self.budget.period}"
        if self.budget.scope is BudgetScope.WORKSPACE:
            return f"workspace{period} budget {self.budget.id!r}"
        return f"{self.budget.scope}{period} budget {self.budget.id!r} for {self.subject!r}"


def period_bounds(period: BudgetPeriod, now: datetime) -> tuple[datetime | None, datetime | None]:
    """The UTC period ``now`` falls in."""
    now = now.astimezone(UTC)
    if period is BudgetPeriod.DAILY:
        start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        return start, start + timedelta(days=1)
    if period is BudgetPeriod.MONTHLY:
        start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        end = (start + timedelta(days=32)).replace(day=1)
        return start, end
    return None, None


def lines_for(
    budgets: Sequence[Budget],
    *,
    workspace_id: str,
    api_key_id: str | None,
    user_id: str | None,
    run_id: str | None,
    now: datetime,
) -> list[BudgetLine]:
    """The budget lines a call by this caller is held to."""
    subjects = {
        BudgetScope.WORKSPACE: workspace_id,
        BudgetScope.API_KEY: api_key_id,
        BudgetScope.USER: user_id,
        BudgetScope.RUN: run_id,
    }
    lines = []
    for budget in budgets:
        subject = subjects[budget.scope]
        if subject is None or (budget.subject_id is not None and budget.subject_id != subject):
            continue
        start, end = period_bounds(budget.period, now)
        lines.append(BudgetLine(budget=budget, subject=subject, period_start=start, period_end=end))
    return lines


def exceeded(
    line: BudgetLine, spent: Decimal, reserved: Decimal, amount: Decimal
) -> BudgetExceeded:
    held = f", {reserved:.6f} held by calls in flight" if reserved else ""
    return BudgetExceeded(
        f"{line.label} exhausted: {spent:.6f} of {line.budget.limit} USD spent{held}, "
        f"call needs up to {amount:.6f}"
    )
