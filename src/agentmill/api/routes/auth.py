"""Accounts: register, log in, log out, who am I."""

from __future__ import annotations

import contextlib

from fastapi import APIRouter, Request

from agentmill.api.deps import CurrentUser, DbDep, SettingsDep
from agentmill.api.login_guard import LoginGuard
from agentmill.api.passwords import PasswordHasher
from agentmill.api.registration import registration_mode
from agentmill.api.routes.invitations import hash_token
from agentmill.api.schemas import (
    LoginRequest,
    RegistrationAccepted,
    TokenPublic,
    UserCreate,
    UserPublic,
)
from agentmill.api.security import hash_password, issue_token
from agentmill.errors import Conflict, NotAuthenticated, PermissionDenied
from agentmill.store.db import Tx
from agentmill.store.repositories import accounts, invitations

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
async def register(
    body: UserCreate, db: DbDep, settings: SettingsDep, request: Request
) -> RegistrationAccepted:
    """Create an account; with an invitation's token it joins that workspace with its role.
    The answer is the same when the email address already has one (that account is left as it
    is, and the invitation stays unused), so it does not tell who has an account; log in next.
    Whether an invitation is required, or registration closed (403), is the operator's
    setting (AGENTMILL_REGISTRATION)."""
    mode = registration_mode(settings, request.app.state.bind_host)
    if mode == "closed":
        raise PermissionDenied("registration is closed on this server: ask its operator")
    if mode == "invite" and body.invitation is None:
        raise PermissionDenied(
            "registration on this server is by invitation: ask a workspace's owner or admin "
            "for one and send its token as `invitation`"
        )
    token_hash = hash_token(body.invitation) if body.invitation is not None else None
    if token_hash is not None and not await db.read(
        lambda tx: invitations.is_valid(tx, token_hash=token_hash, email=body.email)
    ):  # before Argon2: a wrong token costs no CPU
        raise PermissionDenied(invitations.INVALID)
    # Hashed either way, so both cases take the same time.
    password_hash = await _passwords(request).hash(body.password)

    def create(tx: Tx) -> None:
        user = accounts.create_user(
            tx, email=body.email, name=body.name, password_hash=password_hash
        )
        if token_hash is not None:  # in the same transaction: both or neither
            invitations.accept_invitation(
                tx, token_hash=token_hash, email=body.email, user_id=user.id
            )

    with contextlib.suppress(Conflict):  # the address has an account: leave it be
        await db.write(create)
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
