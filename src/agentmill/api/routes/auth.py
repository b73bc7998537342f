"""Accounts: register, log in, log out, who am I."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter

from agentmill.api.deps import CurrentUser, DbDep, SettingsDep
from agentmill.api.schemas import LoginRequest, TokenPublic, UserCreate, UserPublic
from agentmill.api.security import hash_password, issue_token, verify_password
from agentmill.errors import NotAuthenticated
from agentmill.store.repositories import accounts

router = APIRouter(prefix="/auth", tags=["auth"])

# Verifying against a real hash when the account does not exist keeps the timing the same.
_DUMMY_HASH = hash_password("agentmill-timing-equalizer")


def _public(user: accounts.UserRecord) -> UserPublic:
    return UserPublic(id=user.id, email=user.email, name=user.name, created_at=user.created_at)


@router.post("/register", status_code=201, response_model=UserPublic)
async def register(body: UserCreate, db: DbDep) -> UserPublic:
    """Create an account."""
    # Argon2 takes tens of milliseconds on purpose: keep it off the event loop.
    password_hash = await asyncio.to_thread(hash_password, body.password)
    user = await db.write(
        lambda tx: accounts.create_user(
            tx, email=body.email, name=body.name, password_hash=password_hash
        )
    )
    return _public(user)


@router.post("/login", response_model=TokenPublic)
async def login(body: LoginRequest, db: DbDep, settings: SettingsDep) -> TokenPublic:
    """Exchange email and password for an access token."""
    user = await db.read(lambda tx: accounts.user_by_email(tx, body.email))
    stored = user.password_hash if user else _DUMMY_HASH
    valid = await asyncio.to_thread(verify_password, body.password, stored)
    if user is None or not valid:
        raise NotAuthenticated("wrong email or password")
    token = issue_token(user.id, settings.secret_key, settings.access_token_minutes)
    return TokenPublic(access_token=token.token, expires_at=token.expires_at)


@router.post("/logout", status_code=204)
async def logout(caller: CurrentUser, db: DbDep) -> None:
    """End this access token; it stops working at once."""
    jti, expires = caller.token_jti, caller.token_expires_at
    assert jti is not None
    assert expires is not None
    await db.write(lambda tx: accounts.revoke_token(tx, jti, expires))


@router.get("/me", response_model=UserPublic)
async def me(caller: CurrentUser) -> UserPublic:
    """The signed-in account."""
    assert caller.user is not None
    return _public(caller.user)
