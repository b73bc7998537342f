"""First start: an owner account, a workspace and an API key, so a new server is usable."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from sqlalchemy import func, select

from agentmill.api.security import hash_password, new_api_key
from agentmill.domain.permissions import Role
from agentmill.store.db import Database, Tx
from agentmill.store.models import users
from agentmill.store.repositories import accounts, api_keys, workspaces

FIRST_OWNER_EMAIL = "admin@example.com"  # a domain the email validator accepts


@dataclass(frozen=True, kw_only=True)
class FirstOwner:
    email: str
    password: str
    workspace_id: str
    api_key: str


async def bootstrap(db: Database) -> FirstOwner | None:
    """Create the first owner if there is no account yet; None when already set up."""
    password = secrets.token_urlsafe(12)
    password_hash = hash_password(password)
    key = new_api_key()

    def create(tx: Tx) -> FirstOwner | None:
        if tx.conn.scalar(select(func.count()).select_from(users)):
            return None
        user = accounts.create_user(
            tx, email=FIRST_OWNER_EMAIL, name="Admin", password_hash=password_hash
        )
        workspace = workspaces.create_workspace(tx, name="Default", owner_id=user.id)
        api_keys.create_api_key(
            tx,
            workspace_id=workspace.id,
            created_by=user.id,
            name="first key",
            role=Role.OWNER,
            prefix=key.prefix,
            key_hash=key.key_hash,
        )
        return FirstOwner(
            email=user.email, password=password, workspace_id=workspace.id, api_key=key.key
        )

    return await db.write(create)
