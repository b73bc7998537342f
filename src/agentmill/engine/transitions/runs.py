"""Runs: create, cancel, time out, complete, and end a run with everything under it."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import insert, select, update

from agentmill.domain.states import ACTIVE_RUN_STATUSES, RunStatus, StepStatus
from agentmill.domain.templates import TemplateError, render_value
from agentmill.engine.claims import Claim, RunCaller
from agentmill.engine.transitions._base import (
    NONE,
    Inline,
    NewRun,
    RunState,
    TransitionsBase,
    preview,
    stored_usage,
)
from agentmill.errors import NotFound
from agentmill.ids import new_id
from agentmill.store.db import Tx
from agentmill.store.models import runs, steps, workflows


class RunTransitions(TransitionsBase):
    """Creating, ending and timing out runs."""

    def create_run(
        self,
        tx: Tx,
        *,
        workflow_id: str,
        version_id: str,
        inputs: dict[str, Any],
        spec_path: str = "",
        parent: tuple[RunState, str] | None = None,
        owner: str | None = None,
        capacity: int = 0,
        queues: frozenset[str] | None = None,
        run_id: str | None = None,
        caller: RunCaller | None = None,
    ) -> NewRun:
        """Insert a run and queue its first steps (claiming up to ``capacity`` for ``owner``,
        from the named ``queues`` it serves; None: any)."""
        compiled = self._compiled(tx, version_id, spec_path)
        run_id = run_id or new_id("run")
        root = parent[0].root_run_id if parent else run_id
        timeout = compiled.spec.timeout
        deadline = tx.now + timedelta(seconds=timeout) if timeout else None
        if (
            parent
            and parent[0].deadline_at
            and (deadline is None or parent[0].deadline_at < deadline)
        ):
            deadline = parent[0].deadline_at
        workspace_id = tx.conn.scalar(
            select(workflows.c.workspace_id).where(workflows.c.id == workflow_id)
        )
        if workspace_id is None:
            raise NotFound(f"workflow {workflow_id!r} not found")
        given = parent[0].caller if parent else (caller or RunCaller())
        caller = RunCaller(
            workspace_id=workspace_id, started_by=given.started_by, api_key_id=given.api_key_id
        )
        tx.conn.execute(
            insert(runs).values(
                id=run_id,
                workspace_id=workspace_id,
                workflow_id=workflow_id,
                version_id=version_id,
                spec_path=spec_path,
                root_run_id=root,
                parent_run_id=parent[0].id if parent else None,
                parent_step_id=parent[1] if parent else None,
                status=RunStatus.PENDING,
                inputs=inputs,
                pending_steps=len(compiled.steps),
                input_tokens=0,
                output_tokens=0,
                cost=Decimal(0),
                created_at=tx.now,
                deadline_at=deadline,
                started_by=caller.started_by,
                api_key_id=caller.api_key_id,
            )
        )
        state = RunState(
            id=run_id,
            root_run_id=root,
            parent_run_id=parent[0].id if parent else None,
            parent_step_id=parent[1] if parent else None,
            version_id=version_id,
            spec_path=spec_path,
            status=RunStatus.PENDING,
            pending_steps=len(compiled.steps),
            inputs=inputs,
            deadline_at=deadline,
            compiled=compiled,
            caller=caller,
        )
        self._event(tx, state, "run.created", inputs=inputs, workflow=compiled.spec.name)
        claims: list[Claim] = []
        budget = Inline(capacity, queues)
        for step_id in compiled.roots:
            self._make_ready(tx, state, step_id, owner, budget, claims)
        if claims:
            self._mark_started(tx, state)
        self._flush(tx, state)
        self._write_events(tx)
        return NewRun(run_id=run_id, claims=claims)

    def cancel_run(self, tx: Tx, run_id: str, reason: str = "cancelled") -> RunStatus:
        """Cancel a run and everything under it. A finished run is left as it is."""
        state = self._lock_run(tx, run_id)
        if state.status.is_final:
            return state.status
        self._end_run(tx, state, RunStatus.CANCELLED, reason)
        self._flush(tx, state)
        self._write_events(tx)
        return state.status

    def expire_runs(self, tx: Tx, root_run_id: str | None = None) -> list[str]:
        """Fail runs whose deadline passed."""
        query = select(runs.c.id).where(
            runs.c.deadline_at.is_not(None),
            runs.c.deadline_at < tx.now,
            runs.c.status.in_(ACTIVE_RUN_STATUSES),
            runs.c.parent_run_id.is_(None),
        )
        if root_run_id:
            query = query.where(runs.c.root_run_id == root_run_id)
        expired = list(tx.conn.scalars(query.limit(100)))
        for run_id in expired:
            state = self._lock_run(tx, run_id)
            if not state.status.is_final:
                timeout = state.compiled.spec.timeout
                self._end_run(tx, state, RunStatus.FAILED, f"run timed out after {timeout:g}s")
                self._flush(tx, state)
        self._write_events(tx)
        return expired

    def _mark_started(self, tx: Tx, state: RunState) -> None:
        if state.status == RunStatus.PENDING:
            state.changes["started_at"] = tx.now
            self._set_status(tx, state, RunStatus.RUNNING)

    def _set_status(self, tx: Tx, state: RunState, status: RunStatus, **data: Any) -> None:
        state.status = status
        state.changes["status"] = status
        name = {
            RunStatus.RUNNING: "run.started" if "started_at" in state.changes else "run.resumed"
        }.get(status, f"run.{status.lower()}")
        self._event(tx, state, name, **data)

    def _complete_run(self, tx: Tx, state: RunState) -> None:
        reads = state.compiled.output_reads
        context = {
            "inputs": state.inputs,
            "steps": self._upstream(tx, state.id, reads),
            "run": {"id": state.id},
        }
        try:
            outputs = render_value(dict(state.compiled.spec.outputs), context)
        except TemplateError as exc:
            self._end_run(tx, state, RunStatus.FAILED, f"outputs: {exc}")
            return
        state.changes.update(outputs=outputs, finished_at=tx.now)
        self._set_status(tx, state, RunStatus.COMPLETED, outputs=preview(outputs))
        if state.parent_step_id:
            self._child_run_done(tx, state, outputs=outputs, error=None, status=RunStatus.COMPLETED)

    def _end_run(self, tx: Tx, state: RunState, status: RunStatus, error: str) -> None:
        """End an active run as FAILED, CANCELLED or BUDGET_EXCEEDED, closing all it holds open."""
        self._cancel_open_steps(tx, state, steps.c.run_id == state.id)
        children = tx.conn.scalars(
            select(runs.c.id).where(
                runs.c.parent_run_id == state.id, runs.c.status.in_(ACTIVE_RUN_STATUSES)
            )
        ).all()
        for child_id in children:
            child = self._lock_run(tx, child_id)
            child.parent_step_id = None  # the parent is ending already; don't report back up
            self._end_run(tx, child, RunStatus.CANCELLED, f"parent run ended: {error}")
            self._flush(tx, child)
        # The run's own final event comes last: a stream ends on it, after what it closed.
        state.changes.update(error=error, finished_at=tx.now)
        self._set_status(tx, state, status, error=error)
        if state.parent_step_id:
            self._child_run_done(tx, state, outputs=None, error=error, status=status)

    def _child_run_done(
        self,
        tx: Tx,
        child: RunState,
        *,
        outputs: Any,
        error: str | None,
        status: RunStatus,
    ) -> None:
        """A sub-workflow run ended: finish the step that started it, in the parent run."""
        assert child.parent_run_id
        assert child.parent_step_id
        self._flush(tx, child)
        parent = self._lock_run(tx, child.parent_run_id)
        row = tx.conn.execute(
            select(
                steps.c.step_key,
                steps.c.spec_id,
                steps.c.attempt,
                steps.c.parent_step_id,
                steps.c.status,
            ).where(steps.c.id == child.parent_step_id)
        ).one()
        if row.status != StepStatus.RUNNING or parent.status.is_final:
            return
        totals = stored_usage(tx, child.id)
        # A sub-workflow's usage counts toward the step that ran it and the runs above it.
        tx.conn.execute(
            update(steps)
            .where(steps.c.id == child.parent_step_id)
            .values(
                input_tokens=steps.c.input_tokens + totals["input_tokens"],
                output_tokens=steps.c.output_tokens + totals["output_tokens"],
                cost=steps.c.cost + totals["cost"],
            )
        )
        parent.input_tokens += totals["input_tokens"]
        parent.output_tokens += totals["output_tokens"]
        parent.cost += totals["cost"]
        usage = {**totals, "cost": str(totals["cost"])}
        if status == RunStatus.COMPLETED:
            tx.conn.execute(
                update(steps)
                .where(steps.c.id == child.parent_step_id)
                .values(status=StepStatus.SUCCEEDED, output=outputs, finished_at=tx.now)
            )
            self._event(
                tx,
                parent,
                "step.succeeded",
                row.step_key,
                row.attempt,
                child_run_id=child.id,
                output=preview(outputs),
                **usage,
            )
            self._step_final(
                tx, parent, row.step_key, row.parent_step_id, StepStatus.SUCCEEDED, None, NONE, []
            )
        else:
            message = f"sub-workflow run {child.id} {status.lower()}: {error}"
            tx.conn.execute(
                update(steps)
                .where(steps.c.id == child.parent_step_id)
                .values(status=StepStatus.FAILED, error=message, finished_at=tx.now)
            )
            self._event(
                tx, parent, "step.failed", row.step_key, row.attempt, level="error", error=message
            )
            run_status = (
                RunStatus.BUDGET_EXCEEDED
                if status == RunStatus.BUDGET_EXCEEDED
                else RunStatus.FAILED
            )
            self._step_failed(
                tx,
                parent,
                row.step_key,
                row.spec_id,
                row.parent_step_id,
                message,
                run_status,
                None,
                NONE,
                [],
            )
        self._flush(tx, parent)
