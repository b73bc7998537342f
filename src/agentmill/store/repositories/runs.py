"""The SQL about runs: the engine's hot-path statements (built once, run with parameters) and
the read models the CLI, API and tests show."""

from __future__ import annotations

import functools
from typing import Any

from sqlalchemy import String, any_, bindparam, select, update
from sqlalchemy.dialects import postgresql

from agentmill.store.models import runs
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
