"""Re-driving a dead letter: the step runs again and its run continues from it (decision 2).

A failure that ends a run leaves a precise trace (``store/dead_letters.py``), and a re-drive
undoes exactly that, in one transaction:

* the dead letter: ``FAILED`` → ``QUEUED`` with a fresh set of attempts. The attempt number is
  the lease's fencing token, so it keeps counting up: every attempt so far counts as spent
  (``failures = attempt``) and the step gets its ``retry.max_attempts`` again on top. Retries
  after a re-drive keep backing off from where they were (up to ``max_backoff``);
* the map it is an item of, and the steps that ran the sub-runs on the way up: ``FAILED`` →
  ``RUNNING``. Such a step gave back the usage the sub-run had reported when it ended (it reports
  all of it again when it finishes);
* each run the failure ended, up to the root: back to ``RUNNING``, its error, end and
  ``failed_step`` cleared; a deadline moves on by the time the run spent ended;
* what those ends cancelled: steps that were open go back to ``QUEUED`` for a new attempt (an
  attempt cut short is given back: it counts neither as a failure nor as a lost lease); maps that
  had fanned out and steps running a sub-run go back to ``RUNNING``, and those sub-runs reopen
  the same way. A failure skips nothing, and steps that had not started yet were never created:
  the DAG creates them as their needs finish, as it would have.

Steps that succeeded are not run again: their rows, outputs and the join counters are as they
were. ``pending_steps`` needs no change either: a failure that ends a run does not count as a
finished step.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import or_, select, update

from agentmill.domain.spec import MapStep
from agentmill.domain.states import RunStatus, StepStatus
from agentmill.engine.transitions._base import (
    RunState,
    TransitionsBase,
    max_attempts_of,
    stored_usage,
)
from agentmill.errors import NotFound
from agentmill.store.db import Tx
from agentmill.store.dead_letters import failure_chain
from agentmill.store.models import runs, steps


class RedriveTransitions(TransitionsBase):
    """Re-driving dead letters."""

    def redrive(self, tx: Tx, step_id: str, *, by: str | None = None) -> str:
        """Queue the dead letter ``step_id`` with a fresh set of attempts and reopen what its
        failure ended (see the module docstring). Returns the id of its root run.

        Raises NotFound for an unknown step and Conflict when it cannot be re-driven (it is not
        FAILED any more, or its run went on past it)."""
        run_id = tx.conn.scalar(select(steps.c.run_id).where(steps.c.id == step_id))
        if run_id is None:
            raise NotFound(f"step {step_id!r} not found")
        own = self._lock_run(tx, run_id)  # first: a second re-drive of the step waits here
        links = failure_chain(tx, step_id)
        # Innermost run first, as a sub-run's end locks them. What each sub-run reported to the
        # step above it is read before anything changes.
        states = [own, *(self._lock_run(tx, link.run_id) for link in links[1:])]
        reported = {state.id: stored_usage(tx, state.id) for state in states[:-1]}
        self._requeue_dead_letter(tx, own, step_id, by)
        for index, (link, state) in enumerate(zip(links, states, strict=True)):
            if index:  # the step that ran the sub-run below
                self._resume_step(tx, state, link.origin, reported[links[index - 1].run_id])
            if link.item_id is not None:  # the map the failed item was part of
                self._resume_step(tx, state, link.step_id)
            self._reopen_run(tx, state, redriven=step_id, by=by)
            self._flush(tx, state)
        self._write_events(tx)
        return own.root_run_id

    def _requeue_dead_letter(self, tx: Tx, state: RunState, step_id: str, by: str | None) -> None:
        row = tx.conn.execute(
            select(
                steps.c.step_key,
                steps.c.spec_id,
                steps.c.parent_step_id,
                steps.c.attempt,
                steps.c.error,
            ).where(steps.c.id == step_id)
        ).one()
        spec = state.compiled.steps[row.spec_id]
        if isinstance(spec, MapStep) and row.parent_step_id is not None:  # an item of the map
            fresh = max_attempts_of(spec.step.retry)
        else:
            fresh = max_attempts_of(spec.retry)
        tx.conn.execute(
            update(steps)
            .where(steps.c.id == step_id)
            .values(
                status=StepStatus.QUEUED,
                failures=row.attempt,
                max_attempts=row.attempt + fresh,
                error=None,
                available_at=tx.now,
                finished_at=None,
                lease_owner=None,
                lease_expires_at=None,
            )
        )
        self._event(
            tx,
            state,
            "step.redriven",
            row.step_key,
            row.attempt,
            by=by,
            error=row.error,
            attempts=fresh,
            next_attempt=row.attempt + 1,
        )

    def _resume_step(
        self, tx: Tx, state: RunState, step_id: str, give_back: dict[str, Any] | None = None
    ) -> None:
        """A map or a sub-run's step that failed with what was under it: running again."""
        values: dict[str, Any] = {"status": StepStatus.RUNNING, "error": None, "finished_at": None}
        if give_back is not None:
            values.update(
                input_tokens=steps.c.input_tokens - give_back["input_tokens"],
                output_tokens=steps.c.output_tokens - give_back["output_tokens"],
                cost=steps.c.cost - give_back["cost"],
            )
            state.input_tokens -= give_back["input_tokens"]
            state.output_tokens -= give_back["output_tokens"]
            state.cost -= give_back["cost"]
        row = tx.conn.execute(
            update(steps)
            .where(steps.c.id == step_id)
            .values(**values)
            .returning(steps.c.step_key, steps.c.attempt)
        ).one()
        self._event(tx, state, "step.resumed", row.step_key, row.attempt)

    def _reopen_run(self, tx: Tx, state: RunState, **data: Any) -> None:
        """A run that ended goes back to RUNNING with what its end cancelled."""
        row = tx.conn.execute(
            select(runs.c.started_at, runs.c.finished_at).where(runs.c.id == state.id)
        ).one()
        state.changes.update(error=None, finished_at=None, failed_step=None)
        if state.deadline_at is not None and row.finished_at is not None:
            # The time a run spent ended does not count against its timeout.
            state.deadline_at += tx.now - row.finished_at
            state.changes["deadline_at"] = state.deadline_at
        self._set_status(tx, state, RunStatus.RUNNING, **data)  # run.resumed
        if row.started_at is None:
            state.changes["started_at"] = tx.now
        self._restore_cancelled(tx, state, data)

    def _restore_cancelled(self, tx: Tx, state: RunState, data: dict[str, Any]) -> None:
        """Put back the steps the run's end cancelled. Only a run's end and a failed map item
        cancel steps, so every cancelled step is one of them, except the items of a map that
        failed and was continued past (their map stays FAILED)."""
        parent = steps.alias("map_step")
        rows = tx.conn.execute(
            select(
                steps.c.id,
                steps.c.step_key,
                steps.c.attempt,
                steps.c.child_count,
                steps.c.child_run_id,
            )
            .select_from(steps.outerjoin(parent, parent.c.id == steps.c.parent_step_id))
            .where(
                steps.c.run_id == state.id,
                steps.c.status == StepStatus.CANCELLED,
                or_(steps.c.parent_step_id.is_(None), parent.c.status != StepStatus.FAILED),
            )
            .order_by(steps.c.created_at, steps.c.map_index.nulls_first(), steps.c.id)
        ).all()
        if not rows:
            return
        running = [r for r in rows if r.child_count is not None or r.child_run_id is not None]
        queued = [r for r in rows if r.child_count is None and r.child_run_id is None]
        if running:
            tx.conn.execute(
                update(steps)
                .where(steps.c.id.in_([r.id for r in running]))
                .values(status=StepStatus.RUNNING, finished_at=None)
            )
        if queued:
            tx.conn.execute(
                update(steps)
                .where(steps.c.id.in_([r.id for r in queued]))
                .values(
                    status=StepStatus.QUEUED,
                    # An attempt cut short is given back: not a failure, not a lost lease.
                    max_attempts=steps.c.max_attempts + steps.c.attempt - steps.c.failures,
                    failures=steps.c.attempt,
                    available_at=tx.now,
                    finished_at=None,
                    lease_owner=None,
                    lease_expires_at=None,
                )
            )
        for r in rows:
            resumed = r.child_count is not None or r.child_run_id is not None
            kind = "step.resumed" if resumed else "step.queued"
            self._event(tx, state, kind, r.step_key, r.attempt, reason="re-driven")
        for r in running:
            if r.child_run_id is None:
                continue
            child = self._lock_run(tx, r.child_run_id)
            if child.status == RunStatus.CANCELLED:
                self._reopen_run(tx, child, **data)
                self._flush(tx, child)
