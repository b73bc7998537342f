"""The SQL about runs: the engine's hot-path statements (built once, run with parameters) and
the read models the CLI, API and tests show."""

from __future__ import annotations

import base64
import functools
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import String, and_, any_, bindparam, or_, select, update
from sqlalchemy.dialects import postgresql

from agentmill.domain.states import RunStatus
from agentmill.errors import NotFound
from agentmill.store.db import Tx
from agentmill.store.models import runs, workflows
from agentmill.store.prepared import Prepared

_RUN_COLUMNS = (
    runs.c.root_run_id,
    runs.c.parent_run_id,
    runs.c.parent_step_id,
    runs.c.version_id,
    runs.c.spec_path,
    runs.c.status,
    runs.c.pending_steps,
    runs.c.inputs,
    runs.c.workspace_id,
    runs.c.started_by,
    runs.c.api_key_id,
)
LOAD_RUN = Prepared(select(*_RUN_COLUMNS).where(runs.c.id == bindparam("b_id")))
# Many runs at once (a claim's): what LOAD_RUN reads, with the id and the deadline.
LOAD_RUNS = select(runs.c.id, runs.c.deadline_at, *_RUN_COLUMNS)
# What changes during a run (a re-drive moves the deadline); the rest of the row is immutable
# and cached per process.
_RUN_STATUS = select(runs.c.status, runs.c.pending_steps, runs.c.deadline_at).where(
    runs.c.id == bindparam("b_id")
)
RUN_STATUS = Prepared(_RUN_STATUS)
LOCK_RUN_STATUS = Prepared(_RUN_STATUS.with_for_update())
# PostgreSQL: many runs locked in one statement, in id order (byte order, as Python sorts),
# but for those another transaction holds: skipped, not waited for. FOR NO KEY UPDATE (all a
# result changes): a transaction inserting a row that refers to the run (a step, a join)
# holds a key-share lock on it, which FOR UPDATE would count as held.
LOCK_FREE_RUNS_STATUS = Prepared(
    select(runs.c.id, runs.c.status, runs.c.pending_steps, runs.c.deadline_at)
    .where(runs.c.id == any_(bindparam("b_ids", type_=postgresql.ARRAY(String))))
    .order_by(runs.c.id.collate("C"))
    .with_for_update(skip_locked=True, key_share=True)
)

# A run's progress added up over a group commit: relative, applied once per run before COMMIT.
RUN_ADD_PROGRESS = Prepared(
    update(runs)
    .where(runs.c.id == bindparam("b_id"))
    .values(
        pending_steps=runs.c.pending_steps + bindparam("b_pending"),
        input_tokens=runs.c.input_tokens + bindparam("b_input_tokens"),
        output_tokens=runs.c.output_tokens + bindparam("b_output_tokens"),
        cost=runs.c.cost + bindparam("b_cost", type_=runs.c.cost.type),
    )
)


@functools.cache
def update_run(columns: tuple[str, ...], *, add_usage: bool) -> Prepared:
    """``UPDATE runs`` setting ``columns`` (parameters ``v_<column>``, key ``b_id``) and, with
    ``add_usage``, adding ``b_input_tokens``, ``b_output_tokens`` and ``b_cost`` to the run's
    totals. One statement per combination, built once: a run's status changes take a handful."""
    values: dict[str, Any] = {
        name: bindparam(f"v_{name}", type_=runs.c[name].type) for name in columns
    }
    if add_usage:
        values["input_tokens"] = runs.c.input_tokens + bindparam("b_input_tokens")
        values["output_tokens"] = runs.c.output_tokens + bindparam("b_output_tokens")
        values["cost"] = runs.c.cost + bindparam("b_cost", type_=runs.c.cost.type)
    return Prepared(update(runs).where(runs.c.id == bindparam("b_id")).values(values))


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
