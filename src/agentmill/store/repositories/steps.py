"""The SQL about steps: an attempt's result, new steps, upstream outputs, and the counters of
joins (a step that waits for several others)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite

from agentmill.domain.states import StepStatus
from agentmill.store.db import Tx
from agentmill.store.models import step_joins, steps
from agentmill.store.prepared import Prepared

# The result of one attempt, conditional on the attempt still holding the step (decision 1).
FINISH_ATTEMPT = Prepared(
    update(steps)
    .where(
        steps.c.id == bindparam("b_id"),
        steps.c.attempt == bindparam("b_attempt"),
        steps.c.status == StepStatus.RUNNING,
    )
    .values(
        status=bindparam("b_status"),
        output=bindparam("b_output"),
        error=bindparam("b_error"),
        failures=bindparam("b_failures"),
        available_at=bindparam("b_available_at"),
        finished_at=bindparam("b_finished_at"),
        lease_owner=None,
        lease_expires_at=None,
        input_tokens=steps.c.input_tokens + bindparam("b_input_tokens"),
        output_tokens=steps.c.output_tokens + bindparam("b_output_tokens"),
        cost=steps.c.cost + bindparam("b_cost", type_=steps.c.cost.type),
        duration_ms=bindparam("b_duration_ms"),
    )
)

INSERT_STEP = Prepared(insert(steps))

UPSTREAM = select(steps.c.step_key, steps.c.status, steps.c.output, steps.c.error).where(
    steps.c.run_id == bindparam("b_run"), steps.c.step_key.in_(bindparam("b_keys", expanding=True))
)


def _join_upsert(dialect_insert: Any) -> Any:
    stmt = dialect_insert(step_joins).values(
        run_id=bindparam("b_run"),
        step_key=bindparam("b_key"),
        remaining=bindparam("b_remaining"),
        ran=bindparam("b_ran"),
    )
    return stmt.on_conflict_do_update(
        index_elements=[step_joins.c.run_id, step_joins.c.step_key],
        set_={
            "remaining": step_joins.c.remaining - 1,
            "ran": step_joins.c.ran + stmt.excluded.ran,
        },
    ).returning(step_joins.c.remaining, step_joins.c.ran)


# One need of a join finished: count it down (the first need to finish creates the row).
JOIN_NEED_DONE = {
    "sqlite": Prepared(_join_upsert(sqlite.insert)),
    "postgresql": Prepared(_join_upsert(postgresql.insert)),
}
JOIN_READY = Prepared(
    delete(step_joins).where(
        step_joins.c.run_id == bindparam("b_run"), step_joins.c.step_key == bindparam("b_key")
    )
)


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
