"""API keys: random, shown once, stored hashed, scoped to one workspace and role."""

from __future__ import annotations

from fastapi import APIRouter

from agentmill.api.deps import DbDep, PrincipalDep, workspace_role
from agentmill.api.schemas import ApiKeyCreate, ApiKeyCreated, ApiKeyPublic
from agentmill.api.security import new_api_key
from agentmill.domain.permissions import PERMISSIONS, Permission, allows
from agentmill.errors import PermissionDenied
from agentmill.store.repositories import api_keys

router = APIRouter(prefix="/api-keys", tags=["api-keys"])


def _public(record: api_keys.ApiKeyRecord) -> ApiKeyPublic:
    return ApiKeyPublic(**record.__dict__)


async def _may_manage(db: DbDep, principal: PrincipalDep, workspace_id: str) -> None:
    role = await workspace_role(db, principal, workspace_id)
    if not allows(role, Permission.API_KEYS_MANAGE):
        raise PermissionDenied(f"role {role.value!r} may not manage API keys in this workspace")


@router.post("", status_code=201, response_model=ApiKeyCreated)
async def create_api_key(body: ApiKeyCreate, db: DbDep, principal: PrincipalDep) -> ApiKeyCreated:
    """Create a key for a workspace; the secret is in this response only."""
    await _may_manage(db, principal, body.workspace_id)
    caller_role = await workspace_role(db, principal, body.workspace_id)
    if not PERMISSIONS[body.role] <= PERMISSIONS[caller_role]:
        raise PermissionDenied(
            f"a {caller_role.value} cannot create a key with role {body.role.value!r}"
        )
    secret = new_api_key()
    record = await db.write(
        lambda tx: api_keys.create_api_key(
            tx,
            workspace_id=body.workspace_id,
            created_by=principal.user_id,
            name=body.name,
            role=body.role,
            prefix=secret.prefix,
            key_hash=secret.key_hash,
        )
    )
    return ApiKeyCreated(**record.__dict__, key=secret.key)


@router.get("", response_model=list[ApiKeyPublic])
async def list_api_keys(
    workspace_id: str, db: DbDep, principal: PrincipalDep
) -> list[ApiKeyPublic]:
    """Keys of a workspace (never their secrets)."""
    await _may_manage(db, principal, workspace_id)
    return [_public(k) for k in await db.read(lambda tx: api_keys.list_api_keys(tx, workspace_id))]


@router.delete("/{key_id}", status_code=204)
async def revoke_api_key(
    key_id: str, workspace_id: str, db: DbDep, principal: PrincipalDep
) -> None:
    """Revoke a key; it stops working at once."""
    await _may_manage(db, principal, workspace_id)
    await db.write(lambda tx: api_keys.revoke_api_key(tx, workspace_id, key_id))
