"""Accounts: register, login, logout, me; bad credentials get 401 with a JSON error."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import httpx
import jwt

from agentmill.api.routes.auth import REGISTERED
from tests.api.conftest import signup
from tests.conftest import TEST_SECRET_KEY


def error(response: httpx.Response) -> dict[str, object]:
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    return dict(body["error"])


async def test_register_login_me_logout(client: httpx.AsyncClient) -> None:
    ana = await signup(client, "Ana")

    me = await client.get("/api/v1/auth/me", headers=ana.headers)
    assert me.status_code == 200
    assert me.json()["email"] == ana.email
    assert "password" not in me.text
    assert "hash" not in me.text

    assert (await client.post("/api/v1/auth/logout", headers=ana.headers)).status_code == 204
    after = await client.get("/api/v1/auth/me", headers=ana.headers)
    assert after.status_code == 401
    assert error(after)["code"] == "not_authenticated"
    assert after.headers["www-authenticate"] == "Bearer"


async def test_a_second_login_is_a_separate_token(client: httpx.AsyncClient) -> None:
    ana = await signup(client, "Ana")
    second = await client.post(
        "/api/v1/auth/login", json={"email": ana.email, "password": "correct horse"}
    )
    other = {"Authorization": f"Bearer {second.json()['access_token']}"}

    await client.post("/api/v1/auth/logout", headers=ana.headers)

    assert (await client.get("/api/v1/auth/me", headers=other)).status_code == 200


async def test_a_duplicate_email_is_answered_like_a_new_one_and_changes_nothing(
    client: httpx.AsyncClient,
) -> None:
    ana = await signup(client, "Ana")
    again = await client.post(
        "/api/v1/auth/register",
        json={"email": ana.email.upper(), "name": "Other", "password": "another passphrase"},
    )
    fresh = await client.post(
        "/api/v1/auth/register",
        json={"email": "fresh@example.com", "name": "Fresh", "password": "another passphrase"},
    )
    assert again.status_code == fresh.status_code == 202
    assert again.json() == fresh.json() == {"message": REGISTERED}
    taken = await client.post(
        "/api/v1/auth/login", json={"email": ana.email, "password": "another passphrase"}
    )
    assert taken.status_code == 401  # the existing account kept its password
    me = await client.get("/api/v1/auth/me", headers=ana.headers)
    assert me.json()["name"] == "Ana"


async def test_wrong_password_and_unknown_account_look_the_same(client: httpx.AsyncClient) -> None:
    ana = await signup(client, "Ana")
    wrong = await client.post(
        "/api/v1/auth/login", json={"email": ana.email, "password": "nope nope"}
    )
    nobody = await client.post(
        "/api/v1/auth/login", json={"email": "nobody@example.com", "password": "nope nope"}
    )
    assert wrong.status_code == nobody.status_code == 401
    assert error(wrong)["message"] == error(nobody)["message"] == "wrong email or password"


async def test_expired_forged_and_missing_tokens_are_refused(client: httpx.AsyncClient) -> None:
    ana = await signup(client, "Ana")
    past = datetime.now(UTC) - timedelta(minutes=1)
    right_key = hashlib.sha256(b"agentmill/access-token/v1\x00" + TEST_SECRET_KEY.encode()).digest()
    expired = jwt.encode({"sub": ana.id, "jti": "tok_x", "exp": past}, right_key, algorithm="HS256")
    forged = jwt.encode(
        {"sub": ana.id, "jti": "tok_y", "exp": past + timedelta(hours=2)},
        b"another key of thirty-two bytes!",
        algorithm="HS256",
    )
    for headers in (
        {"Authorization": f"Bearer {expired}"},
        {"Authorization": f"Bearer {forged}"},
        {},
    ):
        response = await client.get("/api/v1/auth/me", headers=headers)
        assert response.status_code == 401
        assert error(response)["code"] == "not_authenticated"


async def test_invalid_bodies_name_the_field(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/v1/auth/register",
        json={"email": "not-an-email", "name": "A", "password": "short", "admin": True},
    )
    assert response.status_code == 422
    body = error(response)
    assert body["code"] == "validation_error"
    fields = {d["field"] for d in body["details"]}  # type: ignore[union-attr]
    assert fields == {"email", "password", "admin"}
    assert "Traceback" not in response.text
