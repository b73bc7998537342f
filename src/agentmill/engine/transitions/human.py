"""Waiting human steps: people's decisions and answers, timeouts, notification records."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Row, func, select, update

from agentmill.domain.forms import InvalidAnswer, check_answer, decision_output
from agentmill.domain.spec import HumanStep
from agentmill.domain.states import RunStatus, StepStatus
from agentmill.engine.transitions._base import NONE, RunState, TransitionsBase
from agentmill.errors import Conflict, NotFound
from agentmill.store.db import Tx
from agentmill.store.models import steps

# A step row with id, step_key, spec_id, attempt and parent_step_id.
_WaitingRow = Row[Any, Any, Any, Any, Any]
_SWEEP_LIMIT = 100  # overdue steps per sweep; the next sweep takes the rest


class HumanTransitions(TransitionsBase):
    """What resolves a waiting human step: a person, or its timeout."""

    def decide(
        self,
        tx: Tx,
        *,
        run_id: str,
        step_key: str,
        approved: bool,
        by: str | None = None,
        comment: str | None = None,
        payload: dict[str, Any] | None = None,
        answer: dict[str, Any] | None = None,
    ) -> None:
        """Approve or reject a waiting human step. A form step is approved with ``answer``
        (or ``payload``), checked against its form: :class:`InvalidAnswer` when it does not
        match or is missing, and then nothing is written."""
        state = self._lock_run(tx, run_id)
        row = tx.conn.execute(
            select(
                steps.c.id, steps.c.status, steps.c.spec_id, steps.c.attempt, steps.c.parent_step_id
            ).where(steps.c.run_id == run_id, steps.c.step_key == step_key)
        ).first()
        if row is None:
            raise NotFound(f"run {run_id!r} has no step {step_key!r}")
        if row.status != StepStatus.WAITING:
            raise Conflict(f"step {step_key!r} is not waiting for a decision (it is {row.status})")
        spec = state.compiled.steps[row.spec_id]
        assert isinstance(spec, HumanStep)
        if answer is not None and spec.form is None:
            raise Conflict(f"step {step_key!r} has no form to answer; approve or reject it")
        given = answer if answer is not None else (payload or None)
        if spec.form is not None and approved:
            if given is None:
                raise InvalidAnswer(
                    f"step {step_key!r} asks for a form: send its answer "
                    f"(POST /api/v1/runs/{run_id}/steps/{step_key}/respond)"
                )
            given = check_answer(step_key, spec.form, given)
        self._event(
            tx,
            state,
            "step.approved" if approved else "step.rejected",
            step_key,
            row.attempt,
            by=by,
            comment=comment,
        )
        output = decision_output(approved=approved, by=by, comment=comment, answer=given)
        reason = f"step {step_key!r} was rejected" + (f" by {by}" if by else "")
        if comment:
            reason += f": {comment}"
        self._resolve(tx, state, row, spec, output, reason)
        self._flush(tx, state)
        self._write_events(tx)

    def expire_waits(self, tx: Tx, root_run_id: str | None = None) -> list[str]:
        """Apply ``on_timeout`` to waiting human steps whose deadline passed; returns their
        keys. Each is resolved in this transaction, so a restart cannot lose a timeout."""
        query = select(steps.c.id, steps.c.run_id).where(
            steps.c.status == StepStatus.WAITING,
            steps.c.wait_until.is_not(None),
            steps.c.wait_until < tx.now,
        )
        if root_run_id:
            query = query.where(steps.c.root_run_id == root_run_id)
        expired: list[str] = []
        for step_id, run_id in tx.conn.execute(query.limit(_SWEEP_LIMIT)).all():
            state = self._lock_run(tx, run_id)
            row = tx.conn.execute(  # read again under the run's lock: a person may have won
                select(
                    steps.c.id,
                    steps.c.step_key,
                    steps.c.spec_id,
                    steps.c.attempt,
                    steps.c.parent_step_id,
                ).where(steps.c.id == step_id, steps.c.status == StepStatus.WAITING)
            ).first()
            if row is None or state.status.is_final:
                continue
            self._time_out(tx, state, row)
            self._flush(tx, state)
            expired.append(row.step_key)
        self._write_events(tx)
        return expired

    def note_notification(
        self, tx: Tx, run_id: str, step_key: str, attempt: int, **data: Any
    ) -> None:
        """Log how a waiting step's webhook went: ``step.notified`` or ``step.notify_failed``."""
        state = self._load_run(tx, run_id)
        failed = data.get("error") is not None
        self._event(
            tx,
            state,
            "step.notify_failed" if failed else "step.notified",
            step_key,
            attempt,
            level="warning" if failed else "info",
            **data,
        )
        self._write_events(tx)

    def _time_out(self, tx: Tx, state: RunState, row: _WaitingRow) -> None:
        spec = state.compiled.steps[row.spec_id]
        assert isinstance(spec, HumanStep)
        assert spec.timeout is not None
        waited = f"timed out after {spec.timeout:g}s waiting for a person"
        if spec.on_timeout == "fail":
            message = f"step {row.step_key!r} {waited}"
            self._event(tx, state, "step.timed_out", row.step_key, row.attempt, on_timeout="fail")
            self._mark_failed(tx, state, row.id, row.step_key, row.attempt, message)
            if spec.on_failure == "continue":
                self._resume_if_unblocked(tx, state)
            self._step_failed(
                tx,
                state,
                row.step_key,
                row.spec_id,
                row.parent_step_id,
                message,
                RunStatus.FAILED,
                None,
                NONE,
                [],
            )
            return
        approved = spec.on_timeout == "approve"
        output = decision_output(
            approved=approved,
            by=None,
            comment=None,
            answer=spec.default if approved else None,
            timed_out=True,
        )
        self._event(
            tx,
            state,
            "step.timed_out",
            row.step_key,
            row.attempt,
            on_timeout=spec.on_timeout,
            output=output,
        )
        self._resolve(tx, state, row, spec, output, f"step {row.step_key!r} {waited} (rejected)")

    def _resolve(
        self,
        tx: Tx,
        state: RunState,
        row: _WaitingRow,
        spec: HumanStep,
        output: dict[str, Any],
        reason: str,
    ) -> None:
        """Finish a waiting step with ``output``: a rejection fails the run when the step says
        so (``reason`` is the run's error); otherwise the run goes on from the step."""
        step_key = spec.id
        if not output["approved"] and spec.on_reject == "fail":
            tx.conn.execute(
                update(steps)
                .where(steps.c.id == row.id)
                .values(status=StepStatus.FAILED, output=output, error=reason, finished_at=tx.now)
            )
            self._event(
                tx, state, "step.failed", step_key, row.attempt, level="error", error=reason
            )
            self._end_run(tx, state, RunStatus.FAILED, reason)
            return
        tx.conn.execute(
            update(steps)
            .where(steps.c.id == row.id)
            .values(status=StepStatus.SUCCEEDED, output=output, finished_at=tx.now)
        )
        self._event(tx, state, "step.succeeded", step_key, row.attempt, output=output)
        self._resume_if_unblocked(tx, state)
        self._step_final(
            tx, state, step_key, row.parent_step_id, StepStatus.SUCCEEDED, None, NONE, []
        )

    def _resume_if_unblocked(self, tx: Tx, state: RunState) -> None:
        """A waiting run runs again once no step of it waits for a person."""
        still_waiting = tx.conn.scalar(
            select(func.count()).where(
                steps.c.run_id == state.id, steps.c.status == StepStatus.WAITING
            )
        )
        if state.status == RunStatus.WAITING and not still_waiting:
            self._set_status(tx, state, RunStatus.RUNNING)
