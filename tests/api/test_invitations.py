"""Registration modes (AGENTMILL_REGISTRATION and its bind-host default) and invitations, on
SQLite and PostgreSQL, through the real app."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import update

from agentmill.api.app import create_app
from agentmill.api.registration import is_loopback
from agentmill.api.security import hash_password
from agentmill.config import Settings
from agentmill.store.models import invitations
from agentmill.store.repositories import accounts, workspaces
from tests.api.conftest import Account

PASSWORD = "correct horse"


@asynccontextmanager
async def serve(
    database_url: str, *, bind_host: str = "127.0.0.1", **settings: Any
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    app = create_app(Settings(**settings), database_url=database_url, bind_host=bind_host)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://agentmill.test") as c:
            yield app, c


def _email(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:10]}@example.com"


async def _login(client: httpx.AsyncClient, email: str) -> Account:
    login = await client.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
    assert login.status_code == 200, login.text
    token = login.json()["access_token"]
    me = await client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"})
    return Account(id=me.json()["id"], email=email, token=token)


async def _first_owner(app: FastAPI, client: httpx.AsyncClient) -> tuple[Account, str]:
    """An owner and a workspace made in the store, as `agentmill up` does on a first start
    (no registration needed)."""
    email, password_hash = _email("owner"), hash_password(PASSWORD)

    def create(tx: Any) -> str:
        user = accounts.create_user(tx, email=email, name="Owner", password_hash=password_hash)
        return workspaces.create_workspace(tx, name="Invited Co", owner_id=user.id).id

    ws = await app.state.db.write(create)
    return await _login(client, email), ws


async def _register(
    client: httpx.AsyncClient, email: str, invitation: str | None = None
) -> httpx.Response:
    body = {"email": email, "name": "New", "password": PASSWORD}
    if invitation is not None:
        body["invitation"] = invitation
    return await client.post("/api/v1/auth/register", json=body)


def _refused(response: httpx.Response, words: str) -> None:
    assert response.status_code == 403, response.text
    assert set(response.json()) == {"error"}, response.text
    error = response.json()["error"]
    assert set(error) == {"code", "message", "details"}
    assert error["code"] == "permission_denied"
    assert words in error["message"], error


async def _invite(
    client: httpx.AsyncClient, who: Account | dict[str, str], ws: str, email: str, role: str
) -> httpx.Response:
    headers = who.headers if isinstance(who, Account) else who
    return await client.post(
        f"/api/v1/workspaces/{ws}/invitations", json={"email": email, "role": role}, headers=headers
    )


async def _role_of(client: httpx.AsyncClient, account: Account, ws: str) -> str | None:
    listed = await client.get("/api/v1/workspaces", headers=account.headers)
    return next((w["role"] for w in listed.json() if w["id"] == ws), None)


def test_loopback_is_told_from_addresses_others_reach() -> None:
    for host in ("127.0.0.1", "127.0.1.1", "::1", "[::1]", "localhost"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "10.0.0.5", "192.168.1.2", "agentmill.example.com"):
        assert not is_loopback(host), host


async def test_open_on_loopback_by_default(database_url: str) -> None:
    async with serve(database_url, bind_host="127.0.0.1") as (_, client):
        email = _email("anyone")
        assert (await _register(client, email)).status_code == 202
        await _login(client, email)


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3"])
async def test_invite_only_by_default_on_an_address_others_reach(
    database_url: str, host: str
) -> None:
    async with serve(database_url, bind_host=host) as (_, client):
        email = _email("stranger")
        _refused(await _register(client, email), "by invitation")
        gone = await client.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
        assert gone.status_code == 401  # no account was made


async def test_the_setting_overrides_the_default(database_url: str) -> None:
    async with serve(database_url, bind_host="0.0.0.0", registration="open") as (_, client):
        assert (await _register(client, _email("public"))).status_code == 202
    async with serve(database_url, bind_host="127.0.0.1", registration="invite") as (_, client):
        _refused(await _register(client, _email("local")), "by invitation")


async def test_closed_refuses_everyone_even_with_an_invitation(database_url: str) -> None:
    async with serve(database_url, registration="closed") as (app, client):
        owner, ws = await _first_owner(app, client)
        email = _email("closed")
        invited = await _invite(client, owner, ws, email, "member")
        assert invited.status_code == 201, invited.text  # invitations are still made...
        _refused(await _register(client, email, invited.json()["token"]), "closed")
        # ...but nobody registers: the account does not exist
        login = await client.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
        assert login.status_code == 401


async def test_an_invitation_makes_the_account_a_member_with_its_role(database_url: str) -> None:
    async with serve(database_url, registration="invite") as (app, client):
        owner, ws = await _first_owner(app, client)
        email = _email("Invitee")
        created = await _invite(client, owner, ws, email.upper(), "admin")
        assert created.status_code == 201, created.text
        invitation = created.json()
        token = invitation["token"]
        assert invitation["email"] == email.lower()
        assert invitation["role"] == "admin"

        listed = await client.get(f"/api/v1/workspaces/{ws}/invitations", headers=owner.headers)
        assert listed.status_code == 200
        assert [i["id"] for i in listed.json()] == [invitation["id"]]
        assert token not in listed.text  # shown once

        # the token is for that address only, and a made-up one is nothing
        _refused(await _register(client, _email("other"), token), "not valid")
        _refused(await _register(client, email, "aminv_made-up"), "not valid")

        assert (await _register(client, email, token)).status_code == 202
        invitee = await _login(client, email)
        assert await _role_of(client, invitee, ws) == "admin"

        # used up: gone from the list, and a second registration with it is refused
        listed = await client.get(f"/api/v1/workspaces/{ws}/invitations", headers=owner.headers)
        assert listed.json() == []
        _refused(await _register(client, _email("again"), token), "not valid")


async def test_an_open_server_takes_invitations_too(database_url: str) -> None:
    async with serve(database_url, registration="open") as (app, client):
        owner, ws = await _first_owner(app, client)
        email = _email("joiner")
        token = (await _invite(client, owner, ws, email, "viewer")).json()["token"]
        assert (await _register(client, email, token)).status_code == 202
        assert await _role_of(client, await _login(client, email), ws) == "viewer"


async def test_revoked_and_expired_invitations_do_not_work(database_url: str) -> None:
    async with serve(database_url, registration="invite") as (app, client):
        owner, ws = await _first_owner(app, client)
        revoked_email, expired_email = _email("revoked"), _email("expired")
        revoked = (await _invite(client, owner, ws, revoked_email, "member")).json()
        expired = (await _invite(client, owner, ws, expired_email, "member")).json()

        url = f"/api/v1/workspaces/{ws}/invitations/{revoked['id']}"
        assert (await client.delete(url, headers=owner.headers)).status_code == 204
        again = await client.delete(url, headers=owner.headers)
        assert again.status_code == 404
        assert again.json()["error"]["code"] == "not_found"
        _refused(await _register(client, revoked_email, revoked["token"]), "not valid")

        await app.state.db.write(
            lambda tx: tx.conn.execute(
                update(invitations)
                .where(invitations.c.id == expired["id"])
                .values(expires_at=tx.now)
            )
        )
        _refused(await _register(client, expired_email, expired["token"]), "not valid")


async def test_nobody_invites_above_their_own_role(database_url: str) -> None:
    async with serve(database_url, registration="invite") as (app, client):
        owner, ws = await _first_owner(app, client)

        async def join(role: str) -> Account:
            email = _email(role)
            token = (await _invite(client, owner, ws, email, role)).json()["token"]
            assert (await _register(client, email, token)).status_code == 202
            return await _login(client, email)

        admin, member = await join("admin"), await join("member")
        assert (await _invite(client, owner, ws, _email("o"), "owner")).status_code == 201
        refused = await _invite(client, admin, ws, _email("o"), "owner")
        _refused(refused, "above its own")
        for role in ("admin", "member", "viewer"):
            assert (await _invite(client, admin, ws, _email(role), role)).status_code == 201
        # a member may not manage members at all: no inviting, listing or revoking
        _refused(await _invite(client, member, ws, _email("v"), "viewer"), "may not")
        listed = await client.get(f"/api/v1/workspaces/{ws}/invitations", headers=member.headers)
        assert listed.status_code == 403
        # an API key acts with at most its own role
        key = await client.post(
            "/api/v1/api-keys",
            json={"workspace_id": ws, "name": "admin key", "role": "admin"},
            headers=owner.headers,
        )
        key_headers = {"Authorization": f"Bearer {key.json()['key']}"}
        _refused(await _invite(client, key_headers, ws, _email("o"), "owner"), "above its own")
        assert (await _invite(client, key_headers, ws, _email("a"), "admin")).status_code == 201
        # already a member: nothing to invite
        dup = await _invite(client, owner, ws, member.email, "viewer")
        assert dup.status_code == 409, dup.text


async def test_an_invitation_dies_with_its_inviters_right_to_grant_it(database_url: str) -> None:
    """An admin's invitation to be an admin stops working once that admin is demoted."""
    async with serve(database_url, registration="invite") as (app, client):
        owner, ws = await _first_owner(app, client)
        admin_email = _email("admin")
        token = (await _invite(client, owner, ws, admin_email, "admin")).json()["token"]
        assert (await _register(client, admin_email, token)).status_code == 202
        admin = await _login(client, admin_email)
        email = _email("second")
        pending = (await _invite(client, admin, ws, email, "admin")).json()
        demoted = await client.patch(
            f"/api/v1/workspaces/{ws}/members/{admin.id}",
            json={"role": "member"},
            headers=owner.headers,
        )
        assert demoted.status_code == 204, demoted.text
        _refused(await _register(client, email, pending["token"]), "not valid")
