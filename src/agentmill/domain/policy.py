"""A workspace's terms for model calls: its markup, budgets, rate limits and own providers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal

from agentmill.domain.budgets import Budget
from agentmill.domain.providers import ProviderConfig

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
