"""Users, and access tokens ended by logout."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, insert, select
from sqlalchemy.exc import IntegrityError

from agentmill.errors import Conflict
from agentmill.ids import new_id
from agentmill.store.db import Tx
from agentmill.store.models import revoked_tokens, users


@dataclass(frozen=True, kw_only=True)
class UserRecord:
    id: str
    email: str
    name: str
    password_hash: str
    created_at: datetime


def create_user(tx: Tx, *, email: str, name: str, password_hash: str) -> UserRecord:
    email = email.strip().lower()
    if tx.conn.scalar(select(users.c.id).where(users.c.email == email)) is not None:
        raise Conflict(f"an account with email {email!r} already exists")
    record = UserRecord(
        id=new_id("usr"), email=email, name=name, password_hash=password_hash, created_at=tx.now
    )
    try:
        tx.conn.execute(insert(users).values(**record.__dict__))
    except IntegrityError:  # a concurrent registration won the race
        raise Conflict(f"an account with email {email!r} already exists") from None
    return record


def user_by_email(tx: Tx, email: str) -> UserRecord | None:
    row = tx.conn.execute(select(users).where(users.c.email == email.strip().lower())).first()
    return UserRecord(**row._mapping) if row else None


def user_by_id(tx: Tx, user_id: str) -> UserRecord | None:
    row = tx.conn.execute(select(users).where(users.c.id == user_id)).first()
    return UserRecord(**row._mapping) if row else None


def revoke_token(tx: Tx, jti: str, expires_at: datetime) -> None:
    tx.conn.execute(delete(revoked_tokens).where(revoked_tokens.c.expires_at < tx.now))
    if tx.conn.scalar(select(revoked_tokens.c.jti).where(revoked_tokens.c.jti == jti)) is None:
        tx.conn.execute(insert(revoked_tokens).values(jti=jti, expires_at=expires_at))


def is_revoked(tx: Tx, jti: str) -> bool:
    return (
        tx.conn.scalar(select(revoked_tokens.c.jti).where(revoked_tokens.c.jti == jti)) is not None
    )
