"""What every part of the transitions shares: run state, event journal, usage, helpers."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, select, update

from agentmill.domain.backoff import backoff_delay
from agentmill.domain.spec import (
    MapStep,
    RetrySpec,
)
from agentmill.domain.states import OPEN_STEP_STATUSES, RunStatus, StepStatus
from agentmill.engine.claims import Claim, RunCaller
from agentmill.engine.compiled import CompiledWorkflow, WorkflowRegistry
from agentmill.engine.outcomes import (
    StepReport,
)
from agentmill.errors import NotFound
from agentmill.store import statements as sql
from agentmill.store.db import Tx
from agentmill.store.models import runs, steps, workflow_versions
from agentmill.store.notify import EVENTS_CHANNEL, STEPS_CHANNEL
from agentmill.store.repositories import runs as run_sql
from agentmill.store.repositories import steps as step_sql
from agentmill.store.repositories.usage import usage_row

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
    caller: RunCaller = field(default_factory=RunCaller)
    input_tokens: int = 0
    output_tokens: int = 0
    cost: Decimal = Decimal(0)
    changes: dict[str, Any] = field(default_factory=dict)
    written_pending: int | None = None  # pending_steps as stored (plus this commit's deltas)

    def __post_init__(self) -> None:
        if self.written_pending is None:
            self.written_pending = self.pending_steps


@dataclass(frozen=True, kw_only=True)
class _RunInfo:
    """The part of a run row that never changes after it is created."""

    root_run_id: str
    parent_run_id: str | None
    parent_step_id: str | None
    version_id: str
    spec_path: str
    inputs: dict[str, Any]
    compiled: CompiledWorkflow
    caller: RunCaller


_RUN_CACHE_SIZE = 20_000


@dataclass
class Inline:
    """What a worker may claim in the transaction that unblocks steps: up to ``left`` more,
    only from the named ``queues`` it serves (None: every queue)."""

    left: int
    queues: frozenset[str] | None = None

    def takes(self, queue: str) -> bool:
        return self.left > 0 and (self.queues is None or queue in self.queues)


NONE = Inline(0)  # claims nothing; never decremented, so it may be shared


@dataclass(frozen=True, kw_only=True)
class NewRun:
    run_id: str
    claims: list[Claim]


class TransitionsBase:
    """State and helpers shared by every part of :class:`Transitions`."""

    def __init__(self, registry: WorkflowRegistry, *, lease_seconds: float) -> None:
        self.registry = registry
        self.lease = timedelta(seconds=lease_seconds)
        self._run_cache: dict[str, _RunInfo] = {}  # used by the one writer thread, or under the GIL

    def _usage(self, tx: Tx, state: RunState, claim: Claim, report: StepReport) -> None:
        usage = report.usage
        state.input_tokens += usage.input_tokens
        state.output_tokens += usage.output_tokens
        state.cost += usage.cost
        if report.calls:
            tx.insert_later(
                sql.INSERT_LLM_CALLS,
                [
                    usage_row(call, claim.run_id, claim.step_id, claim.attempt, tx.now)
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
                    turn=call.context.turn,
                    input_tokens=call.usage.input_tokens,
                    output_tokens=call.usage.output_tokens,
                    cached_tokens=call.usage.cached_tokens,
                    reasoning_tokens=call.usage.reasoning_tokens,
                    cost=str(call.usage.cost),
                    price=str(call.usage.price),
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
        """Write a run's changes. Progress alone (pending steps, usage) is added to the group
        commit's per-run counter and written once before COMMIT; anything else goes now."""
        progress = tx.accumulators.get(state.id)
        if state.changes.keys() <= {"pending_steps"}:
            if progress is None:
                progress = tx.accumulators[state.id] = {
                    "b_id": state.id,
                    "b_pending": 0,
                    "b_input_tokens": 0,
                    "b_output_tokens": 0,
                    "b_cost": Decimal(0),
                }
                tx.insert_later(run_sql.RUN_ADD_PROGRESS, [progress])
            assert state.written_pending is not None
            progress["b_pending"] += state.pending_steps - state.written_pending
            progress["b_input_tokens"] += state.input_tokens
            progress["b_output_tokens"] += state.output_tokens
            progress["b_cost"] += state.cost
        else:
            values = state.changes
            if "pending_steps" in values and progress is not None:
                progress["b_pending"] = 0  # the absolute value written now includes it
            add_usage = bool(state.input_tokens or state.output_tokens or state.cost)
            columns = tuple(sorted(values))
            params = {f"v_{name}": values[name] for name in columns}
            params["b_id"] = state.id
            if add_usage:
                params["b_input_tokens"] = state.input_tokens
                params["b_output_tokens"] = state.output_tokens
                params["b_cost"] = state.cost
            run_sql.update_run(columns, add_usage=add_usage).run(tx.conn, params)
            note_run_row(
                tx,
                state.id,
                status=values.get("status"),
                pending=values.get("pending_steps"),
                deadline=values.get("deadline_at"),
            )
        state.written_pending = state.pending_steps
        state.changes.clear()
        state.input_tokens = state.output_tokens = 0
        state.cost = Decimal(0)

    def lock_runs(self, tx: Tx, run_ids: list[str]) -> set[str]:
        """Lock many runs at once for the ``_lock_run`` of each member of a PostgreSQL group
        commit (its prelude: see ``Database.write``): one statement instead of one each.
        Returns the runs it did not lock: held by another transaction (or gone)."""
        held = set(run_ids)
        for row in run_sql.LOCK_FREE_RUNS_STATUS.rows(tx.conn, {"b_ids": run_ids}):
            tx.accumulators[_ROW + row.id] = _run_row(row, locked=True)
            held.discard(row.id)
        return held

    def _lock_run(self, tx: Tx, run_id: str) -> RunState:
        state = self._load_run(tx, run_id, lock=True)
        return state

    def _read_runs(self, tx: Tx, run_ids: Iterable[str]) -> None:
        """Read many runs in one query for ``_load_run`` (without a lock) to find: what it
        caches for the process, and the rows this commit has not read yet. A claim of a few
        hundred steps of as many runs thus costs one query, not two per run."""
        missing = sorted(
            {
                run_id
                for run_id in run_ids
                if run_id not in self._run_cache or _ROW + run_id not in tx.accumulators
            }
        )
        if not missing:
            return
        for row in tx.conn.execute(run_sql.LOAD_RUNS.where(runs.c.id.in_(missing))):
            if row.id not in self._run_cache:
                self._cache_run(tx, row.id, row)
            tx.accumulators.setdefault(_ROW + row.id, _run_row(row, locked=False))

    def _cache_run(self, tx: Tx, run_id: str, row: Any) -> _RunInfo:
        fixed = _RunInfo(
            root_run_id=row.root_run_id,
            parent_run_id=row.parent_run_id,
            parent_step_id=row.parent_step_id,
            version_id=row.version_id,
            spec_path=row.spec_path,
            inputs=row.inputs,
            compiled=self._compiled(tx, row.version_id, row.spec_path),
            caller=RunCaller(
                workspace_id=row.workspace_id,
                started_by=row.started_by,
                api_key_id=row.api_key_id,
            ),
        )
        if len(self._run_cache) >= _RUN_CACHE_SIZE:
            self._run_cache.pop(next(iter(self._run_cache)))
        self._run_cache[run_id] = fixed
        return fixed

    def _load_run(self, tx: Tx, run_id: str, *, lock: bool = False) -> RunState:
        fixed = self._run_cache.get(run_id)
        if fixed is None:
            row = next(iter(run_sql.LOAD_RUN.rows(tx.conn, {"b_id": run_id})), None)
            if row is None:
                raise NotFound(f"run {run_id!r} not found")
            fixed = self._cache_run(tx, run_id, row)
        lock = lock and tx.is_postgres
        row = tx.accumulators.get(_ROW + run_id)  # read earlier in this commit
        if row is None or (lock and not row["locked"]):
            query = run_sql.LOCK_RUN_STATUS if lock else run_sql.RUN_STATUS
            current = next(iter(query.rows(tx.conn, {"b_id": run_id})), None)
            if current is None:
                raise NotFound(f"run {run_id!r} not found")
            row = tx.accumulators[_ROW + run_id] = _run_row(current, locked=lock)
            if lock:
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
            status=RunStatus(row["status"]),
            pending_steps=row["pending"] + _pending_delta(tx, run_id),
            inputs=fixed.inputs,
            deadline_at=row["deadline"],
            compiled=fixed.compiled,
            caller=fixed.caller,
        )

    def _compiled(self, tx: Tx, version_id: str, spec_path: str) -> CompiledWorkflow:
        return self.registry.get(version_id, spec_path, spec_loader(tx))

    def _upstream(self, tx: Tx, run_id: str, keys: frozenset[str]) -> dict[str, dict[str, Any]]:
        if not keys:
            return {}
        rows = tx.conn.execute(step_sql.UPSTREAM, {"b_run": run_id, "b_keys": list(keys)})
        return {
            r.step_key: {"output": r.output, "status": r.status, "error": r.error} for r in rows
        }

    def _backoff(
        self, compiled: CompiledWorkflow, claim: Claim, failures: int, retry_after: float | None
    ) -> float:
        step = compiled.steps[claim.spec_id]
        policy = (step.step.retry if isinstance(step, MapStep) else step.retry) or RetrySpec()
        delay = backoff_delay(
            failures,
            base=policy.backoff,
            multiplier=policy.multiplier,
            cap=policy.max_backoff,
            jitter=policy.jitter,
        )
        if retry_after is not None:
            delay = max(delay, retry_after)
        return delay

    def _cancel_open_steps(self, tx: Tx, state: RunState, which: ColumnElement[bool]) -> None:
        """Cancel the open steps that ``which`` selects, with an event for each."""
        rows = tx.conn.execute(
            update(steps)
            .where(which, steps.c.status.in_(OPEN_STEP_STATUSES))
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
            tx.insert_later(sql.INSERT_EVENTS, fresh)
            roots = {event["root_run_id"] for event in fresh}
            tx.ordered_by.update(roots)
            if tx.is_postgres:  # other processes' streams and workers wake on the commit
                tx.notify.update((EVENTS_CHANNEL, root) for root in roots)
                for event in fresh:
                    if event["type"] == "step.queued":
                        tx.notify.add((STEPS_CHANNEL, "0"))
                    elif event["type"] == "step.retrying":
                        tx.notify.add((STEPS_CHANNEL, f"{event['data'].get('delay', 0):.3f}"))
            tx.written_events = len(tx.published)

    # Each part of Transitions lives in its own module; these are the methods one part calls
    # on another, declared for the type checker only (the parts define them).
    if TYPE_CHECKING:

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
        ) -> NewRun: ...

        def _set_status(self, tx: Tx, state: RunState, status: RunStatus, **data: Any) -> None: ...

        def _complete_run(self, tx: Tx, state: RunState) -> None: ...

        def _end_run(self, tx: Tx, state: RunState, status: RunStatus, error: str) -> None: ...

        def _step_final(
            self,
            tx: Tx,
            state: RunState,
            step_key: str,
            parent_step_id: str | None,
            status: StepStatus,
            owner: str | None,
            budget: Inline,
            claims: list[Claim],
        ) -> None: ...

        def _make_ready(
            self,
            tx: Tx,
            state: RunState,
            step_id: str,
            owner: str | None,
            budget: Inline,
            claims: list[Claim],
        ) -> None: ...

        def _insert_step(
            self,
            tx: Tx,
            state: RunState,
            *,
            step_key: str,
            spec_id: str,
            kind: str,
            queue: str,
            retry: RetrySpec | None,
            parent_step_id: str | None,
            map_index: int | None,
            input: Any,
            owner: str | None,
            budget: Inline,
            claims: list[Claim],
        ) -> None: ...

        def _mark_failed(
            self, tx: Tx, state: RunState, step_id: str, step_key: str, attempt: int, message: str
        ) -> None: ...

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
        ) -> None: ...

        def _child_final(
            self,
            tx: Tx,
            state: RunState,
            parent_step_id: str,
            owner: str | None,
            budget: Inline,
            claims: list[Claim],
        ) -> None: ...


