"""FastAPI dependencies, as ``Annotated`` aliases: routes read like their permission table."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from agentmill.api.security import api_key_prefix, hash_api_key, read_token, same_hash
from agentmill.config import Settings
from agentmill.domain.permissions import Permission, Role, allows
from agentmill.engine.live import LiveBus
from agentmill.errors import NotAuthenticated, NotFound, PermissionDenied
from agentmill.store.db import Database, Tx
from agentmill.store.repositories import accounts, api_keys, workspaces
from agentmill.store.repositories.accounts import UserRecord

_bearer = HTTPBearer(auto_error=False, description="A login access token or an API key.")


# Dependencies are ``async def`` even when they do not await: FastAPI runs plain functions in a
# thread pool, two thread hops per request for nothing.
async def _db(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


async def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def _live(request: Request) -> LiveBus:
    live: LiveBus = request.app.state.live
    return live


DbDep = Annotated[Database, Depends(_db)]
SettingsDep = Annotated[Settings, Depends(_settings)]
LiveDep = Annotated[LiveBus, Depends(_live)]


@dataclass(frozen=True, kw_only=True)
class Principal:
    """Who is calling: a signed-in user, or an API key acting in its one workspace."""

    user: UserRecord | None = None
    token_jti: str | None = None
    token_expires_at: datetime | None = None
    key_workspace_id: str | None = None
    key_role: Role | None = None  # the key's role, capped by its creator's current one
    key_id: str | None = None
    user_id: str = ""

    @property
    def who(self) -> str:
        """How the caller is named in a run's events (who cancelled, approved, re-drove)."""
        return self.user.email if self.user else f"API key {self.key_id}"


async def authenticate(db: Database, settings: Settings, secret: str) -> Principal:
    """Who ``secret`` (an API key or a login access token) belongs to; NotAuthenticated if no one."""
    if not secret:
        raise NotAuthenticated("missing bearer token (a login access token or an API key)")
    prefix = api_key_prefix(secret)
    if prefix is not None:
        found = await db.read(lambda tx: api_keys.key_by_prefix(tx, prefix), point=True)
        if found is None or not same_hash(found.key_hash, hash_api_key(secret)):
            raise NotAuthenticated("invalid or revoked API key")
        key = found.record
        return Principal(
            key_workspace_id=key.workspace_id,
            key_role=found.role,  # capped by the creator's current role
            key_id=key.id,
            user_id=key.created_by,
        )
    token = read_token(secret, settings.secret())
    if token is None:
        raise NotAuthenticated("invalid or expired access token")

    def signed_in_user(tx: Tx) -> UserRecord | None:
        if accounts.is_revoked(tx, token.jti):
            return None
        return accounts.user_by_id(tx, token.user_id)

    user = await db.read(signed_in_user, point=True)
    if user is None:
        raise NotAuthenticated(
            "access token was revoked (logged out) or its account no longer exists"
        )
    return Principal(
        user=user, token_jti=token.jti, token_expires_at=token.expires_at, user_id=user.id
    )


async def _principal(
    db: DbDep,
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise NotAuthenticated("missing bearer token (a login access token or an API key)")
    return await authenticate(db, settings, credentials.credentials)


PrincipalDep = Annotated[Principal, Depends(_principal)]


async def _current_user(principal: PrincipalDep) -> Principal:
    if principal.user is None:
        raise PermissionDenied("this needs a signed-in user, not an API key")
    return principal


CurrentUser = Annotated[Principal, Depends(_current_user)]


@dataclass(frozen=True, kw_only=True)
class WorkspaceAccess:
    workspace_id: str
    role: Role
    principal: Principal


async def workspace_role(db: Database, principal: Principal, workspace_id: str) -> Role:
    """The caller's role in ``workspace_id``; another tenant's workspace is simply not found."""
    if principal.key_workspace_id is not None:
        if principal.key_workspace_id != workspace_id or principal.key_role is None:
            raise NotFound(f"workspace {workspace_id!r} not found")
        return principal.key_role
    role = await db.read(
        lambda tx: workspaces.role_in(tx, workspace_id, principal.user_id), point=True
    )
    if role is None:
        raise NotFound(f"workspace {workspace_id!r} not found")
    return role


async def object_access(
    db: Database,
    principal: Principal,
    permission: Permission,
    *,
    what: str,
    workspace_of: Callable[[Tx], str | None],
) -> str:
    """For a workflow or run addressed by id alone: its workspace, if the caller may do
    ``permission`` there. Missing, or another tenant's, is the same 404 (decision 7)."""

    def check(tx: Tx) -> tuple[str, Role] | None:
        workspace_id = workspace_of(tx)
        role = role_of(tx, principal, workspace_id) if workspace_id else None
        return (workspace_id, role) if workspace_id and role else None

    found = await db.read(check, point=True)
    if found is None:
        raise NotFound(f"{what} not found")
    workspace_id, role = found
    if not allows(role, permission):
        raise PermissionDenied(
            f"role {role.value!r} may not {permission.value!r} in this workspace"
        )
    return workspace_id


def role_of(tx: Tx, principal: Principal, workspace_id: str) -> Role | None:
    """The caller's role in a workspace, inside a transaction already open (saves a read)."""
    if principal.key_workspace_id is not None:
        return principal.key_role if principal.key_workspace_id == workspace_id else None
    return workspaces.role_in(tx, workspace_id, principal.user_id)


def require(permission: Permission) -> object:
    """A dependency granting access to the ``{ws}`` path's workspace if the role allows it."""

    async def check(ws: str, db: DbDep, principal: PrincipalDep) -> WorkspaceAccess:
        role = await workspace_role(db, principal, ws)
        if not allows(role, permission):
            raise PermissionDenied(
                f"role {role.value!r} may not {permission.value!r} in this workspace"
            )
        return WorkspaceAccess(workspace_id=ws, role=role, principal=principal)

    return Depends(check)
