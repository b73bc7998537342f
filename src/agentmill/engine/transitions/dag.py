"""Advancing the DAG: a finished step makes its dependents ready (or skips them)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy import insert

from agentmill.domain.spec import (
    RetrySpec,
)
from agentmill.domain.states import StepStatus
from agentmill.engine.claims import Claim
from agentmill.engine.transitions._base import (
    Inline,
    RunState,
    TransitionsBase,
    max_attempts_of,
)
from agentmill.ids import new_id
from agentmill.store.db import Tx
from agentmill.store.models import steps
from agentmill.store.repositories import steps as step_sql


class DagTransitions(TransitionsBase):
    """Making dependents ready as their needs finish."""

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
                remaining, ran = step_sql.JOIN_NEED_DONE[tx.dialect].rows(
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
                step_sql.JOIN_READY.run(tx.conn, {"b_run": state.id, "b_key": dependent})
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
        budget: Inline,
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
                queue=step.queue,
                status=StepStatus.SKIPPED,
                attempt=0,
                failures=0,
                max_attempts=max_attempts_of(step.retry),
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
        budget: Inline,
        claims: list[Claim],
    ) -> None:
        step = state.compiled.steps[step_id]
        self._insert_step(
            tx,
            state,
            step_key=step_id,
            spec_id=step_id,
            kind=step.type,
            queue=step.queue,
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
        queue: str,
        retry: RetrySpec | None,
        parent_step_id: str | None,
        map_index: int | None,
        input: Any,
        owner: str | None,
        budget: Inline,
        claims: list[Claim],
    ) -> None:
        step_id = new_id("stp")
        # Claimed at once for the worker finishing its predecessor, if it serves the queue.
        claim_now = owner is not None and budget.takes(queue)
        max_attempts = max_attempts_of(retry)
        step_sql.INSERT_STEP.run(
            tx.conn,
            {
                "id": step_id,
                "run_id": state.id,
                "root_run_id": state.root_run_id,
                "step_key": step_key,
                "spec_id": spec_id,
                "kind": kind,
                "queue": queue,
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
        budget.left -= 1
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
                caller=state.caller,
            )
        )
