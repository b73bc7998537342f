"""What a workspace's model calls used and cost over a period (the basis of billing)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Select, case, func, select

from agentmill.store.db import Tx
from agentmill.store.models import llm_calls, runs, workflows


@dataclass(frozen=True, kw_only=True)
class UsageLine:
    """Totals for one group (a model, a workflow) or for the whole period."""

    key: str
    calls: int
    failed_calls: int
    input_tokens: int
    output_tokens: int
    cost: Decimal


@dataclass(frozen=True, kw_only=True)
class UsageReport:
    since: datetime
    until: datetime
    total: UsageLine
    by_model: list[UsageLine]
    by_workflow: list[UsageLine]


def usage_report(tx: Tx, workspace_id: str, *, since: datetime, until: datetime) -> UsageReport:
    """Calls made in ``[since, until)`` by the workspace's runs (sub-runs included)."""
    totals = (
        func.count(),
        func.coalesce(func.sum(case((llm_calls.c.error.is_not(None), 1), else_=0)), 0),
        func.coalesce(func.sum(llm_calls.c.input_tokens), 0),
        func.coalesce(func.sum(llm_calls.c.output_tokens), 0),
        func.coalesce(func.sum(llm_calls.c.cost), 0).label("cost"),
    )
    base = (
        select()
        .select_from(llm_calls.join(runs, runs.c.id == llm_calls.c.run_id))
        .where(
            runs.c.workspace_id == workspace_id,
            llm_calls.c.created_at >= since,
            llm_calls.c.created_at < until,
        )
    )

    def lines(query: Select[Any]) -> list[UsageLine]:
        return [
            UsageLine(
                key=row[0],
                calls=int(row[1]),
                failed_calls=int(row[2]),
                input_tokens=int(row[3]),
                output_tokens=int(row[4]),
                cost=row[5],
            )
            for row in tx.conn.execute(query)
        ]

    model = llm_calls.c.model  # provider/model
    by_model = lines(base.add_columns(model, *totals).group_by(model).order_by(model))
    by_workflow = lines(
        base.join(workflows, workflows.c.id == runs.c.workflow_id)
        .add_columns(workflows.c.name, *totals)
        .group_by(workflows.c.name)
        .order_by(workflows.c.name),
    )
    total = UsageLine(
        key="total",
        calls=sum(line.calls for line in by_model),
        failed_calls=sum(line.failed_calls for line in by_model),
        input_tokens=sum(line.input_tokens for line in by_model),
        output_tokens=sum(line.output_tokens for line in by_model),
        cost=sum((line.cost for line in by_model), Decimal(0)),
    )
    return UsageReport(
        since=since, until=until, total=total, by_model=by_model, by_workflow=by_workflow
    )
