"""Prebuilt statements for the engine's hot path.

SQLAlchemy builds and caches a statement's compiled form by its cache key; building the same
``update(...).where(...).values(...)`` anew for every step costs more than running it. These are
built once and executed with parameters.
"""

from __future__ import annotations

import functools
from typing import Any

from sqlalchemy import String, any_, bindparam, delete, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite

from agentmill.domain.states import StepStatus
from agentmill.store.models import events, llm_calls, runs, step_joins, steps
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
INSERT_EVENTS = Prepared(insert(events))
INSERT_LLM_CALLS = Prepared(insert(llm_calls))

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
