"""Read models: what the CLI, API and tests show of runs, steps and events (those of runs and
steps live in store/repositories/runs.py and steps.py, re-exported here)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, func, or_, select

from agentmill.domain.states import StepStatus
from agentmill.store.db import Tx
from agentmill.store.models import events, runs, steps, workflows
from agentmill.store.repositories.runs import RunPage as RunPage
from agentmill.store.repositories.runs import RunView as RunView
from agentmill.store.repositories.runs import cursor_at as cursor_at
from agentmill.store.repositories.runs import decode_cursor as decode_cursor
from agentmill.store.repositories.runs import encode_cursor as encode_cursor
from agentmill.store.repositories.runs import find_run as find_run
from agentmill.store.repositories.runs import get_run as get_run
from agentmill.store.repositories.runs import list_runs as list_runs
from agentmill.store.repositories.runs import run_workspace as run_workspace
from agentmill.store.repositories.steps import StepView as StepView
from agentmill.store.repositories.steps import list_steps as list_steps


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