# Key prefix: a run's status, stored pending count and deadline, as read in this commit.
_ROW = "run-row:"


def _run_row(current: Any, *, locked: bool) -> dict[str, Any]:
    """This commit's view of a run row (status, pending steps, deadline), as read."""
    return {
        "status": current.status,
        "pending": current.pending_steps,
        "deadline": current.deadline_at,
        "locked": locked,
    }


def note_run_row(
    tx: Tx,
    run_id: str,
    *,
    status: str | None = None,
    pending: int | None = None,
    deadline: datetime | None = None,
) -> None:
    """Keep this commit's view of a run row right after writing it directly."""
    row = tx.accumulators.get(_ROW + run_id)
    if row is not None:
        if status is not None:
            row["status"] = status
        if pending is not None:
            row["pending"] = pending
        if deadline is not None:  # only ever moved, never removed
            row["deadline"] = deadline


def stored_usage(tx: Tx, run_id: str) -> dict[str, Any]:
    """A run's usage totals at this point of the commit: as stored, plus what members of the
    group commit before this one added to it, which ``_flush`` writes only before COMMIT."""
    row = tx.conn.execute(
        select(runs.c.input_tokens, runs.c.output_tokens, runs.c.cost).where(runs.c.id == run_id)
    ).one()
    usage = {"input_tokens": row.input_tokens, "output_tokens": row.output_tokens, "cost": row.cost}
    progress = tx.accumulators.get(run_id)
    if progress is not None:
        usage["input_tokens"] += progress["b_input_tokens"]
        usage["output_tokens"] += progress["b_output_tokens"]
        usage["cost"] += progress["b_cost"]
    return usage


def _pending_delta(tx: Tx, run_id: str) -> int:
    """Steps finished earlier in this group commit whose count is not written yet."""
    progress = tx.accumulators.get(run_id)
    return int(progress["b_pending"]) if progress else 0


def attempt_usage(report: StepReport) -> dict[str, Any]:
    """Column updates adding an attempt's usage to its step (for the less common outcomes)."""
    usage = report.usage
    return {
        "input_tokens": steps.c.input_tokens + usage.input_tokens,
        "output_tokens": steps.c.output_tokens + usage.output_tokens,
        "cost": steps.c.cost + usage.cost,
        "duration_ms": report.duration_ms,
    }


def max_attempts_of(retry: RetrySpec | None) -> int:
    return retry.max_attempts if retry else 1


def usage_data(report: StepReport) -> dict[str, Any]:
    usage = report.usage
    return {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cost": str(usage.cost),
        "duration_ms": round(report.duration_ms, 3),
    }


def preview(value: Any, limit: int = 2000) -> Any:
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


def workflow_id_of(tx: Tx, version_id: str) -> str:
    value = tx.conn.scalar(
        select(workflow_versions.c.workflow_id).where(workflow_versions.c.id == version_id)
    )
    assert value is not None
    return str(value)
