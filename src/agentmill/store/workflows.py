"""Workflows and their immutable versions."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, insert, select, update

from agentmill.domain.spec import WorkflowSpec
from agentmill.domain.states import ACTIVE_RUN_STATUSES
from agentmill.errors import Conflict, NotFound
from agentmill.ids import new_id
from agentmill.store.db import Tx
from agentmill.store.models import LOCAL_WORKSPACE, runs, workflow_versions, workflows


@dataclass(frozen=True, kw_only=True)
class VersionRef:
    workflow_id: str
    version_id: str
    version: int
    created: bool


def spec_document(spec: WorkflowSpec) -> dict[str, Any]:
    """The stored form of a spec: what the author wrote (unset fields stay unset)."""
    return spec.model_dump(mode="json", exclude_unset=True)


def save_version(
    tx: Tx, spec: WorkflowSpec, source: str | None = None, *, workspace_id: str = LOCAL_WORKSPACE
) -> VersionRef:
    """Store ``spec`` as the next version of the workspace's workflow of that name, or reuse
    the latest version if it is identical."""
    document = spec_document(spec)
    checksum = hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()
    row = tx.conn.execute(
        select(workflows.c.id, workflows.c.latest_version).where(
            workflows.c.workspace_id == workspace_id, workflows.c.name == spec.name
        )
    ).first()
    if row is None:
        workflow_id = new_id("wf")
        tx.conn.execute(
            insert(workflows).values(
                id=workflow_id,
                workspace_id=workspace_id,
                name=spec.name,
                description=spec.description,
                latest_version=0,
                created_at=tx.now,
                updated_at=tx.now,
            )
        )
        latest = 0
    else:
        workflow_id, latest = row.id, row.latest_version
        same = tx.conn.execute(
            select(workflow_versions.c.id).where(
                workflow_versions.c.workflow_id == workflow_id,
                workflow_versions.c.version == latest,
                workflow_versions.c.checksum == checksum,
            )
        ).first()
        if same is not None:
            return VersionRef(
                workflow_id=workflow_id, version_id=same.id, version=latest, created=False
            )
    version_id = new_id("wfv")
    tx.conn.execute(
        insert(workflow_versions).values(
            id=version_id,
            workflow_id=workflow_id,
            version=latest + 1,
            checksum=checksum,
            spec=document,
            source=source,
            created_at=tx.now,
        )
    )
    tx.conn.execute(
        update(workflows)
        .where(workflows.c.id == workflow_id)
        .values(latest_version=latest + 1, description=spec.description, updated_at=tx.now)
    )
    return VersionRef(
        workflow_id=workflow_id, version_id=version_id, version=latest + 1, created=True
    )


def load_spec(tx: Tx, version_id: str) -> WorkflowSpec:
    document = tx.conn.scalar(
        select(workflow_versions.c.spec).where(workflow_versions.c.id == version_id)
    )
    if document is None:
        raise NotFound(f"workflow version {version_id!r} not found")
    return WorkflowSpec.model_validate(document)


@dataclass(frozen=True, kw_only=True)
class WorkflowRecord:
    id: str
    workspace_id: str
    name: str
    description: str | None
    latest_version: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, kw_only=True)
class VersionRecord:
    id: str
    workflow_id: str
    version: int
    spec: dict[str, Any]
    source: str | None
    created_at: datetime


def workflow_workspace(tx: Tx, workflow_id: str) -> str | None:
    value = tx.conn.scalar(select(workflows.c.workspace_id).where(workflows.c.id == workflow_id))
    return None if value is None else str(value)


def get_workflow(tx: Tx, workspace_id: str, workflow_id: str) -> WorkflowRecord:
    row = tx.conn.execute(
        select(workflows).where(
            workflows.c.id == workflow_id, workflows.c.workspace_id == workspace_id
        )
    ).first()
    if row is None:
        raise NotFound(f"workflow {workflow_id!r} not found")
    return WorkflowRecord(**row._mapping)


def find_workflow(tx: Tx, workspace_id: str, name: str) -> WorkflowRecord | None:
    row = tx.conn.execute(
        select(workflows).where(workflows.c.workspace_id == workspace_id, workflows.c.name == name)
    ).first()
    return WorkflowRecord(**row._mapping) if row else None


def list_workflows(tx: Tx, workspace_id: str) -> list[WorkflowRecord]:
    rows = tx.conn.execute(
        select(workflows).where(workflows.c.workspace_id == workspace_id).order_by(workflows.c.name)
    )
    return [WorkflowRecord(**r._mapping) for r in rows]


def list_versions(tx: Tx, workspace_id: str, workflow_id: str) -> list[VersionRecord]:
    get_workflow(tx, workspace_id, workflow_id)
    rows = tx.conn.execute(
        select(workflow_versions)
        .where(workflow_versions.c.workflow_id == workflow_id)
        .order_by(workflow_versions.c.version)
    )
    return [
        VersionRecord(
            id=r.id,
            workflow_id=r.workflow_id,
            version=r.version,
            spec=r.spec,
            source=r.source,
            created_at=r.created_at,
        )
        for r in rows
    ]


def get_version(
    tx: Tx, workspace_id: str, workflow_id: str, version: int | None = None
) -> VersionRecord:
    return version_of(tx, get_workflow(tx, workspace_id, workflow_id), version)


def version_of(tx: Tx, record: WorkflowRecord, version: int | None = None) -> VersionRecord:
    """A version of an already loaded (so already access-checked) workflow; default the latest."""
    number = record.latest_version if version is None else version
    row = tx.conn.execute(
        select(workflow_versions).where(
            workflow_versions.c.workflow_id == record.id, workflow_versions.c.version == number
        )
    ).first()
    if row is None:
        raise NotFound(f"workflow {record.name!r} has no version {number}")
    return VersionRecord(
        id=row.id,
        workflow_id=row.workflow_id,
        version=row.version,
        spec=row.spec,
        source=row.source,
        created_at=row.created_at,
    )


def delete_workflow(tx: Tx, workspace_id: str, workflow_id: str) -> None:
    get_workflow(tx, workspace_id, workflow_id)
    active = tx.conn.scalar(
        select(runs.c.id)
        .where(runs.c.workflow_id == workflow_id, runs.c.status.in_(ACTIVE_RUN_STATUSES))
        .limit(1)
    )
    if active is not None:
        raise Conflict(f"workflow has unfinished runs (for example {active}); cancel them first")
    tx.conn.execute(delete(workflows).where(workflows.c.id == workflow_id))
