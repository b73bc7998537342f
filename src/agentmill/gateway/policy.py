"""What the gateway needs to know about a workspace, and where its usage goes.

The gateway does not read the database itself (it sits beside the store, not above it); the
process that builds it passes a :class:`PolicySource` and a :class:`UsageSink` that do.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Protocol

from agentmill.domain.budgets import BudgetLine
from agentmill.domain.policy import NO_POLICY as NO_POLICY
from agentmill.domain.policy import CallerLimit as CallerLimit
from agentmill.domain.policy import CallerScope as CallerScope
from agentmill.domain.policy import WorkspacePolicy as WorkspacePolicy
from agentmill.domain.usage import CallReport


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
