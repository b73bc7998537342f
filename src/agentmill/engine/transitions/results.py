"""Results of an attempt: success, retry or failure, waiting for a person, map fan-out."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update

from agentmill.domain.spec import (
    MapStep,
)
from agentmill.domain.states import RunStatus, StepStatus
from agentmill.engine.claims import Claim, StaleClaim
from agentmill.engine.outcomes import (
    Failed,
    FanOut,
    Skipped,
    StartChildRun,
    StepReport,
    Succeeded,
    WaitForHuman,
)
from agentmill.engine.transitions._base import (
    Inline,
    RunState,
    TransitionsBase,
    attempt_usage,
    preview,
    usage_data,
    workflow_id_of,
)
from agentmill.gateway.types import CallReport
from agentmill.ids import new_id
from agentmill.store import statements as sql
from agentmill.store.db import Tx
from agentmill.store.models import steps
from agentmill.store.repositories import steps as step_sql
from agentmill.store.repositories.usage import usage_row


class ResultTransitions(TransitionsBase):
    """What an attempt produced."""

    def record(
        self,
        tx: Tx,
        claim: Claim,
        report: StepReport,
        *,
        capacity: int = 0,
        queues: frozenset[str] | None = None,
    ) -> list[Claim]:
        """Write what an attempt produced. Returns steps claimed for the same worker: up to
        ``capacity`` of the steps it unblocked, from the named ``queues`` (None: any)."""
        state = self._lock_run(tx, claim.run_id)
        if state.status.is_final:
            raise StaleClaim(f"run {claim.run_id} is {state.status}")
        claims: list[Claim] = []
        budget = Inline(capacity, queues)
        outcome = report.outcome
        if isinstance(outcome, Succeeded | Skipped):
            status = StepStatus.SUCCEEDED if isinstance(outcome, Succeeded) else StepStatus.SKIPPED
            output = outcome.output if isinstance(outcome, Succeeded) else None
            self._finish_attempt(tx, claim, report, status, output=output)
            self._usage(tx, state, claim, report)
            if isinstance(outcome, Skipped):
                self._event(
                    tx, state, "step.skipped", claim.step_key, claim.attempt, reason=outcome.reason
                )
            else:
                self._event(
                    tx,
                    state,
                    "step.succeeded",
                    claim.step_key,
                    claim.attempt,
                    **usage_data(report),
                    output=preview(output),
                )
            self._step_final(
                tx, state, claim.step_key, claim.parent_step_id, status, claim.owner, budget, claims
            )
        elif isinstance(outcome, Failed):
            self._failed(tx, state, claim, report, outcome, budget, claims)
        elif isinstance(outcome, WaitForHuman):
            self._finish_attempt(tx, claim, report, StepStatus.WAITING, finished=False)
            if outcome.deadline is not None:  # the sweep applies on_timeout after it
                tx.conn.execute(
                    update(steps)
                    .where(steps.c.id == claim.step_id)
                    .values(wait_until=outcome.deadline)
                )
            self._usage(tx, state, claim, report)
            extra: dict[str, Any] = {}
            if outcome.form is not None:  # for UIs (and the terminal) to render the form
                extra["form"] = outcome.form
                extra["default"] = outcome.default
            if outcome.deadline is not None:
                extra["deadline"] = outcome.deadline.isoformat()
            self._event(
                tx,
                state,
                "step.waiting",
                claim.step_key,
                claim.attempt,
                message=outcome.message,
                **extra,
            )
            if state.status == RunStatus.RUNNING:
                self._set_status(tx, state, RunStatus.WAITING, step=claim.step_key)
        elif isinstance(outcome, FanOut):
            self._fan_out(tx, state, claim, report, outcome, attempt_usage(report), budget, claims)
        elif isinstance(outcome, StartChildRun):
            child_id = new_id("run")
            self._own(
                tx,
                claim,
                lease_owner=None,
                lease_expires_at=None,
                child_run_id=child_id,
                **attempt_usage(report),
            )
            self._usage(tx, state, claim, report)
            self._event(
                tx, state, "step.child_run", claim.step_key, claim.attempt, child_run_id=child_id
            )
            self._flush(tx, state)
            spec_path = (
                f"{state.spec_path}/{outcome.spec_path}" if state.spec_path else outcome.spec_path
            )
            child = self.create_run(
                tx,
                workflow_id=workflow_id_of(tx, state.version_id),
                version_id=state.version_id,
                inputs=outcome.inputs,
                spec_path=spec_path,
                parent=(state, claim.step_id),
                owner=claim.owner,
                capacity=budget.left,
                queues=budget.queues,
                run_id=child_id,
            )
            claims.extend(child.claims)
        self._flush(tx, state)
        self._write_events(tx)
        return claims

    def record_calls(self, tx: Tx, claim: Claim, calls: tuple[CallReport, ...]) -> None:
        """The usage records of an attempt whose result is not written (stale, cancelled):
        what it spent is charged even though what it produced is dropped."""
        rows = [usage_row(c, claim.run_id, claim.step_id, claim.attempt, tx.now) for c in calls]
        if rows:
            sql.INSERT_LLM_CALLS.run_many(tx.conn, rows)

    def _finish_attempt(
        self,
        tx: Tx,
        claim: Claim,
        report: StepReport,
        status: StepStatus,
        *,
        output: Any = None,
        error: str | None = None,
        failures: int | None = None,
        available_at: datetime | None = None,
        finished: bool = True,
    ) -> None:
        """Record an attempt's end: only if that attempt still holds a running step."""
        usage = report.usage
        count = step_sql.FINISH_ATTEMPT.run(
            tx.conn,
            {
                "b_id": claim.step_id,
                "b_attempt": claim.attempt,
                "b_status": status,
                "b_output": output,
                "b_error": error,
                "b_failures": claim.failures if failures is None else failures,
                "b_available_at": available_at or tx.now,
                "b_finished_at": tx.now if finished else None,
                "b_input_tokens": usage.input_tokens,
                "b_output_tokens": usage.output_tokens,
                "b_cost": usage.cost,
                "b_duration_ms": report.duration_ms,
            },
        )
        if count != 1:
            raise StaleClaim(
                f"step {claim.step_key!r} attempt {claim.attempt} no longer holds its lease"
            )

    def _own(self, tx: Tx, claim: Claim, **values: Any) -> None:
        """The conditional write of decision 1: only our attempt of a running step."""
        result = tx.conn.execute(
            update(steps)
            .where(
                steps.c.id == claim.step_id,
                steps.c.attempt == claim.attempt,
                steps.c.status == StepStatus.RUNNING,
            )
            .values(**values)
        )
        if result.rowcount != 1:
            raise StaleClaim(
                f"step {claim.step_key!r} attempt {claim.attempt} no longer holds its lease"
            )

    def _failed(
        self,
        tx: Tx,
        state: RunState,
        claim: Claim,
        report: StepReport,
        outcome: Failed,
        budget: Inline,
        claims: list[Claim],
    ) -> None:
        failures = claim.failures + 1
        if outcome.retryable and failures < claim.max_attempts:
            delay = self._backoff(state.compiled, claim, failures, outcome.retry_after)
            self._finish_attempt(
                tx,
                claim,
                report,
                StepStatus.RETRYING,
                error=outcome.error,
                failures=failures,
                available_at=tx.now + timedelta(seconds=delay),
                finished=False,
            )
            self._usage(tx, state, claim, report)
            self._event(
                tx,
                state,
                "step.retrying",
                claim.step_key,
                claim.attempt,
                level="warning",
                error=outcome.error,
                delay=round(delay, 3),
                next_attempt=claim.attempt + 1,
                **usage_data(report),
            )
            return
        self._finish_attempt(
            tx, claim, report, StepStatus.FAILED, error=outcome.error, failures=failures
        )
        self._usage(tx, state, claim, report)
        attempts = f" after {claim.attempt} attempts" if claim.attempt > 1 else ""
        self._event(
            tx,
            state,
            "step.failed",
            claim.step_key,
            claim.attempt,
            level="error",
            error=outcome.error,
            retryable=outcome.retryable,
            **usage_data(report),
        )
        message = f"step {claim.step_key!r} failed{attempts}: {outcome.error}"
        status = RunStatus.BUDGET_EXCEEDED if outcome.budget else RunStatus.FAILED
        self._step_failed(
            tx,
            state,
            claim.step_key,
            claim.spec_id,
            claim.parent_step_id,
            message,
            status,
            claim.owner,
            budget,
            claims,
        )

    def _mark_failed(
        self, tx: Tx, state: RunState, step_id: str, step_key: str, attempt: int, message: str
    ) -> None:
        """Record that a step failed for good when no attempt reports it (its worker kept
        dying, nobody answered in time); the caller then moves on with ``_step_failed``."""
        tx.conn.execute(
            update(steps)
            .where(steps.c.id == step_id)
            .values(
                status=StepStatus.FAILED,
                error=message,
                finished_at=tx.now,
                lease_owner=None,
                lease_expires_at=None,
            )
        )
        self._event(tx, state, "step.failed", step_key, attempt, level="error", error=message)

    def _step_failed(
        self,
        tx: Tx,
        state: RunState,
        step_key: str,
        spec_id: str,
        parent_step_id: str | None,
        message: str,
        run_status: RunStatus,
        owner: str | None,
        budget: Inline,
        claims: list[Claim],
    ) -> None:
        """A step failed for good: fail its map, continue past it, or end the run."""
        if parent_step_id is not None:
            parent = tx.conn.execute(
                select(steps.c.step_key, steps.c.spec_id, steps.c.attempt).where(
                    steps.c.id == parent_step_id
                )
            ).one()
            self._cancel_open_children(tx, state, parent_step_id)
            tx.conn.execute(
                update(steps)
                .where(steps.c.id == parent_step_id)
                .values(status=StepStatus.FAILED, error=message, finished_at=tx.now)
            )
            self._event(
                tx,
                state,
                "step.failed",
                parent.step_key,
                parent.attempt,
                level="error",
                error=message,
            )
            self._step_failed(
                tx,
                state,
                parent.step_key,
                parent.spec_id,
                None,
                message,
                run_status,
                owner,
                budget,
                claims,
            )
            return
        step = state.compiled.steps[spec_id]
        if step.on_failure == "continue" and run_status == RunStatus.FAILED:
            self._step_final(tx, state, step_key, None, StepStatus.FAILED, owner, budget, claims)
        else:
            state.changes["failed_step"] = step_key  # what a re-drive reopens (redrive.py)
            self._end_run(tx, state, run_status, message)

    def _fan_out(
        self,
        tx: Tx,
        state: RunState,
        claim: Claim,
        report: StepReport,
        outcome: FanOut,
        values: dict[str, Any],
        budget: Inline,
        claims: list[Claim],
    ) -> None:
        step = state.compiled.steps[claim.spec_id]
        assert isinstance(step, MapStep)
        count = len(outcome.items)
        first = min(count, step.concurrency)
        self._own(
            tx,
            claim,
            lease_owner=None,
            lease_expires_at=None,
            input=outcome.items,
            child_count=count,
            children_started=first,
            children_done=0,
            **values,
        )
        self._usage(tx, state, claim, report)
        self._event(
            tx,
            state,
            "step.fanout",
            claim.step_key,
            claim.attempt,
            items=count,
            concurrency=step.concurrency,
        )
        if count == 0:
            tx.conn.execute(
                update(steps)
                .where(steps.c.id == claim.step_id)
                .values(status=StepStatus.SUCCEEDED, output=[], finished_at=tx.now)
            )
            self._event(tx, state, "step.succeeded", claim.step_key, claim.attempt, output=[])
            self._step_final(
                tx, state, claim.step_key, None, StepStatus.SUCCEEDED, claim.owner, budget, claims
            )
            return
        for index in range(first):
            self._make_child(
                tx,
                state,
                claim.step_id,
                step,
                index,
                outcome.items[index],
                claim.owner,
                budget,
                claims,
            )

    def _make_child(
        self,
        tx: Tx,
        state: RunState,
        parent_step_id: str,
        step: MapStep,
        index: int,
        item: Any,
        owner: str | None,
        budget: Inline,
        claims: list[Claim],
    ) -> None:
        self._insert_step(
            tx,
            state,
            step_key=f"{step.id}[{index}]",
            spec_id=step.id,
            kind=step.step.type,
            queue=step.step.queue,
            retry=step.step.retry,
            parent_step_id=parent_step_id,
            map_index=index,
            input={"item": item, "index": index},
            owner=owner,
            budget=budget,
            claims=claims,
        )

    def _child_final(
        self,
        tx: Tx,
        state: RunState,
        parent_step_id: str,
        owner: str | None,
        budget: Inline,
        claims: list[Claim],
    ) -> None:
        """A map child succeeded: start the next item, or finish the map when all are done."""
        query = select(
            steps.c.step_key,
            steps.c.spec_id,
            steps.c.attempt,
            steps.c.child_count,
            steps.c.children_started,
            steps.c.children_done,
            steps.c.input,
            steps.c.status,
        ).where(steps.c.id == parent_step_id)
        parent = tx.conn.execute(query).one()
        if parent.status != StepStatus.RUNNING:
            return
        done = parent.children_done + 1
        started = parent.children_started
        step = state.compiled.steps[parent.spec_id]
        assert isinstance(step, MapStep)
        if started < parent.child_count:
            self._make_child(
                tx,
                state,
                parent_step_id,
                step,
                started,
                parent.input[started],
                owner,
                budget,
                claims,
            )
            started += 1
        if done < parent.child_count:
            tx.conn.execute(
                update(steps)
                .where(steps.c.id == parent_step_id)
                .values(children_done=done, children_started=started)
            )
            return
        outputs = list(
            tx.conn.scalars(
                select(steps.c.output)
                .where(steps.c.parent_step_id == parent_step_id)
                .order_by(steps.c.map_index)
            )
        )
        tx.conn.execute(
            update(steps)
            .where(steps.c.id == parent_step_id)
            .values(
                children_done=done, status=StepStatus.SUCCEEDED, output=outputs, finished_at=tx.now
            )
        )
        self._event(
            tx, state, "step.succeeded", parent.step_key, parent.attempt, items=len(outputs)
        )
        self._step_final(
            tx, state, parent.step_key, None, StepStatus.SUCCEEDED, owner, budget, claims
        )

    def _cancel_open_children(self, tx: Tx, state: RunState, parent_step_id: str) -> None:
        self._cancel_open_steps(tx, state, steps.c.parent_step_id == parent_step_id)
