"""Runs: read, list, steps, metrics, cancel, and decisions and answers on human steps."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from agentmill.api.deps import (
    DbDep,
    PrincipalDep,
    WorkspaceAccess,
    object_access,
    require,
    role_of,
)
from agentmill.api.params import Timestamp
from agentmill.api.runs_view import run_public, step_public
from agentmill.api.schemas import (
    Decision,
    FormAnswer,
    RunMetrics,
    RunPage,
    RunPublic,
    StepMetrics,
    StepPublic,
)
from agentmill.domain.permissions import Permission, allows
from agentmill.domain.states import RunStatus
from agentmill.engine.engine import Engine
from agentmill.errors import ConfigError, NotFound, PermissionDenied
from agentmill.store import queries
from agentmill.store.db import Tx

router = APIRouter(tags=["runs"])

Read = Annotated[WorkspaceAccess, require(Permission.WORKFLOW_READ)]


async def run_access(
    db: DbDep, principal: PrincipalDep, run_id: str, permission: Permission
) -> str:
    """The run's workspace if the caller may ``permission`` there; another tenant's run is 404."""
    return await object_access(
        db,
        principal,
        permission,
        what=f"run {run_id!r}",
        workspace_of=lambda tx: queries.run_workspace(tx, run_id),
    )


def _engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


@router.get("/workspaces/{ws}/runs", response_model=RunPage)
async def list_runs(
    access: Read,
    db: DbDep,
    status: RunStatus | None = None,
    workflow_id: str | None = None,
    created_after: Timestamp | None = None,
    created_before: Timestamp | None = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> RunPage:
    """Runs in the workspace, newest first, one page at a time."""
    try:
        position = queries.decode_cursor(cursor) if cursor else None
    except ValueError:
        raise ConfigError("cursor is not one this server gave out") from None
    page = await db.read(
        lambda tx: queries.list_runs(
            tx,
            access.workspace_id,
            status=status,
            workflow_id=workflow_id,
            created_after=created_after,
            created_before=created_before,
            cursor=position,
            limit=limit,
        )
    )
    return RunPage(runs=[run_public(r) for r in page.runs], next_cursor=page.next_cursor)


@router.get("/runs/{run_id}", response_model=RunPublic)
async def get_run(run_id: str, db: DbDep, principal: PrincipalDep) -> RunPublic:
    """A run: status, inputs, outputs, error, usage."""

    def read(tx: Tx) -> queries.RunView:  # the access check and the run in one read
        run = queries.find_run(tx, run_id)
        role = role_of(tx, principal, run.workspace_id) if run else None
        if run is None or role is None:
            raise NotFound(f"run {run_id!r} not found")
        if not allows(role, Permission.WORKFLOW_READ):
            raise PermissionDenied(f"role {role.value!r} may not read runs in this workspace")
        return run

    return run_public(await db.read(read, point=True))


@router.get("/runs/{run_id}/steps", response_model=list[StepPublic])
async def list_steps(
    run_id: str, request: Request, db: DbDep, principal: PrincipalDep
) -> list[StepPublic]:
    """The run's steps in the order they became ready."""
    await run_access(db, principal, run_id, Permission.WORKFLOW_READ)
    return [step_public(s) for s in await _engine(request).steps(run_id)]


@router.get("/runs/{run_id}/metrics", response_model=RunMetrics)
async def run_metrics(
    run_id: str, request: Request, db: DbDep, principal: PrincipalDep
) -> RunMetrics:
    """Tokens, cost and durations per step and in total."""
    await run_access(db, principal, run_id, Permission.WORKFLOW_READ)
    engine = _engine(request)
    run = await engine.get_run(run_id)
    steps = await engine.steps(run_id)
    return RunMetrics(
        run_id=run.id,
        status=run.status,
        duration_s=run.duration_s,
        input_tokens=run.input_tokens,
        output_tokens=run.output_tokens,
        cost=run.cost,
        steps=[
            StepMetrics(
                key=s.key,
                status=s.status,
                attempts=s.attempt,
                input_tokens=s.input_tokens,
                output_tokens=s.output_tokens,
                cost=s.cost,
                duration_ms=s.duration_ms,
            )
            for s in steps
        ],
    )


@router.post("/runs/{run_id}/cancel", response_model=RunPublic)
async def cancel_run(
    run_id: str, request: Request, db: DbDep, principal: PrincipalDep
) -> RunPublic:
    """Cancel a run and everything under it; a finished run stays as it is."""
    await run_access(db, principal, run_id, Permission.RUN_CANCEL)
    engine = _engine(request)
    await engine.cancel(run_id, f"cancelled by {principal.who}")
    return run_public(await engine.get_run(run_id))


@router.post("/runs/{run_id}/steps/{step_key}/approve", response_model=RunPublic)
async def approve_step(
    run_id: str, step_key: str, body: Decision, request: Request, db: DbDep, principal: PrincipalDep
) -> RunPublic:
    """Approve a waiting human step; the run continues from it."""
    return await _decide(run_id, step_key, body, request, db, principal, approved=True)


@router.post("/runs/{run_id}/steps/{step_key}/reject", response_model=RunPublic)
async def reject_step(
    run_id: str, step_key: str, body: Decision, request: Request, db: DbDep, principal: PrincipalDep
) -> RunPublic:
    """Reject a waiting human step."""
    return await _decide(run_id, step_key, body, request, db, principal, approved=False)


@router.post("/runs/{run_id}/steps/{step_key}/respond", response_model=RunPublic)
async def respond_to_step(
    run_id: str,
    step_key: str,
    body: FormAnswer,
    request: Request,
    db: DbDep,
    principal: PrincipalDep,
) -> RunPublic:
    """Answer a waiting human step's form; the answer becomes its output."""
    return await _decide(
        run_id, step_key, body, request, db, principal, approved=True, answer=body.answer
    )


async def _decide(
    run_id: str,
    step_key: str,
    body: Decision | FormAnswer,
    request: Request,
    db: DbDep,
    principal: PrincipalDep,
    *,
    approved: bool,
    answer: dict[str, Any] | None = None,
) -> RunPublic:
    await run_access(db, principal, run_id, Permission.RUN_APPROVE)
    engine = _engine(request)
    await engine.decide(
        run_id,
        step_key,
        approved=approved,
        by=principal.who,
        comment=body.comment,
        payload=body.payload if isinstance(body, Decision) else None,
        answer=answer,
    )
    return run_public(await engine.get_run(run_id))
