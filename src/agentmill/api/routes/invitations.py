"""Invitations to a workspace: how people get an account where registration is by invitation."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter

from agentmill.api.deps import DbDep, SettingsDep, WorkspaceAccess, require
from agentmill.api.schemas import InvitationCreate, InvitationCreated, InvitationPublic
from agentmill.domain.permissions import Permission
from agentmill.store.repositories import invitations

router = APIRouter(prefix="/workspaces", tags=["invitations"])

ManageMembers = Annotated[WorkspaceAccess, require(Permission.MEMBERS_MANAGE)]
TOKEN_PREFIX = "aminv_"


def hash_token(token: str) -> str:
    # 256 random bits: a fast hash is enough (as for API keys).
    return hashlib.sha256(token.encode()).hexdigest()


def _public(record: invitations.InvitationRecord) -> InvitationPublic:
    return InvitationPublic(**record.__dict__)


@router.post("/{ws}/invitations", status_code=201, response_model=InvitationCreated)
async def create_invitation(
    body: InvitationCreate, access: ManageMembers, db: DbDep, settings: SettingsDep
) -> InvitationCreated:
    """Invite someone by email with a role (admins and owners; never above your own role).
    The token is in this answer only: pass it on; they register with it and join this
    workspace."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    principal = access.principal
    record = await db.write(
        lambda tx: invitations.create_invitation(
            tx,
            access.workspace_id,
            body.email,
            body.role,
            token_hash=hash_token(token),
            lifetime=timedelta(days=settings.invitation_days),
            actor_id=principal.user_id,
            actor_cap=principal.key_role,
        )
    )
    return InvitationCreated(**record.__dict__, token=token)


@router.get("/{ws}/invitations", response_model=list[InvitationPublic])
async def list_invitations(access: ManageMembers, db: DbDep) -> list[InvitationPublic]:
    """Invitations not used yet (expired ones too, until revoked); never their tokens."""
    records = await db.read(lambda tx: invitations.list_invitations(tx, access.workspace_id))
    return [_public(r) for r in records]


@router.delete("/{ws}/invitations/{invitation_id}", status_code=204)
async def revoke_invitation(invitation_id: str, access: ManageMembers, db: DbDep) -> None:
    """Revoke an invitation: its token stops working at once."""
    await db.write(lambda tx: invitations.revoke_invitation(tx, access.workspace_id, invitation_id))
