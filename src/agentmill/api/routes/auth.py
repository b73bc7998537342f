"""Accounts: register, log in, log out, who am I."""

from __future__ import annotations

import contextlib

from fastapi import APIRouter, Request

from agentmill.api.deps import CurrentUser, DbDep, SettingsDep
from agentmill.api.login_guard import LoginGuard
from agentmill.api.passwords import PasswordHasher
from agentmill.api.schemas import (
    LoginRequest,
    RegistrationAccepted,
    TokenPublic,
    UserCreate,
    UserPublic,
)
from agentmill.api.security import hash_password, issue_token
from agentmill.errors import Conflict, NotAuthenticated
from agentmill.store.repositories import accounts

router = APIRouter(prefix="/auth", tags=["auth"])

# Verifying against a real hash when the account does not exist keeps the timing the same.
_DUMMY_HASH = hash_password("agentmill-timing-equalizer")
# The same answer whether the address had an account or not, so registering cannot be used to
# learn who has one.
REGISTERED = "if no account had this email address, one was created: log in with it"


def _public(user: accounts.UserRecord) -> UserPublic:
    return UserPublic(id=user.id, email=user.email, name=user.name, created_at=user.created_at)


def _passwords(request: Request) -> PasswordHasher:
    hasher: PasswordHasher = request.app.state.passwords
    return hasher


def _client_address(request: Request) -> str:
    # uvicorn replaces it with X-Forwarded-For's when the proxy is trusted (loopback by default).
    return request.client.host if request.client else "unknown"


@router.post("/register", status_code=202, response_model=RegistrationAccepted)
async def register(body: UserCreate, db: DbDep, request: Request) -> RegistrationAccepted:
    """Create an account. The answer is the same when the email address already has one (that
    account is left as it is), so it does not tell who has an account; log in next."""
    # Hashed either way, so both cases take the same time.
    password_hash = await _passwords(request).hash(body.password)
    with contextlib.suppress(Conflict):  # the address has an account: leave it be
        await db.write(
            lambda tx: accounts.create_user(
                tx, email=body.email, name=body.name, password_hash=password_hash
            )
        )
    return RegistrationAccepted(message=REGISTERED)


@router.post("/login", response_model=TokenPublic)
async def login(
    body: LoginRequest, db: DbDep, settings: SettingsDep, request: Request
) -> TokenPublic:
    """Exchange email and password for an access token. After too many failures for the
    account or from the client's address, 429 with Retry-After, whatever the password."""
    guard: LoginGuard = request.app.state.login_guard
    address = _client_address(request)
    await guard.check(body.email, address)  # before Argon2: refused guesses cost no CPU
    user = await db.read(lambda tx: accounts.user_by_email(tx, body.email))
    stored = user.password_hash if user else _DUMMY_HASH
    valid = await _passwords(request).verify(body.password, stored)
    if user is None or not valid:
        await guard.failed(body.email, address)
        raise NotAuthenticated("wrong email or password")
    await guard.succeeded(body.email)
    token = issue_token(user.id, settings.secret(), settings.access_token_minutes)
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
