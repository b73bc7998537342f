"""What the gateway needs to know about a workspace, and where its usage goes.

The gateway does not read the database itself (it sits beside the store, not above it); the
process that builds it passes a :class:`PolicySource` and a :class:`UsageSink` that do.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal, Protocol

from agentmill.gateway.budgets import Budget, BudgetLine
from agentmill.gateway.config import ProviderConfig
from agentmill.gateway.types import CallReport

CallerScope = Literal["workspace", "user", "api_key"]


@dataclass(frozen=True, kw_only=True)
class CallerLimit:
    """A workspace's rate limit: for the whole workspace, or for one (``subject_id``) or each
    (``None``) user or API key in it."""

    scope: CallerScope
    subject_id: str | None = None
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None


@dataclass(frozen=True, kw_only=True)
class WorkspacePolicy:
    markup: Decimal = Decimal(0)  # price = cost × (1 + markup)
    budgets: tuple[Budget, ...] = ()
    limits: tuple[CallerLimit, ...] = ()
    providers: Mapping[str, ProviderConfig] = field(default_factory=dict)


NO_POLICY = WorkspacePolicy()


class PolicySource(Protocol):
    async def policy(self, workspace_id: str) -> WorkspacePolicy:
        """The workspace's markup, budgets, limits and own providers (may be cached briefly)."""
        ...

    async def spent(self, line: BudgetLine) -> Decimal:
        """What the budget line's subject has spent (in price) in the line's period."""
        ...


class UsageSink(Protocol):
    def record(self, report: CallReport) -> None:
        """Take a call's record; must not block (writes are batched off the call's path)."""
        ...

    async def aclose(self) -> None:
        """Write what is still pending."""
        ...


class StaticPolicies:
    """Policies held in memory (tests, and ``agentmill run`` without a server)."""

    def __init__(self, policies: Mapping[str, WorkspacePolicy] | None = None) -> None:
        self.policies = dict(policies or {})
        self.spending: dict[str, Decimal] = {}

    async def policy(self, workspace_id: str) -> WorkspacePolicy:
        return self.policies.get(workspace_id, NO_POLICY)

    async def spent(self, line: BudgetLine) -> Decimal:
        return self.spending.get(line.key, Decimal(0))
