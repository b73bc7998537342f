"""Dead letters (DESIGN decision 2): steps that failed for good, and the trace of what each
failure ended, which a re-drive reopens (``engine/transitions/redrive.py``).

A dead letter is a step that is ``FAILED`` because of its own error: it ran out of attempts, hit
an error that is not retried, or lost its worker too often. A step that failed only because a
step under it did is not listed; the step under it is:

* a map that fanned out fails when one of its items does (the item is listed);
* a ``workflow`` step that started a sub-run fails when that run does (the sub-run's step is).

Human steps are not listed either: one fails when a person rejects it (``on_reject: fail``),
a decision rather than an error, or when its message does not render, which running it again
would not change.

A dead letter can be re-driven when its failure ended its run and, through the steps that ran
that run, every run above it up to the root (each run records the step whose failure ended it,
``runs.failed_step``). A failure the run went on past (``on_failure: continue``) is listed, since
the step did fail for good, but cannot be re-driven: the steps after it already ran knowing it
failed, and steps that succeeded are never run again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, literal_column, or_, select

from agentmill.domain.states import RunStatus, StepStatus
from agentmill.errors import Conflict, NotFound
from agentmill.store.db import Tx
from agentmill.store.models import runs, steps, workflows
from agentmill.store.queries import cursor_at

# Inline rather than bound, so PostgreSQL's planner matches the partial index ix_steps_failed.
_FAILED: ColumnElement[str] = literal_column(f"'{StepStatus.FAILED.value}'")
_OWN_FAILURE = (
    steps.c.status == _FAILED,
    steps.c.child_count.is_(None),  # not a map that fanned out
    steps.c.child_run_id.is_(None),  # not a step that started a sub-run
    steps.c.kind != "human",
)


@dataclass(frozen=True, kw_only=True)
class DeadLetter:
    step_id: str
    run_id: str
    root_run_id: str
    workflow: str
    workflow_id: str
    step_key: str
    kind: str
    attempts: int
    error: str | None
    failed_at: datetime
    redrivable: bool  # False when the run went on past the failure (on_failure: continue)


@dataclass(frozen=True, kw_only=True)
class DeadLetterPage:
    dead_letters: list[DeadLetter]
    next_cursor: str | None


def list_dead_letters(
    tx: Tx, workspace_id: str, *, cursor: tuple[datetime, str] | None = None, limit: int = 50
) -> DeadLetterPage:
    """A workspace's dead letters, newest first. ``cursor`` is the (failed_at, step id) of the
    last one seen. Steps of deleted runs are gone with them; re-driven steps are no longer
    ``FAILED``."""
    query = (
        select(
            steps.c.id,
            steps.c.run_id,
            steps.c.root_run_id,
            steps.c.step_key,
            steps.c.kind,
            steps.c.attempt,
            steps.c.error,
            steps.c.finished_at,
            runs.c.workflow_id,
            workflows.c.name.label("workflow"),
        )
        .join(runs, runs.c.id == steps.c.run_id)
        .join(workflows, workflows.c.id == runs.c.workflow_id)
        .where(runs.c.workspace_id == workspace_id, *_OWN_FAILURE)
    )
    if cursor is not None:
        at, last_id = cursor
        query = query.where(
            or_(
                steps.c.finished_at < at,
                and_(steps.c.finished_at == at, steps.c.id < last_id),
            )
        )
    rows = tx.conn.execute(
        query.order_by(steps.c.finished_at.desc(), steps.c.id.desc()).limit(limit + 1)
    ).all()
    letters = [
        DeadLetter(
            step_id=row.id,
            run_id=row.run_id,
            root_run_id=row.root_run_id,
            workflow=row.workflow,
            workflow_id=row.workflow_id,
            step_key=row.step_key,
            kind=row.kind,
            attempts=row.attempt,
            error=row.error,
            failed_at=row.finished_at,
            redrivable=_redrivable(tx, row.id),
        )
        for row in rows[:limit]
    ]
    last = letters[-1] if len(rows) > limit and letters else None
    return DeadLetterPage(
        dead_letters=letters,
        next_cursor=cursor_at(last.failed_at, last.step_id) if last else None,
    )


def step_workspace(tx: Tx, step_id: str) -> str | None:
    value = tx.conn.scalar(
        select(runs.c.workspace_id)
        .join(steps, steps.c.run_id == runs.c.id)
        .where(steps.c.id == step_id)
    )
    return None if value is None else str(value)


@dataclass(frozen=True, kw_only=True)
class FailureLink:
    """One run a failure ended: ``step_id`` is the run's step whose failure ended it, and
    ``item_id`` the item of that map whose failure failed it, if it came from one."""

    run_id: str
    step_id: str
    item_id: str | None

    @property
    def origin(self) -> str:
        """Where the failure entered this run: the dead letter, or the step running a sub-run
        below (either may be a map item)."""
        return self.item_id or self.step_id


def failure_chain(tx: Tx, step_id: str) -> list[FailureLink]:
    """The runs the dead letter ``step_id`` ended, its own first, then up to the root run.

    Raises NotFound if there is no such step, and Conflict, saying why, if it cannot be
    re-driven (not failed, not a dead letter, or a run went on past its failure)."""
    row = _step(tx, step_id)
    if row is None:
        raise NotFound(f"step {step_id!r} not found")
    _check_dead_letter(row)
    dead_key = row.step_key
    links: list[FailureLink] = []
    while True:
        item = None
        if row.parent_step_id is not None:  # a map item: its failure failed its map
            item = row
            row = _step(tx, row.parent_step_id)
            assert row is not None
        run = tx.conn.execute(
            select(runs.c.status, runs.c.failed_step, runs.c.parent_step_id).where(
                runs.c.id == row.run_id
            )
        ).one()
        ended = run.status in (RunStatus.FAILED, RunStatus.BUDGET_EXCEEDED)
        if row.status != StepStatus.FAILED or not ended or run.failed_step != row.step_key:
            raise Conflict(
                f"step {dead_key!r} cannot be re-driven: run {row.run_id} went on without step "
                f"{row.step_key!r} (on_failure: continue), and the steps after it are not run again"
            )
        links.append(
            FailureLink(run_id=row.run_id, step_id=row.id, item_id=item.id if item else None)
        )
        if run.parent_step_id is None:
            return links
        row = _step(tx, run.parent_step_id)
        assert row is not None  # the step that ran this sub-run
        assert row.child_run_id == links[-1].run_id


def _redrivable(tx: Tx, step_id: str) -> bool:
    try:
        failure_chain(tx, step_id)
    except Conflict:
        return False
    return True


def _step(tx: Tx, step_id: str) -> Any:
    return tx.conn.execute(
        select(
            steps.c.id,
            steps.c.run_id,
            steps.c.step_key,
            steps.c.kind,
            steps.c.status,
            steps.c.parent_step_id,
            steps.c.child_count,
            steps.c.child_run_id,
        ).where(steps.c.id == step_id)
    ).first()


def _check_dead_letter(row: Any) -> None:
    """The Python side of ``_OWN_FAILURE``, with what to do instead."""
    key = row.step_key
    if row.status != StepStatus.FAILED:
        raise Conflict(
            f"step {key!r} is {row.status}, not FAILED: only a step that failed for good can be "
            "re-driven"
        )
    if row.child_count is not None:
        raise Conflict(
            f"map step {key!r} failed because one of its items did: re-drive the failed item"
        )
    if row.child_run_id is not None:
        raise Conflict(
            f"step {key!r} failed because its sub-workflow run {row.child_run_id} did: re-drive "
            "the failed step of that run"
        )
    if row.kind == "human":
        raise Conflict(f"human step {key!r} is not a dead letter: start a new run to ask again")
