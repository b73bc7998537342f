"""Worker processes reporting in: who is alive, how busy, since when."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, insert, select, update

from agentmill.store.db import Tx
from agentmill.store.models import worker_processes as workers

FORGET_AFTER = timedelta(days=1)  # stopped or silent workers are listed this long, then dropped


@dataclass(frozen=True, kw_only=True)
class WorkerRecord:
    id: str
    name: str
    host: str
    pid: int
    queue: str
    queues: tuple[str, ...] | None  # the named queues it serves; None: every queue
    concurrency: int
    in_flight: int
    started_at: datetime
    heartbeat_at: datetime
    stopped_at: datetime | None
    lost_at: datetime | None = None  # declared lost by another worker (it stopped reporting)

    def silent_for(self, now: datetime) -> float:
        """Seconds since it last reported."""
        return (now - self.heartbeat_at).total_seconds()

    def state(self, now: datetime, lease_seconds: float) -> str:
        """``alive`` if it reported within a lease period (it reports every third of one),
        ``stopped`` if it said goodbye, else ``lost``."""
        if self.stopped_at:
            return "stopped"
        if self.lost_at and self.heartbeat_at <= self.lost_at:
            return "lost"
        return "alive" if self.silent_for(now) <= lease_seconds else "lost"


def register_worker(
    tx: Tx,
    *,
    worker_id: str,
    name: str,
    host: str,
    pid: int,
    queue: str,
    concurrency: int,
    queues: tuple[str, ...] | None = None,
) -> None:
    tx.conn.execute(
        delete(workers).where(
            (workers.c.id == worker_id) | (workers.c.heartbeat_at < tx.now - FORGET_AFTER)
        )
    )
    tx.conn.execute(
        insert(workers).values(
            id=worker_id,
            name=name,
            host=host,
            pid=pid,
            queue=queue,
            queues=None if queues is None else ",".join(queues),
            concurrency=concurrency,
            in_flight=0,
            started_at=tx.now,
            heartbeat_at=tx.now,
            stopped_at=None,
        )
    )


def worker_heartbeat(tx: Tx, worker_id: str, *, in_flight: int, stopped: bool = False) -> None:
    # A worker declared lost that reports again was only slow: it is alive again (the steps
    # taken over from it stay taken; their attempt numbers fence its results out).
    values: dict[str, object] = {"heartbeat_at": tx.now, "in_flight": in_flight, "lost_at": None}
    if stopped:
        values["stopped_at"] = tx.now
    tx.conn.execute(update(workers).where(workers.c.id == worker_id).values(**values))


def declare_silent_lost(tx: Tx, *, me: str, silent_for: timedelta) -> list[str]:
    """Mark lost the workers (other than ``me``) that neither stopped nor reported for
    ``silent_for``; their ids. Conditional on the row as read, so of several workers looking at
    once exactly one declares each (on PostgreSQL the others skip the locked rows)."""
    cutoff = tx.now - silent_for
    silent = select(workers.c.id).where(
        workers.c.id != me,
        workers.c.stopped_at.is_(None),
        workers.c.lost_at.is_(None),
        workers.c.heartbeat_at < cutoff,
    )
    if tx.is_postgres:
        silent = silent.with_for_update(skip_locked=True)
    found = list(tx.conn.scalars(silent))
    if not found:
        return []
    return list(
        tx.conn.scalars(
            update(workers)
            .where(
                workers.c.id.in_(found),
                workers.c.lost_at.is_(None),
                workers.c.stopped_at.is_(None),
                workers.c.heartbeat_at < cutoff,
            )
            .values(lost_at=tx.now)
            .returning(workers.c.id)
        )
    )


def list_workers(tx: Tx) -> list[WorkerRecord]:
    rows = tx.conn.execute(select(workers).order_by(workers.c.started_at)).all()
    return [
        WorkerRecord(
            **{
                **row._mapping,
                "queues": None if row.queues is None else tuple(row.queues.split(",")),
            }
        )
        for row in rows
    ]
