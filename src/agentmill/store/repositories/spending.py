"""A workspace's spending controls: budgets, rate limits and its price markup."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import delete, insert, select, update

from agentmill.errors import NotFound
from agentmill.ids import new_id
from agentmill.store.db import Tx
from agentmill.store.models import api_keys, budgets, memberships, rate_limits, runs, workspaces


@dataclass(frozen=True, kw_only=True)
class BudgetRecord:
    id: str
    workspace_id: str
    scope: str
    subject_id: str | None
    period: str
    limit_usd: Decimal
    soft_ratio: Decimal
    created_at: datetime


@dataclass(frozen=True, kw_only=True)
class RateLimitRecord:
    id: str
    workspace_id: str
    scope: str
    subject_id: str | None
    requests_per_minute: int | None
    tokens_per_minute: int | None
    created_at: datetime


def subject_exists(tx: Tx, workspace_id: str, scope: str, subject_id: str) -> bool:
    """Is ``subject_id`` an API key, member or run of this workspace (per ``scope``)?"""
    if scope == "api_key":
        query = select(api_keys.c.id).where(
            api_keys.c.id == subject_id, api_keys.c.workspace_id == workspace_id
        )
    elif scope == "user":
        query = select(memberships.c.user_id).where(
            memberships.c.user_id == subject_id, memberships.c.workspace_id == workspace_id
        )
    elif scope == "run":
        query = select(runs.c.id).where(
            runs.c.id == subject_id, runs.c.workspace_id == workspace_id
        )
    else:
        return False
    return tx.conn.execute(query).first() is not None


def create_budget(
    tx: Tx,
    workspace_id: str,
    *,
    scope: str,
    subject_id: str | None,
    period: str,
    limit_usd: Decimal,
    soft_ratio: Decimal,
) -> BudgetRecord:
    record = BudgetRecord(
        id=new_id("bud"),
        workspace_id=workspace_id,
        scope=scope,
        subject_id=subject_id,
        period=period,
        limit_usd=limit_usd,
        soft_ratio=soft_ratio,
        created_at=tx.now,
    )
    tx.conn.execute(insert(budgets).values(**record.__dict__))
    return record


def list_budgets(tx: Tx, workspace_id: str) -> list[BudgetRecord]:
    rows = tx.conn.execute(
        select(budgets).where(budgets.c.workspace_id == workspace_id).order_by(budgets.c.id)
    )
    return [BudgetRecord(**row._asdict()) for row in rows]


def delete_budget(tx: Tx, workspace_id: str, budget_id: str) -> None:
    deleted = tx.conn.execute(
        delete(budgets).where(budgets.c.id == budget_id, budgets.c.workspace_id == workspace_id)
    )
    if deleted.rowcount == 0:
        raise NotFound(f"budget {budget_id!r} not found")


def create_rate_limit(
    tx: Tx,
    workspace_id: str,
    *,
    scope: str,
    subject_id: str | None,
    requests_per_minute: int | None,
    tokens_per_minute: int | None,
) -> RateLimitRecord:
    record = RateLimitRecord(
        id=new_id("rl"),
        workspace_id=workspace_id,
        scope=scope,
        subject_id=subject_id,
        requests_per_minute=requests_per_minute,
        tokens_per_minute=tokens_per_minute,
        created_at=tx.now,
    )
    tx.conn.execute(insert(rate_limits).values(**record.__dict__))
    return record


def list_rate_limits(tx: Tx, workspace_id: str) -> list[RateLimitRecord]:
    rows = tx.conn.execute(
        select(rate_limits)
        .where(rate_limits.c.workspace_id == workspace_id)
        .order_by(rate_limits.c.id)
    )
    return [RateLimitRecord(**row._asdict()) for row in rows]


def delete_rate_limit(tx: Tx, workspace_id: str, limit_id: str) -> None:
    deleted = tx.conn.execute(
        delete(rate_limits).where(
            rate_limits.c.id == limit_id, rate_limits.c.workspace_id == workspace_id
        )
    )
    if deleted.rowcount == 0:
        raise NotFound(f"rate limit {limit_id!r} not found")


def get_markup(tx: Tx, workspace_id: str) -> Decimal:
    markup = tx.conn.scalar(select(workspaces.c.markup).where(workspaces.c.id == workspace_id))
    if markup is None:
        raise NotFound(f"workspace {workspace_id!r} not found")
    return markup if isinstance(markup, Decimal) else Decimal(markup)


def set_markup(tx: Tx, workspace_id: str, markup: Decimal) -> None:
    tx.conn.execute(update(workspaces).where(workspaces.c.id == workspace_id).values(markup=markup))
