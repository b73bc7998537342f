"""Workflows in a workspace: YAML or JSON in, validated like `agentmill validate`; versions."""

from __future__ import annotations

import json
from typing import Annotated

import anyio
import anyio.to_thread
from fastapi import APIRouter, Request

from agentmill.api.deps import DbDep, PrincipalDep, WorkspaceAccess, object_access, require
from agentmill.api.runs_view import run_public
from agentmill.api.schemas import (
    RunCreate,
    RunPublic,
    WorkflowDetail,
    WorkflowPublic,
    WorkflowVersionPublic,
)
from agentmill.config import Settings
from agentmill.domain.permissions import Permission
from agentmill.domain.source import Positions, load_document
from agentmill.domain.spec import WorkflowSpec
from agentmill.domain.validation import parse_spec
from agentmill.engine.claims import RunCaller
from agentmill.engine.engine import Engine
from agentmill.errors import Conflict, Problem, SpecError
from agentmill.store import workflows as repo
from agentmill.store.db import Database, Tx
from agentmill.store.workflows import VersionRef

router = APIRouter(tags=["workflows"])

Create = Annotated[WorkspaceAccess, require(Permission.WORKFLOW_CREATE)]
Read = Annotated[WorkspaceAccess, require(Permission.WORKFLOW_READ)]

_SPEC_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/yaml": {"schema": {"type": "string"}},
            "application/json": {"schema": {"type": "object"}},
        },
    }
}


# Parsing and validating a big workflow is CPU work: it runs on worker threads, at most two
# at once, so the event loop keeps answering (health checks, streams) meanwhile.
_PARSERS = anyio.CapacityLimiter(2)


async def _read_spec(request: Request) -> tuple[WorkflowSpec, str]:
    """A workflow from the body: YAML text, or a JSON object. Problems come back as 422."""
    raw = await request.body()
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    settings: Settings = request.app.state.settings
    max_steps = settings.max_workflow_steps
    return await anyio.to_thread.run_sync(_parse_body, raw, kind, max_steps, limiter=_PARSERS)


def _parse_body(raw: bytes, kind: str, max_steps: int) -> tuple[WorkflowSpec, str]:
    if kind in ("application/json", ""):
        try:
            document = json.loads(raw or b"null")
        except json.JSONDecodeError as exc:
            raise SpecError(
                [
                    Problem(
                        path="",
                        message=f"invalid JSON: {exc.msg}",
                        line=exc.lineno,
                        column=exc.colno,
                        source="<request>",
                    )
                ]
            ) from None
        if isinstance(document, dict) and "source" in document and len(document) == 1:
            source = str(document["source"])
            data, positions = load_document(source, source="<request>")
            return parse_spec(data, positions, max_steps=max_steps), source
        return parse_spec(
            document, Positions(source="<request>"), max_steps=max_steps
        ), raw.decode()
    if kind in ("application/yaml", "application/x-yaml", "text/yaml", "text/plain"):
        data, positions = load_document(raw, source="<request>")
        return parse_spec(data, positions, max_steps=max_steps), raw.decode("utf-8", "replace")
    raise SpecError(
        [
            Problem(
                path="",
                message=f"send YAML (application/yaml) or JSON, not {kind!r}",
                source="<request>",
            )
        ]
    )


async def _workflow_access(
    db: DbDep, principal: PrincipalDep, workflow_id: str, permission: Permission
) -> str:
    """The workflow's workspace, if the caller may ``permission`` there; else 404 or 403."""
    return await object_access(
        db,
        principal,
        permission,
        what=f"workflow {workflow_id!r}",
        workspace_of=lambda tx: repo.workflow_workspace(tx, workflow_id),
    )


def _public(record: repo.WorkflowRecord) -> WorkflowPublic:
    return WorkflowPublic(**record.__dict__)


@router.post(
    "/workspaces/{ws}/workflows",
    status_code=201,
    response_model=WorkflowDetail,
    openapi_extra=_SPEC_BODY,
)
async def create_workflow(request: Request, access: Create, db: DbDep) -> WorkflowDetail:
    """Create a workflow from YAML or JSON (validated; problems come back with line numbers)."""
    spec, source = await _read_spec(request)
    existing = await db.read(lambda tx: repo.find_workflow(tx, access.workspace_id, spec.name))
    if existing is not None:
        raise Conflict(
            f"workflow {spec.name!r} exists ({existing.id}); PUT /workflows/{existing.id} adds a version"
        )
    engine: Engine = request.app.state.engine
    ref = await engine.register(spec, source, workspace_id=access.workspace_id)
    return await _detail(db, access.workspace_id, ref.workflow_id)


