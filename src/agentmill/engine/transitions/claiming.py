"""Claiming steps: leases, heartbeats, and taking over steps whose worker died."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, or_, select, update

from agentmill.domain.states import RunStatus, StepStatus
from agentmill.engine.claims import Claim, owner_is_dead
from agentmill.engine.transitions._base import (
    LOST_LEASES_ALLOWED,
    NONE,
    RunState,
    TransitionsBase,
    note_run_row,
)
from agentmill.store.db import Tx
from agentmill.store.models import runs, steps
from agentmill.store.notify import STEPS_CHANNEL
from agentmill.store.repositories.workers import declare_silent_lost


def _claimable(
    now: datetime, queues: Iterable[str] | None = None
) -> tuple[Select[Any], Select[Any]]:
    """Steps that may start at ``now``: ready and due; and held under a lease that expired.
    With ``queues``, only the steps routed to those named queues."""
    ready = select(steps.c.id).where(
        steps.c.status.in_((StepStatus.QUEUED, StepStatus.RETRYING)),
        steps.c.available_at <= now,
    )
    expired = select(steps.c.id, steps.c.attempt, steps.c.failures, steps.c.lease_owner).where(
        steps.c.status == StepStatus.RUNNING,
        steps.c.lease_expires_at.is_not(None),
        steps.c.lease_expires_at < now,
    )
    if queues is not None:
        served = sorted(set(queues))
        only = steps.c.queue == served[0] if len(served) == 1 else steps.c.queue.in_(served)
        ready = ready.where(only)
        expired = expired.where(only)
    return ready, expired


class ClaimTransitions(TransitionsBase):
    """Leasing ready steps to workers."""

    def claim(
        self,
        tx: Tx,
        *,
        owner: str,
        limit: int,
        root_run_id: str | None = None,
        queues: Iterable[str] | None = None,
    ) -> list[Claim]:
        """Lease up to ``limit`` ready steps: queued, due for retry, or whose lease expired;
        only from the named ``queues`` (None: every queue)."""
        if limit <= 0:
            return []
        ready, expired = _claimable(tx.now, queues)
        if root_run_id:
            ready = ready.where(steps.c.root_run_id == root_run_id)
            expired = expired.where(steps.c.root_run_id == root_run_id)
        return self._take(
            tx, owner, ready.order_by(steps.c.available_at).limit(limit), expired, limit
        )

    def claim_ids(
        self,
        tx: Tx,
        *,
        owner: str,
        step_ids: Iterable[str],
        queues: Iterable[str] | None = None,
    ) -> list[Claim]:
        """Lease these steps (a queue delivered their ids) if they may start now: ready and
        due, or held under a lease that expired, and (with ``queues``) routed to one of those
        named queues. Any other is left as it is."""
        ids = sorted(set(step_ids))
        if not ids:
            return []
        ready, expired = _claimable(tx.now, queues)
        return self._take(
            tx,
            owner,
            ready.where(steps.c.id.in_(ids)),
            expired.where(steps.c.id.in_(ids)),
            len(ids),
        )

    def still_claimable(
        self, tx: Tx, step_ids: Iterable[str], queues: Iterable[str] | None = None
    ) -> set[str]:
        """Those of ``step_ids`` that may start now: after ``claim_ids``, the ones it skipped
        because another transaction held their rows (a claim in flight, a relay marking steps
        sent), which a queue should offer again rather than drop."""
        ids = sorted(set(step_ids))
        if not ids:
            return set()
        ready, expired = _claimable(tx.now, queues)
        found = set(tx.conn.scalars(ready.where(steps.c.id.in_(ids))))
        found.update(row.id for row in tx.conn.execute(expired.where(steps.c.id.in_(ids))))
        return found

    def _take(
        self, tx: Tx, owner: str, ready: Select[Any], expired: Select[Any], limit: int
    ) -> list[Claim]:
        if tx.is_postgres:  # another worker's claim in flight skips, it does not wait
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

    def to_publish(
        self, tx: Tx, *, limit: int, redeliver_after: float | None = None
    ) -> list[tuple[str, str]]:
        """(step id, named queue) of the ready steps a message queue has not carried since they
        became ready (new, retried, given back), marked as carried now. With ``redeliver_after`` (seconds), also the ones
        whose message may have been lost: still ready that long after it was sent, or held
        under a lease that expired since (a worker died and no one took its message over)."""
        unsent = or_(steps.c.published_at.is_(None), steps.c.published_at < steps.c.available_at)
        if redeliver_after is not None:
            stale = tx.now - timedelta(seconds=redeliver_after)
            unsent = or_(unsent, steps.c.published_at < stale)
        ready, expired = _claimable(tx.now)
        ready = ready.add_columns(steps.c.queue)
        expired = expired.add_columns(steps.c.queue)
        due = ready.where(unsent).order_by(steps.c.available_at).limit(limit)
        if tx.is_postgres:  # two relays never send the same rows at once
            due = due.with_for_update(skip_locked=True)
        found = [(row.id, row.queue) for row in tx.conn.execute(due)]
        if redeliver_after is not None and len(found) < limit:
            orphaned = expired.where(
                or_(
                    steps.c.published_at.is_(None),
                    steps.c.published_at < steps.c.lease_expires_at,
                ),
                steps.c.lease_expires_at < tx.now - timedelta(seconds=redeliver_after),
            ).limit(limit - len(found))
            if tx.is_postgres:
                orphaned = orphaned.with_for_update(skip_locked=True)
            found += [(row.id, row.queue) for row in tx.conn.execute(orphaned)]
        if found:
            ids = [step_id for step_id, _ in found]
            tx.conn.execute(update(steps).where(steps.c.id.in_(ids)).values(published_at=tx.now))
        return found

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

    def take_over_silent(self, tx: Tx, *, me: str, silent_for: timedelta) -> list[str]:
        """Declare lost the workers silent for ``silent_for`` (see ``declare_silent_lost``) and
        expire the leases of the steps they were running, so that any worker claims them now
        rather than when the leases run out. The claim is the usual one: a new attempt, so the
        lost one cannot record a result (the attempt fences it), and a step that keeps losing
        its worker is given up. Returns the workers declared lost."""
        lost = declare_silent_lost(tx, me=me, silent_for=silent_for)
        if not lost:
            return []
        held = select(
            steps.c.id,
            steps.c.run_id,
            steps.c.step_key,
            steps.c.attempt,
            steps.c.lease_owner,
            steps.c.lease_expires_at,
        ).where(steps.c.status == StepStatus.RUNNING, steps.c.lease_owner.in_(lost))
        if tx.is_postgres:  # a row locked is being recorded or claimed right now: left be
            held = held.with_for_update(skip_locked=True)
        rows = tx.conn.execute(held).all()
        if rows:
            tx.conn.execute(
                update(steps)
                .where(steps.c.id.in_([row.id for row in rows]))
                .values(lease_expires_at=tx.now - timedelta(microseconds=1))
            )
        states: dict[str, RunState] = {}
        for row in rows:
            state = states.get(row.run_id)
            if state is None:
                state = states[row.run_id] = self._load_run(tx, row.run_id)
            self._event(
                tx,
                state,
                "step.worker_lost",
                row.step_key,
                row.attempt,
                level="warning",
                owner=row.lease_owner,
                declared_by=me,
                # When the lease would have run out: the takeover is this much earlier.
                lease_expires_at=row.lease_expires_at.isoformat() if row.lease_expires_at else None,
            )
        if rows and tx.is_postgres:
            tx.notify.add((STEPS_CHANNEL, "0"))  # other workers: take them now
        self._write_events(tx)
        return lost

    def release(self, tx: Tx, *, owner: str, step_ids: Iterable[str]) -> None:
        """Give steps back (a worker stopping) so another worker takes them at once. The
        interrupted attempt can no longer record a result: its step is not RUNNING any more."""
        ids = list(step_ids)
        if not ids:
            return
        rows = tx.conn.execute(
            update(steps)
            .where(
                steps.c.id.in_(ids),
                steps.c.lease_owner == owner,
                steps.c.status == StepStatus.RUNNING,
            )
            .values(
                status=StepStatus.QUEUED,
                available_at=tx.now,
                lease_owner=None,
                lease_expires_at=None,
            )
            .returning(steps.c.run_id, steps.c.step_key, steps.c.attempt)
        ).all()
        for row in rows:
            state = self._load_run(tx, row.run_id)
            self._event(tx, state, "step.released", row.step_key, row.attempt, owner=owner)
        if rows and tx.is_postgres:
            tx.notify.add((STEPS_CHANNEL, "0"))  # other workers: take them now
        self._write_events(tx)

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
        self._read_runs(tx, (row.run_id for row in rows))
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
                    caller=state.caller,
                )
            )
        pending = [state.id for state in by_run.values() if state.status == RunStatus.PENDING]
        if pending:  # one statement for every run whose first step this claim starts
            started = set(
                tx.conn.scalars(
                    update(runs)
                    .where(runs.c.id.in_(pending), runs.c.status == RunStatus.PENDING)
                    .values(status=RunStatus.RUNNING, started_at=tx.now)
                    .returning(runs.c.id)
                )
            )
            for run_id in pending:
                if run_id in started:
                    note_run_row(tx, run_id, status=RunStatus.RUNNING)
                    self._event(tx, by_run[run_id], "run.started")
        return claims

    def _give_up_lost(self, tx: Tx, step_id: str, attempt: int, owner: str | None) -> None:
        row = tx.conn.execute(
            select(steps.c.run_id, steps.c.step_key, steps.c.spec_id, steps.c.parent_step_id).where(
                steps.c.id == step_id
            )
        ).one()
        state = self._lock_run(tx, row.run_id)
        message = f"step {row.step_key!r} lost its worker {attempt} times (last: {owner})"
        self._mark_failed(tx, state, step_id, row.step_key, attempt, message)
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
        self._flush(tx, state)
