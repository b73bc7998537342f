"""API keys: created for a workspace with a role, shown once, revocable."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, bindparam, insert, select, update

from agentmill.domain.membership import weaker
from agentmill.domain.permissions import Role
from agentmill.errors import NotFound
from agentmill.ids import new_id
from agentmill.store.db import Tx
from agentmill.store.models import api_keys, memberships
from agentmill.store.prepared import Prepared


@dataclass(frozen=True, kw_only=True)
class ApiKeyRecord:
    id: str
    workspace_id: str
    created_by: str
    name: str
    prefix: str
    role: Role
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None


def _record(row: object) -> ApiKeyRecord:
    data = dict(row._mapping)  # type: ignore[attr-defined]
    data.pop("key_hash", None)
    data["role"] = Role(data["role"])
    return ApiKeyRecord(**data)


def create_api_key(
    tx: Tx, *, workspace_id: str, created_by: str, name: str, role: Role, prefix: str, key_hash: str
) -> ApiKeyRecord:
    key_id = new_id("key")
    tx.conn.execute(
        insert(api_keys).values(
            id=key_id,
            workspace_id=workspace_id,
            created_by=created_by,
            name=name,
            prefix=prefix,
            key_hash=key_hash,
            role=role,
            created_at=tx.now,
        )
    )
    return ApiKeyRecord(
        id=key_id,
        workspace_id=workspace_id,
        created_by=created_by,
        name=name,
        prefix=prefix,
        role=role,
        created_at=tx.now,
        revoked_at=None,
        last_used_at=None,
    )


def list_api_keys(tx: Tx, workspace_id: str) -> list[ApiKeyRecord]:
    rows = tx.conn.execute(
        select(api_keys)
        .where(api_keys.c.workspace_id == workspace_id)
        .order_by(api_keys.c.created_at)
    )
    return [_record(r) for r in rows]


def revoke_api_key(tx: Tx, workspace_id: str, key_id: str) -> None:
    result = tx.conn.execute(
        update(api_keys)
        .where(
            api_keys.c.id == key_id,
            api_keys.c.workspace_id == workspace_id,
            api_keys.c.revoked_at.is_(None),
        )
        .values(revoked_at=tx.now)
    )
    if result.rowcount != 1:
        raise NotFound(f"API key {key_id!r} not found")


# Prepared: every request made with an API key runs it. Joined with the creator's membership
# (one round trip): a key lives only as long as its creator is a member of its workspace, and
# acts with at most the creator's current role.
_LIVE_KEY = Prepared(
    select(api_keys, memberships.c.role.label("creator_role"))
    .join(
        memberships,
        and_(
            memberships.c.workspace_id == api_keys.c.workspace_id,
            memberships.c.user_id == api_keys.c.created_by,
        ),
    )
    .where(api_keys.c.prefix == bindparam("prefix"), api_keys.c.revoked_at.is_(None))
)


@dataclass(frozen=True, kw_only=True)
class LiveKey:
    record: ApiKeyRecord
    key_hash: str
    role: Role  # what it may do now: the weaker of its own role and its creator's


def key_by_prefix(tx: Tx, prefix: str) -> LiveKey | None:
    """The live key with this prefix, its stored hash and the role it acts with; None if
    revoked, unknown, or its creator is no longer a member of its workspace."""
    rows = _LIVE_KEY.rows(tx.conn, {"prefix": prefix})
    if not rows:
        return None
    data = rows[0]._asdict()
    key_hash = str(data.pop("key_hash"))
    creator_role = Role(data.pop("creator_role"))
    data["role"] = Role(data["role"])
    record = ApiKeyRecord(**data)
    return LiveKey(record=record, key_hash=key_hash, role=weaker(record.role, creator_role))
