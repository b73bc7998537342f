"""Workspaces and their members."""

from __future__ import annotations

from typing import Annotated, TypedDict

from fastapi import APIRouter, Request

from agentmill.api.deps import CurrentUser, DbDep, PrincipalDep, WorkspaceAccess, require
from agentmill.api.schemas import (
    MemberCreate,
    MemberPublic,
    MemberUpdate,
    WorkspaceCreate,
    WorkspacePublic,
    WorkspaceUpdate,
)
from agentmill.domain.permissions import Permission, Role
from agentmill.engine.engine import Engine
from agentmill.store.repositories import workspaces

router = APIRouter(prefix="/workspaces", tags=["workspaces"])

Read = Annotated[WorkspaceAccess, require(Permission.WORKFLOW_READ)]
Manage = Annotated[WorkspaceAccess, require(Permission.WORKSPACE_MANAGE)]
ManageMembers = Annotated[WorkspaceAccess, require(Permission.MEMBERS_MANAGE)]


def _public(record: workspaces.WorkspaceRecord) -> WorkspacePublic:
    return WorkspacePublic(
        id=record.id, name=record.name, created_at=record.created_at, role=record.role
    )


def _member(record: workspaces.MemberRecord) -> MemberPublic:
    return MemberPublic(
        user_id=record.user_id,
        email=record.email,
        name=record.name,
        role=record.role,
        joined_at=record.joined_at,
    )


class _Actor(TypedDict):
    actor_id: str
    actor_cap: Role | None


def _actor(access: WorkspaceAccess) -> _Actor:
    """Who changes the membership: the store re-reads their role in the same transaction, so a
    role lost a moment ago (or a key's cap) counts."""
    principal = access.principal
    return _Actor(actor_id=principal.user_id, actor_cap=principal.key_role)


@router.post("", status_code=201, response_model=WorkspacePublic)
async def create_workspace(
    body: WorkspaceCreate, caller: CurrentUser, db: DbDep
) -> WorkspacePublic:
    """Create a workspace; you become its owner."""
    record = await db.write(
        lambda tx: workspaces.create_workspace(tx, name=body.name, owner_id=caller.user_id)
    )
    return _public(record)


@router.get("", response_model=list[WorkspacePublic])
async def list_workspaces(caller: PrincipalDep, db: DbDep) -> list[WorkspacePublic]:
    """Workspaces you are a member of (for an API key: its own workspace)."""
    if caller.key_workspace_id is not None and caller.key_role is not None:
        ws, role = caller.key_workspace_id, caller.key_role
        return [_public(await db.read(lambda tx: workspaces.get_workspace(tx, ws, role)))]
    records = await db.read(lambda tx: workspaces.list_workspaces(tx, caller.user_id))
    return [_public(r) for r in records]


@router.get("/{ws}", response_model=WorkspacePublic)
async def get_workspace(access: Read, db: DbDep) -> WorkspacePublic:
    """One workspace."""
    return _public(
        await db.read(lambda tx: workspaces.get_workspace(tx, access.workspace_id, access.role))
    )


@router.patch("/{ws}", response_model=WorkspacePublic)
async def rename_workspace(body: WorkspaceUpdate, access: Manage, db: DbDep) -> WorkspacePublic:
    """Rename a workspace (owners)."""
    await db.write(lambda tx: workspaces.rename_workspace(tx, access.workspace_id, body.name))
    return _public(
        await db.read(lambda tx: workspaces.get_workspace(tx, access.workspace_id, access.role))
    )


@router.delete("/{ws}", status_code=204)
async def delete_workspace(access: Manage, db: DbDep, request: Request) -> None:
    """Delete a workspace and everything in it (owners)."""
    await db.write(lambda tx: workspaces.delete_workspace(tx, access.workspace_id))
    engine: Engine = request.app.state.engine
    # After the commit: a file without its row is unreachable, a row without its file is not.
    await engine.artifacts.remove_workspace(access.workspace_id)


@router.get("/{ws}/members", response_model=list[MemberPublic])
async def list_members(access: Read, db: DbDep) -> list[MemberPublic]:
    """Members and their roles."""
    return [
        _member(m)
        for m in await db.read(lambda tx: workspaces.list_members(tx, access.workspace_id))
    ]


@router.post("/{ws}/members", status_code=201, response_model=MemberPublic)
async def add_member(body: MemberCreate, access: ManageMembers, db: DbDep) -> MemberPublic:
    """Add a registered user with a role (admins and owners)."""
    return _member(
        await db.write(
            lambda tx: workspaces.add_member(
                tx, access.workspace_id, body.email, body.role, **_actor(access)
            )
        )
    )


@router.patch("/{ws}/members/{user_id}", status_code=204)
async def change_member_role(
    user_id: str, body: MemberUpdate, access: ManageMembers, db: DbDep
) -> None:
    """Change a member's role (not your own; only owners change owners; never above your own
    role); the last owner cannot be demoted."""
    await db.write(
        lambda tx: workspaces.change_role(
            tx, access.workspace_id, user_id, body.role, **_actor(access)
        )
    )


@router.delete("/{ws}/members/{user_id}", status_code=204)
async def remove_member(user_id: str, access: ManageMembers, db: DbDep) -> None:
    """Remove a member (only owners remove owners; anyone who may manage members may leave);
    the last owner cannot be removed. Their API keys in this workspace are revoked."""
    await db.write(
        lambda tx: workspaces.remove_member(tx, access.workspace_id, user_id, **_actor(access))
    )
