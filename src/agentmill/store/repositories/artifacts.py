"""Artifact rows: which files a run has, with their size, digest and media type.

The bytes are not here (see ``artifacts/store.py``). Reads take the run (or workspace) they
are scoped to; the API checks the caller's access to the run before it asks.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, insert, select

from agentmill.ids import new_id
from agentmill.store.db import Tx
from agentmill.store.models import artifacts, runs

_a = artifacts.c


@dataclass(frozen=True, kw_only=True)
class ArtifactRecord:
    """One stored artifact of a run."""

    id: str
    run_id: str
    root_run_id: str
    workspace_id: str
    step_key: str | None
    name: str
    size: int
    sha256: str
    media_type: str
    created_at: datetime


@dataclass(frozen=True, kw_only=True)
class RunPlace:
    """Where a run's artifacts belong: its workspace and its run tree."""

    workspace_id: str
    root_run_id: str


def _record(row: Mapping[Any, Any]) -> ArtifactRecord:
    return ArtifactRecord(**{key: row[key] for key in ArtifactRecord.__dataclass_fields__})


def run_place(tx: Tx, run_id: str) -> RunPlace | None:
    """The run's workspace and root run, or None when there is no such run."""
    row = tx.conn.execute(
        select(runs.c.workspace_id, runs.c.root_run_id).where(runs.c.id == run_id)
    ).first()
    return None if row is None else RunPlace(workspace_id=row[0], root_run_id=row[1])


def put(
    tx: Tx,
    *,
    run_id: str,
    place: RunPlace,
    step_key: str | None,
    name: str,
    size: int,
    sha256: str,
    media_type: str,
) -> ArtifactRecord:
    """Record an artifact whose bytes are in place; a row of the same name is replaced."""
    tx.conn.execute(delete(artifacts).where(_a.run_id == run_id, _a.name == name))
    values: dict[str, Any] = {
        "id": new_id("art"),
        "run_id": run_id,
        "root_run_id": place.root_run_id,
        "workspace_id": place.workspace_id,
        "step_key": step_key,
        "name": name,
        "size": size,
        "sha256": sha256,
        "media_type": media_type,
        "created_at": tx.now,
    }
    tx.conn.execute(insert(artifacts).values(**values))
    return _record(values)


def list_for_run(
    tx: Tx, run_id: str, step_keys: Iterable[str] | None = None
) -> list[ArtifactRecord]:
    """The run's artifacts by name (only those the steps ``step_keys`` wrote, when given; a
    map step's include its items', ``key[0]``, ``key[1]``, ...)."""
    query = select(artifacts).where(_a.run_id == run_id).order_by(_a.name)
    found = [_record(row._mapping) for row in tx.conn.execute(query)]
    if step_keys is None:
        return found
    keys = set(step_keys)
    return [r for r in found if r.step_key is not None and step_owner(r.step_key) in keys]


def step_owner(step_key: str) -> str:
    """The workflow step a step key belongs to: ``review`` for ``review`` and ``review[3]``."""
    return step_key.partition("[")[0]


def find(tx: Tx, run_id: str, name: str) -> ArtifactRecord | None:
    """The run's artifact called ``name``, if any."""
    row = tx.conn.execute(select(artifacts).where(_a.run_id == run_id, _a.name == name)).first()
    return None if row is None else _record(row._mapping)
