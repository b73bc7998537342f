"""Workflows and their immutable versions."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, select, update

from agentmill.domain.spec import WorkflowSpec
from agentmill.ids import new_id
from agentmill.store.db import Tx
from agentmill.store.models import workflow_versions, workflows


@dataclass(frozen=True, kw_only=True)
class VersionRef:
    workflow_id: str
    version_id: str
    version: int
    created: bool


def spec_document(spec: WorkflowSpec) -> dict[str, Any]:
    """The stored form of a spec: what the author wrote (unset fields stay unset)."""
    return spec.model_dump(mode="json", exclude_unset=True)


def save_version(tx: Tx, spec: WorkflowSpec, source: str | None = None) -> VersionRef:
    """Store ``spec`` as the workflow's next version, or reuse the latest if it is identical."""
    document = spec_document(spec)
    checksum = hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()
    row = tx.conn.execute(
        select(workflows.c.id, workflows.c.latest_version).where(workflows.c.name == spec.name)
    ).first()
    if row is None:
        workflow_id = new_id("wf")
        tx.conn.execute(
            insert(workflows).values(
                id=workflow_id,
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
        from agentmill.errors import NotFound

        raise NotFound(f"workflow version {version_id!r} not found")
    return WorkflowSpec.model_validate(document)
