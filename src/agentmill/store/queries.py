"""Read models: what the CLI, API and tests show of runs, steps and events."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import and_, or_, select

from agentmill.domain.states import RunStatus, StepStatus
from agentmill.errors import NotFound
from agentmill.store.db import Tx
from agentmill.store.models import events, runs, steps, workflows


@dataclass(frozen=True, kw_only=True)
class RunView:
    id: str
    workflow: str
    version_id: str
    status: RunStatus
    root_run_id: str
    parent_run_id: str | None
    inputs: dict[str, Any]
    outputs: dict[str, Any] | None
    error: str | None
    input_tokens: int
    output_tokens: int
    cost: Decimal
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @property
    def duration_s(self) -> float | None:
        if self.started_at is None:
            return None
        end = self.finished_at or datetime.now(self.started_at.tzinfo)
        return (end - self.started_at).total_seconds()


@dataclass(frozen=True, kw_only=True)
class StepView:
    id: str
    run_id: str
    key: str
    kind: str
    status: StepStatus
    attempt: int
    max_attempts: int
    output: Any
    error: str | None
    input_tokens: int
    output_tokens: int
    cost: Decimal
    duration_ms: float | None
    child_run_id: str | None
    started_at: datetime | None
    finished_at: datetime | None


def get_run(tx: Tx, run_id: str) -> RunView:
    row = tx.conn.execute(
        select(runs, workflows.c.name.label("workflow"))
        .join(workflows, workflows.c.id == runs.c.workflow_id)
        .where(runs.c.id == run_id)
    ).first()
    if row is None:
        raise NotFound(f"run {run_id!r} not found")
    return RunView(
        id=row.id,
        workflow=row.workflow,
        version_id=row.version_id,
        status=RunStatus(row.status),
        root_run_id=row.root_run_id,
        parent_run_id=row.parent_run_id,
        inputs=row.inputs,
        outputs=row.outputs,
        error=row.error,
        input_tokens=row.input_tokens,
        output_tokens=row.output_tokens,
        cost=row.cost,
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
    )


def list_steps(tx: Tx, run_id: str) -> list[StepView]:
    # Creation order; map items created together sort by their index.
    order = (steps.c.created_at, steps.c.map_index.nulls_first(), steps.c.id)
    rows = tx.conn.execute(select(steps).where(steps.c.run_id == run_id).order_by(*order))
    return [
        StepView(
            id=r.id,
            run_id=r.run_id,
            key=r.step_key,
            kind=r.kind,
            status=StepStatus(r.status),
            attempt=r.attempt,
            max_attempts=r.max_attempts,
            output=r.output,
            error=r.error,
            input_tokens=r.input_tokens,
            output_tokens=r.output_tokens,
            cost=r.cost,
            duration_ms=r.duration_ms,
            child_run_id=r.child_run_id,
            started_at=r.started_at,
            finished_at=r.finished_at,
        )
        for r in rows
    ]


def list_events(
    tx: Tx,
    *,
    run_id: str | None = None,
    root_run_id: str | None = None,
    after: int = 0,
    limit: int = 1000,
) -> list[dict[str, Any]]:
    query = select(events).where(events.c.id > after).order_by(events.c.id).limit(limit)
    if run_id is not None:
        query = query.where(events.c.run_id == run_id)
    if root_run_id is not None:
        # A run and its sub-runs; written so each half can use its own index.
        query = query.where(
            or_(
                events.c.run_id == root_run_id,
                and_(events.c.root_run_id == root_run_id, events.c.root_run_id != events.c.run_id),
            )
        )
    return [dict(row._mapping) for row in tx.conn.execute(query)]


def unfinished_runs(tx: Tx) -> list[str]:
    """Top-level runs that have not ended (to resume after a restart)."""
    query = select(runs.c.id).where(
        runs.c.parent_run_id.is_(None),
        runs.c.status.in_((RunStatus.PENDING, RunStatus.RUNNING, RunStatus.WAITING)),
    )
    return list(tx.conn.scalars(query))
