"""Workspaces and their members. Owners can never drop to zero."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, insert, select, update

from agentmill.domain import membership
from agentmill.domain.membership import weaker
from agentmill.domain.permissions import Role
from agentmill.errors import Conflict, NotFound, PermissionDenied
from agentmill.ids import new_id
from agentmill.store.db import Tx
from agentmill.store.models import (
    api_keys,
    artifacts,
    invitations,
    memberships,
    memories,
    users,
    workspaces,
)


@dataclass(frozen=True, kw_only=True)
class WorkspaceRecord:
    id: str
    name: str
    created_at: datetime
    role: Role  # the caller's role in it


@dataclass(frozen=True, kw_only=True)
class MemberRecord:
    user_id: str
    email: str
    name: str
    role: Role
    joined_at: datetime


def create_workspace(tx: Tx, *, name: str, owner_id: str) -> WorkspaceRecord:
    workspace_id = new_id("ws")
    tx.conn.execute(insert(workspaces).values(id=workspace_id, name=name, created_at=tx.now))
    tx.conn.execute(
        insert(memberships).values(
            workspace_id=workspace_id, user_id=owner_id, role=Role.OWNER, created_at=tx.now
        )
    )
    return WorkspaceRecord(id=workspace_id, name=name, created_at=tx.now, role=Role.OWNER)


def role_in(tx: Tx, workspace_id: str, user_id: str) -> Role | None:
    role = tx.conn.scalar(
        select(memberships.c.role).where(
            memberships.c.workspace_id == workspace_id, memberships.c.user_id == user_id
        )
    )
    return Role(role) if role else None


def get_workspace(tx: Tx, workspace_id: str, role: Role) -> WorkspaceRecord:
    row = tx.conn.execute(select(workspaces).where(workspaces.c.id == workspace_id)).first()
    if row is None:
        raise NotFound(f"workspace {workspace_id!r} not found")
    return WorkspaceRecord(id=row.id, name=row.name, created_at=row.created_at, role=role)


def list_workspaces(tx: Tx, user_id: str) -> list[WorkspaceRecord]:
    rows = tx.conn.execute(
        select(workspaces, memberships.c.role)
        .join(memberships, memberships.c.workspace_id == workspaces.c.id)
        .where(memberships.c.user_id == user_id)
        .order_by(workspaces.c.created_at, workspaces.c.id)
    )
    return [
        WorkspaceRecord(id=r.id, name=r.name, created_at=r.created_at, role=Role(r.role))
        for r in rows
    ]


def rename_workspace(tx: Tx, workspace_id: str, name: str) -> None:
    tx.conn.execute(update(workspaces).where(workspaces.c.id == workspace_id).values(name=name))


def delete_workspace(tx: Tx, workspace_id: str) -> None:
    tx.conn.execute(delete(memberships).where(memberships.c.workspace_id == workspace_id))
    tx.conn.execute(delete(invitations).where(invitations.c.workspace_id == workspace_id))
    # No foreign key cascades to memories (see models.Memory).
    tx.conn.execute(delete(memories).where(memories.c.workspace_id == workspace_id))
    # Artifact rows too; their files go after the commit (api/routes/workspaces.py).
    tx.conn.execute(delete(artifacts).where(artifacts.c.workspace_id == workspace_id))
    tx.conn.execute(delete(workspaces).where(workspaces.c.id == workspace_id))


def list_members(tx: Tx, workspace_id: str) -> list[MemberRecord]:
    rows = tx.conn.execute(
        select(
            users.c.id, users.c.email, users.c.name, memberships.c.role, memberships.c.created_at
        )
        .join(memberships, memberships.c.user_id == users.c.id)
        .where(memberships.c.workspace_id == workspace_id)
        .order_by(memberships.c.created_at, users.c.id)
    )
    return [
        MemberRecord(
            user_id=r.id, email=r.email, name=r.name, role=Role(r.role), joined_at=r.created_at
        )
        for r in rows
    ]


def lock_workspace(tx: Tx, workspace_id: str) -> None:
    """Serialize membership changes in one workspace: on PostgreSQL a row lock taken first, so
    every read after it (the caller's role, the target's, the owner count) sees the changes
    committed before; two owners demoting each other at once cannot both pass. SQLite
    serializes writers already (BEGIN IMMEDIATE)."""
    if tx.is_postgres:
        tx.conn.execute(
            select(workspaces.c.id).where(workspaces.c.id == workspace_id).with_for_update()
        )


def actor_role(tx: Tx, workspace_id: str, actor_id: str, cap: Role | None) -> Role:
    """The acting user's role now, capped by the API key's role when it acts through one."""
    role = role_in(tx, workspace_id, actor_id)
    if role is None:
        raise PermissionDenied("only members of this workspace may manage its members")
    return weaker(role, cap) if cap is not None else role


def add_member(
    tx: Tx,
    workspace_id: str,
    email: str,
    role: Role,
    *,
    actor_id: str,
    actor_cap: Role | None = None,
) -> MemberRecord:
    """Add a registered user; ``actor_id`` (capped by ``actor_cap``, a key's role) must be
    allowed to grant ``role`` (domain/membership.py)."""
    lock_workspace(tx, workspace_id)
    membership.check_add(actor_role(tx, workspace_id, actor_id, actor_cap), role)
    user = tx.conn.execute(select(users).where(users.c.email == email.strip().lower())).first()
    if user is None:
        raise NotFound(f"no account with email {email!r}; they must register first")
    if role_in(tx, workspace_id, user.id) is not None:
        raise Conflict(f"{email!r} is already a member of this workspace")
    tx.conn.execute(
        insert(memberships).values(
            workspace_id=workspace_id, user_id=user.id, role=role, created_at=tx.now
        )
    )
    return MemberRecord(
        user_id=user.id, email=user.email, name=user.name, role=role, joined_at=tx.now
    )


def change_role(
    tx: Tx,
    workspace_id: str,
    user_id: str,
    role: Role,
    *,
    actor_id: str,
    actor_cap: Role | None = None,
) -> None:
    lock_workspace(tx, workspace_id)
    actor = actor_role(tx, workspace_id, actor_id, actor_cap)
    current = role_in(tx, workspace_id, user_id)
    if current is None:
        raise NotFound(f"user {user_id!r} is not a member of this workspace")
    membership.check_change(actor, current, role, is_self=user_id == actor_id)
    if current == Role.OWNER and role != Role.OWNER:
        _keep_an_owner(tx, workspace_id)
    tx.conn.execute(
        update(memberships)
        .where(memberships.c.workspace_id == workspace_id, memberships.c.user_id == user_id)
        .values(role=role)
    )


def remove_member(
    tx: Tx,
    workspace_id: str,
    user_id: str,
    *,
    actor_id: str,
    actor_cap: Role | None = None,
) -> None:
    """Remove a member (or leave, for ``user_id == actor_id``); their API keys in this
    workspace are revoked with the membership."""
    lock_workspace(tx, workspace_id)
    is_self = user_id == actor_id
    actor = None if is_self else actor_role(tx, workspace_id, actor_id, actor_cap)
    current = role_in(tx, workspace_id, user_id)
    if current is None:
        raise NotFound(f"user {user_id!r} is not a member of this workspace")
    membership.check_remove(actor, current, is_self=is_self)
    if current == Role.OWNER:
        _keep_an_owner(tx, workspace_id)
    tx.conn.execute(
        delete(memberships).where(
            memberships.c.workspace_id == workspace_id, memberships.c.user_id == user_id
        )
    )
    tx.conn.execute(
        update(api_keys)
        .where(
            api_keys.c.workspace_id == workspace_id,
            api_keys.c.created_by == user_id,
            api_keys.c.revoked_at.is_(None),
        )
        .values(revoked_at=tx.now)
    )


def _keep_an_owner(tx: Tx, workspace_id: str) -> None:
    # Counted after lock_workspace: no concurrent demotion can slip between count and update.
    owners = tx.conn.scalar(
        select(func.count()).where(
            memberships.c.workspace_id == workspace_id, memberships.c.role == Role.OWNER
        )
    )
    if (owners or 0) <= 1:
        raise Conflict("a workspace needs at least one owner; make someone else owner first")
