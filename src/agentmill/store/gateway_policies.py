"""The gateway's view of the database: each workspace's markup, budgets and rate limits (kept
for a few seconds per process), what a budget has spent, and a batched writer of usage records.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from decimal import Decimal

import structlog
from sqlalchemy import func, select

from agentmill.domain.budgets import (
    Budget,
    BudgetLine,
    BudgetPeriod,
    BudgetScope,
    period_bounds,
)
from agentmill.domain.policy import CallerLimit, WorkspacePolicy
from agentmill.domain.providers import ProviderConfig
from agentmill.domain.usage import CallReport
from agentmill.store import statements as sql
from agentmill.store.db import Database, Tx
from agentmill.store.models import llm_calls, workspaces
from agentmill.store.repositories import spending
from agentmill.store.repositories.usage import usage_row

log = structlog.get_logger("agentmill.gateway")

# Loads a workspace's own providers (decrypted); None until workspaces can configure them.
ProviderLoader = Callable[[Database, str], Awaitable[Mapping[str, ProviderConfig]]]


class DatabasePolicies:
    """A :class:`agentmill.gateway.policy.PolicySource` reading the database.

    Policies are cached for ``ttl`` seconds per process: a changed budget or limit applies
    everywhere within that time, and a call costs no query for them. ``forget`` drops one at
    once (the process that made the change calls it). Calls that find no fresh policy share
    one load: a worker that starts hundreds of calls at once reads a workspace once, not once
    per call.
    """

    def __init__(
        self, db: Database, *, ttl: float = 5.0, providers: ProviderLoader | None = None
    ) -> None:
        self.db = db
        self.ttl = ttl
        self.providers = providers
        self._cache: dict[str, tuple[float, WorkspacePolicy]] = {}
        self._loading: dict[str, asyncio.Task[WorkspacePolicy]] = {}

    def forget(self, workspace_id: str) -> None:
        self._cache.pop(workspace_id, None)
        self._loading.pop(workspace_id, None)  # a load under way may have read the old rows

    async def policy(self, workspace_id: str) -> WorkspacePolicy:
        cached = self._cache.get(workspace_id)
        if cached is not None and time.monotonic() - cached[0] < self.ttl:
            return cached[1]
        loading = self._loading.get(workspace_id)
        if loading is None:
            loading = self._loading[workspace_id] = asyncio.ensure_future(self._fetch(workspace_id))
        # Shielded: one caller cancelled (its step timed out) does not cancel the others' load.
        return await asyncio.shield(loading)

    async def _fetch(self, workspace_id: str) -> WorkspacePolicy:
        me = asyncio.current_task()
        try:
            policy = await self.db.read(lambda tx: _load(tx, workspace_id))
            if self.providers is not None:
                own = await self.providers(self.db, workspace_id)
                policy = WorkspacePolicy(
                    markup=policy.markup,
                    budgets=policy.budgets,
                    limits=policy.limits,
                    providers=own,
                )
            if self._loading.get(workspace_id) is me:  # not forgotten while it read
                self._cache[workspace_id] = (time.monotonic(), policy)
            return policy
        finally:
            if self._loading.get(workspace_id) is me:
                del self._loading[workspace_id]

    async def spent(self, line: BudgetLine) -> Decimal:
        return await self.db.read(lambda tx: spent(tx, line))


def _load(tx: Tx, workspace_id: str) -> WorkspacePolicy:
    # Runs of `agentmill run` belong to the "local" workspace, which has no row: no markup.
    markup = tx.conn.scalar(select(workspaces.c.markup).where(workspaces.c.id == workspace_id))
    return WorkspacePolicy(
        markup=markup or Decimal(0),
        budgets=tuple(as_budget(r) for r in spending.list_budgets(tx, workspace_id)),
        limits=tuple(
            CallerLimit(
                scope=r.scope,  # type: ignore[arg-type]  # checked when it was stored
                subject_id=r.subject_id,
                requests_per_minute=r.requests_per_minute,
                tokens_per_minute=r.tokens_per_minute,
            )
            for r in spending.list_rate_limits(tx, workspace_id)
        ),
    )


def as_budget(record: spending.BudgetRecord) -> Budget:
    """A stored budget as the gateway holds calls to it."""
    return Budget(
        id=record.id,
        workspace_id=record.workspace_id,
        scope=BudgetScope(record.scope),
        subject_id=record.subject_id,
        period=BudgetPeriod(record.period),
        limit=record.limit_usd,
        soft_ratio=record.soft_ratio,
    )


def spent_this_period(tx: Tx, budget: Budget, subject: str) -> Decimal:
    """What ``subject`` was charged under ``budget`` in the current period."""
    start, end = period_bounds(budget.period, datetime.now(UTC))
    return spent(tx, BudgetLine(budget=budget, subject=subject, period_start=start, period_end=end))


def spent(tx: Tx, line: BudgetLine) -> Decimal:
    """What the line's subject was charged in the line's period, from the usage records."""
    budget = line.budget
    subject = {
        BudgetScope.WORKSPACE: llm_calls.c.workspace_id,
        BudgetScope.API_KEY: llm_calls.c.api_key_id,
        BudgetScope.USER: llm_calls.c.user_id,
        BudgetScope.RUN: llm_calls.c.run_id,
    }[budget.scope]
    query = select(func.coalesce(func.sum(llm_calls.c.price), 0)).where(
        llm_calls.c.workspace_id == budget.workspace_id, subject == line.subject
    )
    if line.period_start is not None:
        query = query.where(llm_calls.c.created_at >= line.period_start)
    if line.period_end is not None:
        query = query.where(llm_calls.c.created_at < line.period_end)
    total = tx.conn.scalar(query)
    return total if isinstance(total, Decimal) else Decimal(total or 0)


class UsageRecorder:
    """A :class:`agentmill.gateway.policy.UsageSink` that writes usage records in batches, off
    the calls' path: a call only appends to a list; a background task inserts what gathered
    every ``interval`` seconds (or at once past ``batch`` records) in one transaction."""

    def __init__(self, db: Database, *, interval: float = 0.2, batch: int = 500) -> None:
        self.db = db
        self.interval = interval
        self.batch = batch
        self._pending: list[dict[str, object]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def record(self, report: CallReport) -> None:
        ctx = report.context
        self._pending.append(
            usage_row(report, ctx.run_id, ctx.step_id, ctx.attempt if ctx.run_id else None, _now())
        )
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        if len(self._pending) >= self.batch:
            self._wake.set()

    async def _run(self) -> None:
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
            self._wake.clear()
            await self.flush()

    async def flush(self) -> None:
        """Write every record taken so far."""
        rows, self._pending = self._pending, []
        if not rows:
            return
        try:
            await self.db.write(lambda tx: sql.INSERT_LLM_CALLS.run_many(tx.conn, rows))
        except Exception:
            # Keep them for the next try rather than lose what callers were charged for.
            log.exception("could not write usage records; will retry", records=len(rows))
            self._pending[:0] = rows

    async def aclose(self) -> None:
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
        await self.flush()


def _now() -> datetime:
    return datetime.now(UTC)