@router.get("/workspaces/{ws}/workflows", response_model=list[WorkflowPublic])
async def list_workflows(access: Read, db: DbDep) -> list[WorkflowPublic]:
    """Workflows in the workspace."""
    return [
        _public(w) for w in await db.read(lambda tx: repo.list_workflows(tx, access.workspace_id))
    ]


@router.get("/workflows/{workflow_id}", response_model=WorkflowDetail)
async def get_workflow(workflow_id: str, db: DbDep, principal: PrincipalDep) -> WorkflowDetail:
    """A workflow with its latest spec."""
    ws = await _workflow_access(db, principal, workflow_id, Permission.WORKFLOW_READ)
    return await _detail(db, ws, workflow_id)


@router.put("/workflows/{workflow_id}", response_model=WorkflowDetail, openapi_extra=_SPEC_BODY)
async def update_workflow(
    workflow_id: str, request: Request, db: DbDep, principal: PrincipalDep
) -> WorkflowDetail:
    """Save a new version (runs keep the version they started on)."""
    ws = await _workflow_access(db, principal, workflow_id, Permission.WORKFLOW_UPDATE)
    spec, source = await _read_spec(request)
    current = await db.read(lambda tx: repo.get_workflow(tx, ws, workflow_id))
    if spec.name != current.name:
        raise SpecError(
            [
                Problem(
                    path="name",
                    message=f"name must stay {current.name!r} (create a new workflow to rename)",
                    source="<request>",
                )
            ]
        )
    engine: Engine = request.app.state.engine
    await engine.register(spec, source, workspace_id=ws)
    return await _detail(db, ws, workflow_id)


@router.delete("/workflows/{workflow_id}", status_code=204)
async def delete_workflow(workflow_id: str, db: DbDep, principal: PrincipalDep) -> None:
    """Delete a workflow and its finished runs."""
    ws = await _workflow_access(db, principal, workflow_id, Permission.WORKFLOW_DELETE)
    await db.write(lambda tx: repo.delete_workflow(tx, ws, workflow_id))


@router.get("/workflows/{workflow_id}/versions", response_model=list[WorkflowVersionPublic])
async def list_versions(
    workflow_id: str, db: DbDep, principal: PrincipalDep
) -> list[WorkflowVersionPublic]:
    """Every version, oldest first."""
    ws = await _workflow_access(db, principal, workflow_id, Permission.WORKFLOW_READ)
    return [
        WorkflowVersionPublic(**v.__dict__)
        for v in await db.read(lambda tx: repo.list_versions(tx, ws, workflow_id))
    ]


@router.post("/workflows/{workflow_id}/runs", status_code=202, response_model=RunPublic)
async def start_run(
    workflow_id: str, body: RunCreate, request: Request, db: DbDep, principal: PrincipalDep
) -> RunPublic:
    """Start a run with inputs (checked against the workflow's inputs)."""
    ws = await _workflow_access(db, principal, workflow_id, Permission.WORKFLOW_EXECUTE)
    version = await db.read(lambda tx: repo.get_version(tx, ws, workflow_id, body.version))
    engine: Engine = request.app.state.engine
    ref = VersionRef(
        workflow_id=workflow_id, version_id=version.id, version=version.version, created=False
    )
    caller = RunCaller(started_by=principal.user_id or None, api_key_id=principal.key_id)
    run_id = await engine.start_run(ref, body.inputs, caller=caller)
    return run_public(await engine.get_run(run_id))


async def _detail(db: Database, workspace_id: str, workflow_id: str) -> WorkflowDetail:
    def read(tx: Tx) -> WorkflowDetail:
        record = repo.get_workflow(tx, workspace_id, workflow_id)
        version = repo.version_of(tx, record)
        return WorkflowDetail(**record.__dict__, spec=version.spec)

    return await db.read(read)
