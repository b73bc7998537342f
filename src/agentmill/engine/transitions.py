"""Every state change of runs and steps, each a function run inside one transaction.

Rules that keep runs correct when processes die or messages repeat (DESIGN decisions 1, 2, 8):

* A step's result is written only if the step is still ``RUNNING`` at the attempt that produced
  it; anything else raises :class:`StaleClaim` and changes nothing.
* The run row is locked first (``FOR UPDATE`` on PostgreSQL; SQLite has one writer) so that two
  steps finishing at once cannot both miss starting the step that needs them both.
* A step becomes ready in the same transaction that finished its last need. When the finishing
  worker has room it claims that step at once (no queue round trip); otherwise it is ``QUEUED``.
* Every change appends events to the run's log in the same transaction.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import func, insert, select, update

from agentmill.domain.spec import (
    HumanStep,
    MapStep,
    RetrySpec,
    WorkflowSpec,
)
from agentmill.domain.states import ACTIVE_RUN_STATUSES, OPEN_STEP_STATUSES, RunStatus, StepStatus
from agentmill.domain.templates import TemplateError, render_value
from agentmill.engine.claims import Claim, StaleClaim, owner_is_dead
from agentmill.engine.compiled import CompiledWorkflow, WorkflowRegistry
from agentmill.engine.outcomes import (
    Failed,
    FanOut,
    Skipped,
    StartChildRun,
    StepReport,
    Succeeded,
    WaitForHuman,
)
from agentmill.errors import Conflict, NotFound
from agentmill.ids import new_id
from agentmill.store import statements as sql
from agentmill.store.db import Tx
from agentmill.store.models import runs, steps, workflow_versions

LOST_LEASES_ALLOWED = 3


@dataclass
class RunState:
    """A locked run row, changed in memory and written back once by :meth:`Transitions._flush`."""

    id: str
    root_run_id: str
    parent_run_id: str | None
    parent_step_id: str | None
    version_id: str
    spec_path: str
    status: RunStatus
    pending_steps: int
    inputs: dict[str, Any]
    deadline_at: datetime | None
    compiled: CompiledWorkflow
    input_tokens: int = 0
    output_tokens: int = 0
    cost: Decimal = Decimal(0)
    changes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class _RunInfo:
    """The part of a run row that never changes after it is created."""

    root_run_id: str
    parent_run_id: str | None
    parent_step_id: str | None
    version_id: str
    spec_path: str
    inputs: dict[str, Any]
    deadline_at: datetime | None
    compiled: CompiledWorkflow


_RUN_CACHE_SIZE = 20_000


@dataclass(frozen=True, kw_only=True)
class NewRun:
    run_id: str
    claims: list[Claim]


class Transitions:
    """The engine's transactions. ``owner`` and ``capacity`` let a finishing worker claim the
    steps it just made ready."""

    def __init__(self, registry: WorkflowRegistry, *, lease_seconds: float) -> None:
        self.registry = registry
        self.lease = timedelta(seconds=lease_seconds)
        self._run_cache: dict[str, _RunInfo] = {}  # used by the one writer thread, or under the GIL

    # ================================================================ runs

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
        run_id: str | None = None,
    ) -> NewRun:
        """Insert a run and queue its first steps (claiming up to ``capacity`` for ``owner``)."""
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
        tx.conn.execute(
            insert(runs).values(
                id=run_id,
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
        )
        self._event(tx, state, "run.created", inputs=inputs, workflow=compiled.spec.name)
        claims: list[Claim] = []
        budget = [capacity]
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

    # ================================================================ claiming

    def claim(
        self, tx: Tx, *, owner: str, limit: int, root_run_id: str | None = None
    ) -> list[Claim]:
        """Lease up to ``limit`` ready steps: queued, due for retry, or whose lease expired."""
        if limit <= 0:
            return []
        ready = select(steps.c.id).where(
            steps.c.status.in_((StepStatus.QUEUED, StepStatus.RETRYING)),
            steps.c.available_at <= tx.now,
        )
        expired = select(steps.c.id, steps.c.attempt, steps.c.failures, steps.c.lease_owner).where(
            steps.c.status == StepStatus.RUNNING,
            steps.c.lease_expires_at.is_not(None),
            steps.c.lease_expires_at < tx.now,
        )
        if root_run_id:
            ready = ready.where(steps.c.root_run_id == root_run_id)
            expired = expired.where(steps.c.root_run_id == root_run_id)
        ready = ready.order_by(steps.c.available_at).limit(limit)
        expired = expired.limit(limit)
        if tx.is_postgres:
            ready = ready.with_for_update(skip_locked=True)
            expired = expired.with_for_update(skip_locked=True)
        ids = list(tx.conn.scalars(ready))
        lost: dict[str, str | None] = {}
        if len(ids) < limit:
            for row in tx.conn.execute(expired.limit(limit - len(ids))):
                if row.attempt - row.failures > LOST_LEASES_ALLOWED:
                    self._give_up_lost(tx, row.id, row.attempt, row.lease_owner)
                    continue
                ids.append(row.id)
                lost[row.id] = row.lease_owner
        if not ids:
            self._write_events(tx)
            return []
        claims = self._lease(tx, ids, owner, lost)
        self._write_events(tx)
        return claims

    def heartbeat(self, tx: Tx, *, owner: str, step_ids: Iterable[str]) -> set[str]:
        """Extend our leases; returns the ids we no longer hold (cancelled or taken over)."""
        wanted = set(step_ids)
        if not wanted:
            return set()
        held = set(
            tx.conn.scalars(
                update(steps)
                .where(
                    steps.c.id.in_(wanted),
                    steps.c.lease_owner == owner,
                    steps.c.status == StepStatus.RUNNING,
                )
                .values(lease_expires_at=tx.now + self.lease)
                .returning(steps.c.id)
            )
        )
        return wanted - held

    def release_dead_leases(self, tx: Tx, root_run_id: str | None = None) -> int:
        """Make steps leased by dead processes on this host claimable now."""
        query = (
            select(steps.c.lease_owner)
            .distinct()
            .where(steps.c.status == StepStatus.RUNNING, steps.c.lease_owner.is_not(None))
        )
        if root_run_id:
            query = query.where(steps.c.root_run_id == root_run_id)
        dead = [owner for owner in tx.conn.scalars(query) if owner and owner_is_dead(owner)]
        if not dead:
            return 0
        result = tx.conn.execute(
            update(steps)
            .where(steps.c.status == StepStatus.RUNNING, steps.c.lease_owner.in_(dead))
            .values(lease_expires_at=tx.now - timedelta(seconds=1))
        )
        return int(result.rowcount)

    def release(self, tx: Tx, *, owner: str, step_ids: Iterable[str]) -> None:
        """Give leases back (clean shutdown) so another worker can take the steps at once."""
        ids = list(step_ids)
        if ids:
            tx.conn.execute(
                update(steps)
                .where(
                    steps.c.id.in_(ids),
                    steps.c.lease_owner == owner,
                    steps.c.status == StepStatus.RUNNING,
                )
                .values(lease_expires_at=tx.now - timedelta(seconds=1))
            )

    # ================================================================ results

    def record(self, tx: Tx, claim: Claim, report: StepReport, *, capacity: int = 0) -> list[Claim]:
        """Write what an attempt produced. Returns steps claimed for the same worker."""
        state = self._lock_run(tx, claim.run_id)
        if state.status.is_final:
            raise StaleClaim(f"run {claim.run_id} is {state.status}")
        claims: list[Claim] = []
        budget = [capacity]
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
                    **_usage_data(report),
                    output=_preview(output),
                )
            self._step_final(
                tx, state, claim.step_key, claim.parent_step_id, status, claim.owner, budget, claims
            )
        elif isinstance(outcome, Failed):
            self._failed(tx, state, claim, report, outcome, budget, claims)
        elif isinstance(outcome, WaitForHuman):
            self._finish_attempt(tx, claim, report, StepStatus.WAITING, finished=False)
            self._usage(tx, state, claim, report)
            self._event(
                tx, state, "step.waiting", claim.step_key, claim.attempt, message=outcome.message
            )
            if state.status == RunStatus.RUNNING:
                self._set_status(tx, state, RunStatus.WAITING, step=claim.step_key)
        elif isinstance(outcome, FanOut):
            self._fan_out(tx, state, claim, report, outcome, _attempt_usage(report), budget, claims)
        elif isinstance(outcome, StartChildRun):
            child_id = new_id("run")
            self._own(
                tx,
                claim,
                lease_owner=None,
                lease_expires_at=None,
                child_run_id=child_id,
                **_attempt_usage(report),
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
                workflow_id=_workflow_id(tx, state.version_id),
                version_id=state.version_id,
                inputs=outcome.inputs,
                spec_path=spec_path,
                parent=(state, claim.step_id),
                owner=claim.owner,
                capacity=budget[0],
                run_id=child_id,
            )
            claims.extend(child.claims)
        self._flush(tx, state)
        self._write_events(tx)
        return claims

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
    ) -> None:
        """Approve or reject a waiting human step."""
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
        decision = {"approved": approved, "by": by, "comment": comment, **(payload or {})}
        self._event(
            tx,
            state,
            "step.approved" if approved else "step.rejected",
            step_key,
            row.attempt,
            by=by,
            comment=comment,
        )
        if not approved and spec.on_reject == "fail":
            message = f"step {step_key!r} was rejected" + (f" by {by}" if by else "")
            if comment:
                message += f": {comment}"
            tx.conn.execute(
                update(steps)
                .where(steps.c.id == row.id)
                .values(
                    status=StepStatus.FAILED, output=decision, error=message, finished_at=tx.now
                )
            )
            self._event(
                tx, state, "step.failed", step_key, row.attempt, level="error", error=message
            )
            self._end_run(tx, state, RunStatus.FAILED, message)
        else:
            tx.conn.execute(
                update(steps)
                .where(steps.c.id == row.id)
                .values(status=StepStatus.SUCCEEDED, output=decision, finished_at=tx.now)
            )
            self._event(tx, state, "step.succeeded", step_key, row.attempt, output=decision)
            still_waiting = tx.conn.scalar(
                select(func.count()).where(
                    steps.c.run_id == run_id, steps.c.status == StepStatus.WAITING
                )
            )
            if state.status == RunStatus.WAITING and not still_waiting:
                self._set_status(tx, state, RunStatus.RUNNING)
            self._step_final(
                tx, state, step_key, row.parent_step_id, StepStatus.SUCCEEDED, None, [0], []
            )
        self._flush(tx, state)
        self._write_events(tx)

    # ================================================================ internals: steps

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
        count = sql.FINISH_ATTEMPT.run(
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
        budget: list[int],
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
                **_usage_data(report),
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
            **_usage_data(report),
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
        budget: list[int],
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
            self._end_run(tx, state, run_status, message)

    def _fan_out(
        self,
        tx: Tx,
        state: RunState,
        claim: Claim,
        report: StepReport,
        outcome: FanOut,
        values: dict[str, Any],
        budget: list[int],
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
        budget: list[int],
        claims: list[Claim],
    ) -> None:
        self._insert_step(
            tx,
            state,
            step_key=f"{step.id}[{index}]",
            spec_id=step.id,
            kind=step.step.type,
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
        budget: list[int],
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

    def _step_final(
        self,
        tx: Tx,
        state: RunState,
        step_key: str,
        parent_step_id: str | None,
        status: StepStatus,
        owner: str | None,
        budget: list[int],
        claims: list[Claim],
    ) -> None:
        """A step reached SUCCEEDED, SKIPPED or (continuing) FAILED: start what it unblocks."""
        if parent_step_id is not None:
            self._child_final(tx, state, parent_step_id, owner, budget, claims)
            return
        state.pending_steps -= 1
        state.changes["pending_steps"] = state.pending_steps
        compiled = state.compiled
        dependents = compiled.dependents[step_key]
        for dependent in dependents:
            needs = compiled.steps[dependent].needs
            ran = 0 if status == StepStatus.SKIPPED else 1
            if len(needs) > 1:
                remaining, ran = sql.JOIN_NEED_DONE[tx.dialect].rows(
                    tx.conn,
                    {
                        "b_run": state.id,
                        "b_key": dependent,
                        "b_remaining": len(needs) - 1,
                        "b_ran": ran,
                    },
                )[0]
                if remaining > 0:
                    continue
                sql.JOIN_READY.run(tx.conn, {"b_run": state.id, "b_key": dependent})
            if ran == 0:  # every step it needs was skipped
                self._skip(tx, state, dependent, owner, budget, claims)
            else:
                self._make_ready(tx, state, dependent, owner, budget, claims)
        if state.pending_steps == 0 and not state.status.is_final:
            self._complete_run(tx, state)

    def _skip(
        self,
        tx: Tx,
        state: RunState,
        step_id: str,
        owner: str | None,
        budget: list[int],
        claims: list[Claim],
    ) -> None:
        step = state.compiled.steps[step_id]
        tx.conn.execute(
            insert(steps).values(
                id=new_id("stp"),
                run_id=state.id,
                root_run_id=state.root_run_id,
                step_key=step_id,
                spec_id=step_id,
                kind=step.type,
                status=StepStatus.SKIPPED,
                attempt=0,
                failures=0,
                max_attempts=_attempts(step.retry),
                available_at=tx.now,
                created_at=tx.now,
                finished_at=tx.now,
                input_tokens=0,
                output_tokens=0,
                cost=Decimal(0),
            )
        )
        self._event(tx, state, "step.skipped", step_id, 0, reason="every step it needs was skipped")
        self._step_final(tx, state, step_id, None, StepStatus.SKIPPED, owner, budget, claims)

    def _make_ready(
        self,
        tx: Tx,
        state: RunState,
        step_id: str,
        owner: str | None,
        budget: list[int],
        claims: list[Claim],
    ) -> None:
        step = state.compiled.steps[step_id]
        self._insert_step(
            tx,
            state,
            step_key=step_id,
            spec_id=step_id,
            kind=step.type,
            retry=step.retry,
            parent_step_id=None,
            map_index=None,
            input=None,
            owner=owner,
            budget=budget,
            claims=claims,
        )

    def _insert_step(
        self,
        tx: Tx,
        state: RunState,
        *,
        step_key: str,
        spec_id: str,
        kind: str,
        retry: RetrySpec | None,
        parent_step_id: str | None,
        map_index: int | None,
        input: Any,
        owner: str | None,
        budget: list[int],
        claims: list[Claim],
    ) -> None:
        step_id = new_id("stp")
        claim_now = owner is not None and budget[0] > 0
        max_attempts = _attempts(retry)
        sql.INSERT_STEP.run(
            tx.conn,
            {
                "id": step_id,
                "run_id": state.id,
                "root_run_id": state.root_run_id,
                "step_key": step_key,
                "spec_id": spec_id,
                "kind": kind,
                "parent_step_id": parent_step_id,
                "map_index": map_index,
                "status": StepStatus.RUNNING if claim_now else StepStatus.QUEUED,
                "attempt": 1 if claim_now else 0,
                "failures": 0,
                "max_attempts": max_attempts,
                "lease_owner": owner if claim_now else None,
                "lease_expires_at": tx.now + self.lease if claim_now else None,
                "available_at": tx.now,
                "input": input,
                "output": None,
                "created_at": tx.now,
                "started_at": tx.now if claim_now else None,
                "input_tokens": 0,
                "output_tokens": 0,
                "cost": Decimal(0),
            },
        )
        if not claim_now:
            self._event(tx, state, "step.queued", step_key, 0)
            return
        assert owner is not None
        budget[0] -= 1
        self._event(tx, state, "step.started", step_key, 1)
        reads = state.compiled.reads[spec_id]
        claims.append(
            Claim(
                step_id=step_id,
                run_id=state.id,
                root_run_id=state.root_run_id,
                step_key=step_key,
                spec_id=spec_id,
                kind=kind,
                attempt=1,
                failures=0,
                max_attempts=max_attempts,
                parent_step_id=parent_step_id,
                map_index=map_index,
                version_id=state.version_id,
                spec_path=state.spec_path,
                run_inputs=state.inputs,
                upstream=self._upstream(tx, state.id, reads),
                item=(input or {}).get("item") if map_index is not None else None,
                deadline_at=state.deadline_at,
                owner=owner,
            )
        )

    def _cancel_open_children(self, tx: Tx, state: RunState, parent_step_id: str) -> None:
        rows = tx.conn.execute(
            update(steps)
            .where(steps.c.parent_step_id == parent_step_id, steps.c.status.in_(OPEN_STEP_STATUSES))
            .values(
                status=StepStatus.CANCELLED,
                finished_at=tx.now,
                lease_owner=None,
                lease_expires_at=None,
            )
            .returning(steps.c.step_key, steps.c.attempt)
        ).all()
        for row in rows:
            self._event(tx, state, "step.cancelled", row.step_key, row.attempt, level="warning")

    def _give_up_lost(self, tx: Tx, step_id: str, attempt: int, owner: str | None) -> None:
        row = tx.conn.execute(
            select(steps.c.run_id, steps.c.step_key, steps.c.spec_id, steps.c.parent_step_id).where(
                steps.c.id == step_id
            )
        ).one()
        state = self._lock_run(tx, row.run_id)
        message = f"step {row.step_key!r} lost its worker {attempt} times (last: {owner})"
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
        self._event(tx, state, "step.failed", row.step_key, attempt, level="error", error=message)
        self._step_failed(
            tx,
            state,
            row.step_key,
            row.spec_id,
            row.parent_step_id,
            message,
            RunStatus.FAILED,
            None,
            [0],
            [],
        )
        self._flush(tx, state)

    def _lease(
        self, tx: Tx, ids: list[str], owner: str, lost: dict[str, str | None]
    ) -> list[Claim]:
        rows = tx.conn.execute(
            update(steps)
            .where(steps.c.id.in_(ids))
            .values(
                status=StepStatus.RUNNING,
                attempt=steps.c.attempt + 1,
                lease_owner=owner,
                lease_expires_at=tx.now + self.lease,
                started_at=tx.now,
            )
            .returning(
                steps.c.id,
                steps.c.run_id,
                steps.c.root_run_id,
                steps.c.step_key,
                steps.c.spec_id,
                steps.c.kind,
                steps.c.attempt,
                steps.c.failures,
                steps.c.max_attempts,
                steps.c.parent_step_id,
                steps.c.map_index,
                steps.c.input,
            )
        ).all()
        by_run: dict[str, RunState] = {}
        claims: list[Claim] = []
        for row in rows:
            state = by_run.get(row.run_id)
            if state is None:
                state = by_run[row.run_id] = self._load_run(tx, row.run_id)
            if row.id in lost:
                self._event(
                    tx,
                    state,
                    "step.lease_expired",
                    row.step_key,
                    row.attempt - 1,
                    level="warning",
                    owner=lost[row.id],
                )
            self._event(tx, state, "step.started", row.step_key, row.attempt)
            claims.append(
                Claim(
                    step_id=row.id,
                    run_id=row.run_id,
                    root_run_id=row.root_run_id,
                    step_key=row.step_key,
                    spec_id=row.spec_id,
                    kind=row.kind,
                    attempt=row.attempt,
                    failures=row.failures,
                    max_attempts=row.max_attempts,
                    parent_step_id=row.parent_step_id,
                    map_index=row.map_index,
                    version_id=state.version_id,
                    spec_path=state.spec_path,
                    run_inputs=state.inputs,
                    upstream=self._upstream(tx, row.run_id, state.compiled.reads[row.spec_id]),
                    item=(row.input or {}).get("item") if row.map_index is not None else None,
                    deadline_at=state.deadline_at,
                    owner=owner,
                )
            )
        for state in by_run.values():
            if state.status == RunStatus.PENDING:
                started = tx.conn.execute(
                    update(runs)
                    .where(runs.c.id == state.id, runs.c.status == RunStatus.PENDING)
                    .values(status=RunStatus.RUNNING, started_at=tx.now)
                )
                if started.rowcount:
                    self._event(tx, state, "run.started")
        return claims

    # ================================================================ internals: runs

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
        self._set_status(tx, state, RunStatus.COMPLETED, outputs=_preview(outputs))
        if state.parent_step_id:
            self._child_run_done(tx, state, outputs=outputs, error=None, status=RunStatus.COMPLETED)

    def _end_run(self, tx: Tx, state: RunState, status: RunStatus, error: str) -> None:
        """End an active run as FAILED, CANCELLED or BUDGET_EXCEEDED, closing all it holds open."""
        state.changes.update(error=error, finished_at=tx.now)
        self._set_status(tx, state, status, error=error)
        rows = tx.conn.execute(
            update(steps)
            .where(steps.c.run_id == state.id, steps.c.status.in_(OPEN_STEP_STATUSES))
            .values(
                status=StepStatus.CANCELLED,
                finished_at=tx.now,
                lease_owner=None,
                lease_expires_at=None,
            )
            .returning(steps.c.step_key, steps.c.attempt)
        ).all()
        for row in rows:
            self._event(tx, state, "step.cancelled", row.step_key, row.attempt, level="warning")
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
        if state.parent_step_id:
            self._child_run_done(tx, state, outputs=None, error=error, status=status)

    def _child_run_done(
        self, tx: Tx, child: RunState, *, outputs: Any, error: str | None, status: RunStatus
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
        totals = tx.conn.execute(
            select(runs.c.input_tokens, runs.c.output_tokens, runs.c.cost).where(
                runs.c.id == child.id
            )
        ).one()
        # A sub-workflow's usage counts toward the step that ran it and the runs above it.
        tx.conn.execute(
            update(steps)
            .where(steps.c.id == child.parent_step_id)
            .values(
                input_tokens=steps.c.input_tokens + totals.input_tokens,
                output_tokens=steps.c.output_tokens + totals.output_tokens,
                cost=steps.c.cost + totals.cost,
            )
        )
        parent.input_tokens += totals.input_tokens
        parent.output_tokens += totals.output_tokens
        parent.cost += totals.cost
        usage = {
            "input_tokens": totals.input_tokens,
            "output_tokens": totals.output_tokens,
            "cost": str(totals.cost),
        }
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
                output=_preview(outputs),
                **usage,
            )
            self._step_final(
                tx, parent, row.step_key, row.parent_step_id, StepStatus.SUCCEEDED, None, [0], []
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
                [0],
                [],
            )
        self._flush(tx, parent)

    def _usage(self, tx: Tx, state: RunState, claim: Claim, report: StepReport) -> None:
        usage = report.usage
        state.input_tokens += usage.input_tokens
        state.output_tokens += usage.output_tokens
        state.cost += usage.cost
        if report.calls:
            sql.INSERT_LLM_CALLS.run_many(
                tx.conn,
                [
                    {
                        "run_id": claim.run_id,
                        "step_id": claim.step_id,
                        "attempt": claim.attempt,
                        "turn": call.turn,
                        "provider": call.provider,
                        "model": call.model,
                        "input_tokens": call.usage.input_tokens,
                        "output_tokens": call.usage.output_tokens,
                        "cost": call.usage.cost,
                        "latency_ms": round(call.latency_ms, 3),
                        "error": call.error,
                        "created_at": tx.now,
                    }
                    for call in report.calls
                ],
            )
            for call in report.calls:
                self._event(
                    tx,
                    state,
                    "llm.call",
                    claim.step_key,
                    claim.attempt,
                    level="warning" if call.error else "info",
                    source="llm",
                    model=call.model,
                    turn=call.turn,
                    input_tokens=call.usage.input_tokens,
                    output_tokens=call.usage.output_tokens,
                    cost=str(call.usage.cost),
                    latency_ms=round(call.latency_ms, 3),
                    error=call.error,
                )
        for line in report.logs:
            self._event(
                tx,
                state,
                "step.log",
                claim.step_key,
                claim.attempt,
                level=line.level,
                source="step",
                message=line.message,
                **line.data,
            )

    def _flush(self, tx: Tx, state: RunState) -> None:
        if state.changes.keys() == {"pending_steps"}:  # the common case, prebuilt
            sql.RUN_PROGRESS.run(
                tx.conn,
                {
                    "b_id": state.id,
                    "b_pending": state.pending_steps,
                    "b_input_tokens": state.input_tokens,
                    "b_output_tokens": state.output_tokens,
                    "b_cost": state.cost,
                },
            )
            state.changes.clear()
            state.input_tokens = state.output_tokens = 0
            state.cost = Decimal(0)
            return
        values = dict(state.changes)
        if state.input_tokens or state.output_tokens or state.cost:
            values["input_tokens"] = runs.c.input_tokens + state.input_tokens
            values["output_tokens"] = runs.c.output_tokens + state.output_tokens
            values["cost"] = runs.c.cost + state.cost
        if values:
            tx.conn.execute(update(runs).where(runs.c.id == state.id).values(**values))
        state.changes.clear()
        state.input_tokens = state.output_tokens = 0
        state.cost = Decimal(0)

    def _lock_run(self, tx: Tx, run_id: str) -> RunState:
        state = self._load_run(tx, run_id, lock=True)
        return state

    def _load_run(self, tx: Tx, run_id: str, *, lock: bool = False) -> RunState:
        fixed = self._run_cache.get(run_id)
        if fixed is None:
            row = next(iter(sql.LOAD_RUN.rows(tx.conn, {"b_id": run_id})), None)
            if row is None:
                raise NotFound(f"run {run_id!r} not found")
            fixed = _RunInfo(
                root_run_id=row.root_run_id,
                parent_run_id=row.parent_run_id,
                parent_step_id=row.parent_step_id,
                version_id=row.version_id,
                spec_path=row.spec_path,
                inputs=row.inputs,
                deadline_at=row.deadline_at,
                compiled=self._compiled(tx, row.version_id, row.spec_path),
            )
            if len(self._run_cache) >= _RUN_CACHE_SIZE:
                self._run_cache.pop(next(iter(self._run_cache)))
            self._run_cache[run_id] = fixed
        query = sql.LOCK_RUN_STATUS if lock and tx.is_postgres else sql.RUN_STATUS
        current = next(iter(query.rows(tx.conn, {"b_id": run_id})), None)
        if current is None:
            raise NotFound(f"run {run_id!r} not found")
        if lock and tx.is_postgres:
            # We may have waited for the lock behind another step's commit: stamp what we
            # write from now on, so times follow the order in which changes were made.
            tx.now = max(tx.now, datetime.now(UTC))
        return RunState(
            id=run_id,
            root_run_id=fixed.root_run_id,
            parent_run_id=fixed.parent_run_id,
            parent_step_id=fixed.parent_step_id,
            version_id=fixed.version_id,
            spec_path=fixed.spec_path,
            status=RunStatus(current.status),
            pending_steps=current.pending_steps,
            inputs=fixed.inputs,
            deadline_at=fixed.deadline_at,
            compiled=fixed.compiled,
        )

    def _compiled(self, tx: Tx, version_id: str, spec_path: str) -> CompiledWorkflow:
        return self.registry.get(version_id, spec_path, spec_loader(tx))

    def _upstream(self, tx: Tx, run_id: str, keys: frozenset[str]) -> dict[str, dict[str, Any]]:
        if not keys:
            return {}
        rows = tx.conn.execute(sql.UPSTREAM, {"b_run": run_id, "b_keys": list(keys)})
        return {
            r.step_key: {"output": r.output, "status": r.status, "error": r.error} for r in rows
        }

    def _backoff(
        self, compiled: CompiledWorkflow, claim: Claim, failures: int, retry_after: float | None
    ) -> float:
        step = compiled.steps[claim.spec_id]
        policy = (step.step.retry if isinstance(step, MapStep) else step.retry) or RetrySpec()
        delay = min(policy.max_backoff, policy.backoff * policy.multiplier ** (failures - 1))
        if policy.jitter:
            delay = delay / 2 + random.uniform(0, delay / 2)
        if retry_after is not None:
            delay = max(delay, retry_after)
        return delay

    # ================================================================ events

    def _event(
        self,
        tx: Tx,
        state: RunState,
        type_: str,
        step_key: str | None = None,
        attempt: int | None = None,
        *,
        level: str = "info",
        source: str = "engine",
        **data: Any,
    ) -> None:
        tx.published.append(
            {
                "run_id": state.id,
                "root_run_id": state.root_run_id,
                "step_key": step_key,
                "attempt": attempt,
                "type": type_,
                "level": level,
                "ts": tx.now,
                "data": data if source == "engine" else {"source": source, **data},
            }
        )

    def _write_events(self, tx: Tx) -> None:
        # Listeners in this process get the events after commit; readers of the log (streams,
        # replay) read them back with their ids, so the insert need not return them.
        fresh = tx.published[tx.written_events :]
        if fresh:
            sql.INSERT_EVENTS.run_many(tx.conn, fresh)
            tx.written_events = len(tx.published)


def _attempt_usage(report: StepReport) -> dict[str, Any]:
    """Column updates adding an attempt's usage to its step (for the less common outcomes)."""
    usage = report.usage
    return {
        "input_tokens": steps.c.input_tokens + usage.input_tokens,
        "output_tokens": steps.c.output_tokens + usage.output_tokens,
        "cost": steps.c.cost + usage.cost,
        "duration_ms": report.duration_ms,
    }


