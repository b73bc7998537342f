"""Dead letters: steps that failed for good, listed and re-driven (DESIGN decision 2)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from agentmill.api.deps import DbDep, PrincipalDep, WorkspaceAccess, object_access, require
from agentmill.api.runs_view import run_public
from agentmill.api.schemas import DeadLetterPage, DeadLetterPublic, RunPublic
from agentmill.domain.permissions import Permission
from agentmill.engine.engine import Engine
from agentmill.store.dead_letters import step_workspace

router = APIRouter(tags=["dead-letters"])

Read = Annotated[WorkspaceAccess, require(Permission.WORKFLOW_READ)]


def _engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


@router.get("/workspaces/{ws}/dead-letters", response_model=DeadLetterPage)
async def list_dead_letters(
    access: Read,
    request: Request,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> DeadLetterPage:
    """Steps that failed for good, newest first, with their last error."""
    page = await _engine(request).dead_letters(access.workspace_id, cursor=cursor, limit=limit)
    return DeadLetterPage(
        dead_letters=[
            DeadLetterPublic.model_validate(letter, from_attributes=True)
            for letter in page.dead_letters
        ],
        next_cursor=page.next_cursor,
    )


@router.post("/dead-letters/{step_id}/redrive", response_model=RunPublic)
async def redrive(step_id: str, request: Request, db: DbDep, principal: PrincipalDep) -> RunPublic:
    """Run a dead letter again with fresh attempts; its run continues from it (returns the root run)."""
    await object_access(
        db,
        principal,
        Permission.WORKFLOW_EXECUTE,
        what=f"step {step_id!r}",
        workspace_of=lambda tx: step_workspace(tx, step_id),
    )
    return run_public(await _engine(request).redrive(step_id, by=principal.who))
