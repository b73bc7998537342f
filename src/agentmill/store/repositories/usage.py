"""What a workspace's model calls used and cost over a period (the basis of billing)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Select, case, func, select

from agentmill.domain.usage import CallReport
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
    price: Decimal


@dataclass(frozen=True, kw_only=True)
class UsageReport:
    since: datetime
    until: datetime
    total: UsageLine
    by_model: list[UsageLine]
    by_workflow: list[UsageLine]


def usage_report(tx: Tx, workspace_id: str, *, since: datetime, until: datetime) -> UsageReport:
    """Calls made in ``[since, until)`` for the workspace: by its runs (sub-runs included) and
    through its API keys on /v1."""
    totals = (
        func.count(),
        func.coalesce(func.sum(case((llm_calls.c.error.is_not(None), 1), else_=0)), 0),
        func.coalesce(func.sum(llm_calls.c.input_tokens), 0),
        func.coalesce(func.sum(llm_calls.c.output_tokens), 0),
        func.coalesce(func.sum(llm_calls.c.cost), 0).label("cost"),
        func.coalesce(func.sum(llm_calls.c.price), 0).label("price"),
    )
    base = (
        select()
        .select_from(llm_calls)
        .where(
            llm_calls.c.workspace_id == workspace_id,
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
                price=row[6],
            )
            for row in tx.conn.execute(query)
        ]

    model = llm_calls.c.model  # provider/model
    by_model = lines(base.add_columns(model, *totals).group_by(model).order_by(model))
    # Calls through /v1 belong to no run; they are grouped under "(api)".
    workflow = func.coalesce(workflows.c.name, "(api)")
    by_workflow = lines(
        base.outerjoin(runs, runs.c.id == llm_calls.c.run_id)
        .outerjoin(workflows, workflows.c.id == runs.c.workflow_id)
        .add_columns(workflow, *totals)
        .group_by(workflow)
        .order_by(workflow),
    )
    total = UsageLine(
        key="total",
        calls=sum(line.calls for line in by_model),
        failed_calls=sum(line.failed_calls for line in by_model),
        input_tokens=sum(line.input_tokens for line in by_model),
        output_tokens=sum(line.output_tokens for line in by_model),
        cost=sum((line.cost for line in by_model), Decimal(0)),
        price=sum((line.price for line in by_model), Decimal(0)),
    )
    return UsageReport(
        since=since, until=until, total=total, by_model=by_model, by_workflow=by_workflow
    )


def usage_row(
    call: CallReport,
    run_id: str | None,
    step_id: str | None,
    attempt: int | None,
    now: datetime,
) -> dict[str, Any]:
    """The ``llm_calls`` row recording one call."""
    usage, context = call.usage, call.context
    return {
        "workspace_id": context.workspace_id,
        "user_id": context.user_id,
        "api_key_id": context.api_key_id,
        "run_id": run_id,
        "step_id": step_id,
        "agent": context.agent,
        "attempt": attempt,
        "turn": context.turn if run_id is not None else None,
        "provider": call.provider,
        "model": call.model,
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cached_tokens": usage.cached_tokens,
        "cache_write_tokens": usage.cache_write_tokens,
        "reasoning_tokens": usage.reasoning_tokens,
        "cost": usage.cost,
        "price": usage.price,
        "latency_ms": round(call.latency_ms, 3),
        "outcome": call.outcome,
        "status": call.status,
        "error": call.error,
        "created_at": now,
    }
