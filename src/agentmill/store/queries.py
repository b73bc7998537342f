"""Read models: what the CLI, API and tests show of runs, steps and events."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import and_, bindparam, func, or_, select

from agentmill.domain.states import RunStatus, StepStatus
from agentmill.errors import NotFound
from agentmill.store.db import Tx
from agentmill.store.models import events, runs, steps, workflows
from agentmill.store.prepared import Prepared


@dataclass(frozen=True, kw_only=True)
class RunView:
    id: str
    workspace_id: str
    workflow: str
    workflow_id: str
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


# Prepared: reading one run is the API's most frequent request.
_GET_RUN = Prepared(
    select(runs, workflows.c.name.label("workflow"))
    .join(workflows, workflows.c.id == runs.c.workflow_id)
    .where(runs.c.id == bindparam("run_id"))
)


def find_run(tx: Tx, run_id: str) -> RunView | None:
    rows = _GET_RUN.rows(tx.conn, {"run_id": run_id})
    return _run_view(rows[0]) if rows else None


def get_run(tx: Tx, run_id: str) -> RunView:
    run = find_run(tx, run_id)
    if run is None:
        raise NotFound(f"run {run_id!r} not found")
    return run


def _run_view(row: Any) -> RunView:
    return RunView(
        id=row.id,
        workspace_id=row.workspace_id,
        workflow=row.workflow,
        workflow_id=row.workflow_id,
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


def run_workspace(tx: Tx, run_id: str) -> str | None:
    value = tx.conn.scalar(select(runs.c.workspace_id).where(runs.c.id == run_id))
    return None if value is None else str(value)


@dataclass(frozen=True, kw_only=True)
class RunPage:
    runs: list[RunView]
    next_cursor: str | None


def list_runs(
    tx: Tx,
    workspace_id: str,
    *,
    status: str | None = None,
    workflow_id: str | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    cursor: tuple[datetime, str] | None = None,
    limit: int = 50,
) -> RunPage:
    """Top-level runs, newest first. ``cursor`` is the (created_at, id) of the last run seen."""
    query = (
        select(runs, workflows.c.name.label("workflow"))
        .join(workflows, workflows.c.id == runs.c.workflow_id)
        .where(runs.c.workspace_id == workspace_id, runs.c.parent_run_id.is_(None))
    )
    if status is not None:
        query = query.where(runs.c.status == status)
    if workflow_id is not None:
        query = query.where(runs.c.workflow_id == workflow_id)
    if created_after is not None:
        query = query.where(runs.c.created_at >= created_after)
    if created_before is not None:
        query = query.where(runs.c.created_at < created_before)
    if cursor is not None:
        at, last_id = cursor
        query = query.where(
            or_(runs.c.created_at < at, and_(runs.c.created_at == at, runs.c.id < last_id))
        )
    rows = tx.conn.execute(
        query.order_by(runs.c.created_at.desc(), runs.c.id.desc()).limit(limit + 1)
    ).all()
    views = [_run_view(row) for row in rows[:limit]]
    more = len(rows) > limit
    return RunPage(runs=views, next_cursor=encode_cursor(views[-1]) if more and views else None)


def encode_cursor(run: RunView) -> str:
    return cursor_at(run.created_at, run.id)


def cursor_at(at: datetime, id_: str) -> str:
    """A page position: the time and id of the last row seen (read back by decode_cursor)."""
    return base64.urlsafe_b64encode(f"{at.isoformat()}|{id_}".encode()).decode()


def decode_cursor(text: str) -> tuple[datetime, str]:
    """Raises ValueError for a cursor this server did not make."""
    raw = base64.urlsafe_b64decode(text.encode()).decode()
    at, _, run_id = raw.partition("|")
    if not run_id:
        raise ValueError("malformed cursor")
    return datetime.fromisoformat(at), run_id


def run_status_events(
    tx: Tx, workspace_id: str, after: int, limit: int = 200
) -> list[dict[str, Any]]:
    """``run.*`` events of a workspace's top-level runs after event ``after``."""
    query = (
        select(events, workflows.c.name.label("workflow"))
        .join(runs, runs.c.id == events.c.run_id)
        .join(workflows, workflows.c.id == runs.c.workflow_id)
        .where(
            events.c.id > after,
            runs.c.workspace_id == workspace_id,
            runs.c.parent_run_id.is_(None),
            events.c.type.like("run.%"),
        )
        .order_by(events.c.id)
        .limit(limit)
    )
    return [dict(row._mapping) for row in tx.conn.execute(query)]


def last_event_id(tx: Tx) -> int:
    return int(tx.conn.scalar(select(func.max(events.c.id))) or 0)


@dataclass(frozen=True, kw_only=True)
class QueueStats:
    """What the step queue holds right now (for /health and autoscaling)."""

    ready: int  # may start now
    scheduled: int  # retries and delays that become ready later
    running: int  # held by a worker's lease
    oldest_ready_age_s: float  # how long the longest-waiting ready step has waited (0 if none)


def queue_stats(tx: Tx) -> QueueStats:
    waiting = steps.c.status.in_((StepStatus.QUEUED, StepStatus.RETRYING))
    ready = tx.conn.execute(
        select(func.count(), func.min(steps.c.available_at)).where(
            waiting, steps.c.available_at <= tx.now
        )
    ).one()
    scheduled = tx.conn.scalar(select(func.count()).where(waiting, steps.c.available_at > tx.now))
    running = tx.conn.scalar(
        select(func.count()).where(
            steps.c.status == StepStatus.RUNNING, steps.c.lease_expires_at.is_not(None)
        )
    )
    oldest = ready[1]
    if oldest is not None and not isinstance(oldest, datetime):  # an aggregate skips the type
        oldest = datetime.fromtimestamp(oldest, UTC)
    return QueueStats(
        ready=int(ready[0]),
        scheduled=int(scheduled or 0),
        running=int(running or 0),
        oldest_ready_age_s=max(0.0, (tx.now - oldest).total_seconds()) if oldest else 0.0,
    )
