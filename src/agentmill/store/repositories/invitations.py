"""Invitations to a workspace: created by those who may add members (never above their own
role), listed, revoked, and used once to register."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, insert, select

from agentmill.domain import membership
from agentmill.domain.permissions import Role
from agentmill.errors import Conflict, NotFound, PermissionDenied
from agentmill.ids import new_id
from agentmill.store.db import Tx
from agentmill.store.models import invitations, memberships, users
from agentmill.store.repositories.workspaces import actor_role, lock_workspace


@dataclass(frozen=True, kw_only=True)
class InvitationRecord:
    id: str
    workspace_id: str
    email: str
    role: Role
    created_by: str
    created_at: datetime
    expires_at: datetime


def _record(row: object) -> InvitationRecord:
    data = dict(row._mapping)  # type: ignore[attr-defined]
    data.pop("token_hash", None)
    data["role"] = Role(data["role"])
    return InvitationRecord(**data)


def create_invitation(
    tx: Tx,
    workspace_id: str,
    email: str,
    role: Role,
    *,
    token_hash: str,
    lifetime: timedelta,
    actor_id: str,
    actor_cap: Role | None = None,
) -> InvitationRecord:
    """Invite ``email`` with ``role``; the actor (capped by a key's role) must be allowed to add
    a member with that role (domain/membership.py)."""
    lock_workspace(tx, workspace_id)
    membership.check_add(actor_role(tx, workspace_id, actor_id, actor_cap), role)
    email = email.strip().lower()
    member = tx.conn.scalar(
        select(users.c.id)
        .join(memberships, memberships.c.user_id == users.c.id)
        .where(memberships.c.workspace_id == workspace_id, users.c.email == email)
    )
    if member is not None:
        raise Conflict(f"{email!r} is already a member of this workspace")
    record = InvitationRecord(
        id=new_id("inv"),
        workspace_id=workspace_id,
        email=email,
        role=role,
        created_by=actor_id,
        created_at=tx.now,
        expires_at=tx.now + lifetime,
    )
    tx.conn.execute(insert(invitations).values(**record.__dict__, token_hash=token_hash))
    return record


def list_invitations(tx: Tx, workspace_id: str) -> list[InvitationRecord]:
    """The workspace's open invitations, expired ones included (until revoked)."""
    rows = tx.conn.execute(
        select(invitations)
        .where(invitations.c.workspace_id == workspace_id)
        .order_by(invitations.c.created_at, invitations.c.id)
    )
    return [_record(r) for r in rows]


def revoke_invitation(tx: Tx, workspace_id: str, invitation_id: str) -> None:
    """Delete an invitation of this workspace; its token stops working at once."""
    deleted = tx.conn.execute(
        delete(invitations).where(
            invitations.c.workspace_id == workspace_id, invitations.c.id == invitation_id
        )
    )
    if not deleted.rowcount:
        raise NotFound(f"invitation {invitation_id!r} not found")


INVALID = "this invitation is not valid: unknown, revoked, used, expired or for another email"


def accept_invitation(tx: Tx, *, token_hash: str, email: str, user_id: str) -> InvitationRecord:
    """Make ``user_id`` (just registered as ``email``) a member as invited, and use the
    invitation up. The inviter must still be allowed to grant the role: an invitation from
    someone since removed or demoted no longer works."""
    row = tx.conn.execute(select(invitations).where(invitations.c.token_hash == token_hash)).first()
    if row is None or row.email != email.strip().lower() or row.expires_at <= tx.now:
        raise PermissionDenied(INVALID)
    invitation = _record(row)
    lock_workspace(tx, invitation.workspace_id)
    try:
        membership.check_add(
            actor_role(tx, invitation.workspace_id, invitation.created_by, None), invitation.role
        )
    except PermissionDenied:
        raise PermissionDenied(INVALID) from None
    tx.conn.execute(delete(invitations).where(invitations.c.id == invitation.id))
    tx.conn.execute(
        insert(memberships).values(
            workspace_id=invitation.workspace_id,
            user_id=user_id,
            role=invitation.role,
            created_at=tx.now,
        )
    )
    return invitation


def is_valid(tx: Tx, *, token_hash: str, email: str) -> bool:
    """Would ``accept_invitation`` take this token for ``email`` (checked before hashing a
    password)?"""
    row = tx.conn.execute(
        select(invitations.c.email, invitations.c.expires_at).where(
            invitations.c.token_hash == token_hash
        )
    ).first()
    return row is not None and row.email == email.strip().lower() and row.expires_at > tx.now