def _attempts(retry: RetrySpec | None) -> int:
    return retry.max_attempts if retry else 1


def _usage_data(report: StepReport) -> dict[str, Any]:
    usage = report.usage
    return {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cost": str(usage.cost),
        "duration_ms": round(report.duration_ms, 3),
    }


def _preview(value: Any, limit: int = 2000) -> Any:
    """Events carry outputs for live views; big ones are cut (the step row keeps all of it)."""
    text = value if isinstance(value, str) else None
    if text is not None and len(text) > limit:
        return text[:limit] + "…"
    if text is None and value is not None:
        encoded = json.dumps(value, default=str)
        if len(encoded) > limit:
            return encoded[:limit] + "…"
    return value


def spec_loader(tx: Tx) -> Callable[[str], dict[str, Any]]:
    def load(version_id: str) -> dict[str, Any]:
        spec = tx.conn.scalar(
            select(workflow_versions.c.spec).where(workflow_versions.c.id == version_id)
        )
        if spec is None:
            raise NotFound(f"workflow version {version_id!r} not found")
        return dict(spec)

    return load


def _workflow_id(tx: Tx, version_id: str) -> str:
    value = tx.conn.scalar(
        select(workflow_versions.c.workflow_id).where(workflow_versions.c.id == version_id)
    )
    assert value is not None
    return str(value)


__all__ = ["Claim", "NewRun", "RunState", "StaleClaim", "Transitions", "WorkflowSpec"]
