"""Password guessing and account discovery, probed on the real app: failed logins are limited
per account and per client address (429 + Retry-After, before any password is verified, in
memory or shared through Redis); registering answers the same whether an account exists; weak
passwords are refused; password hashing is bounded."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from agentmill.api import passwords
from agentmill.api.app import create_app
from agentmill.api.passwords import PasswordHasher
from agentmill.api.routes.auth import REGISTERED
from agentmill.config import Settings

PASSWORD = "correct horse"
REDIS_URL = "redis://127.0.0.1:6379/0"
Client = Callable[[str], AbstractAsyncContextManager[httpx.AsyncClient]]


@asynccontextmanager
async def running(settings: Settings, database_url: str) -> AsyncIterator[FastAPI]:
    app = create_app(settings, database_url=database_url, workers=False)
    async with app.router.lifespan_context(app):
        yield app


def client_of(app: FastAPI) -> Client:
    """Clients of ``app`` as seen from a given address."""

    @asynccontextmanager
    async def from_address(address: str) -> AsyncIterator[httpx.AsyncClient]:
        transport = httpx.ASGITransport(app=app, client=(address, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://agentmill.test") as c:
            yield c

    return from_address


def an_address() -> str:
    """A client address of this test alone (counts in Redis outlive a test)."""
    n = uuid.uuid4().int
    return f"10.{n % 250}.{n // 250 % 250}.{n // 62500 % 250 + 1}"


def an_email(name: str = "ana") -> str:
    return f"{name}-{uuid.uuid4().hex[:10]}@example.com"


async def register(http: httpx.AsyncClient, email: str, password: str = PASSWORD) -> None:
    response = await http.post(
        "/api/v1/auth/register", json={"email": email, "name": "Ana", "password": password}
    )
    assert response.status_code == 202, response.text


async def login(http: httpx.AsyncClient, email: str, password: str) -> httpx.Response:
    return await http.post("/api/v1/auth/login", json={"email": email, "password": password})


def assert_limited(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    wait = int(response.headers["retry-after"])
    assert 1 <= wait <= 900
    assert response.json() == {
        "error": {
            "code": "rate_limited",
            "message": f"too many failed logins: try again in {wait}s",
            "details": None,
        }
    }


@pytest.fixture
async def app(sqlite_url: str) -> AsyncIterator[FastAPI]:
    settings = Settings(login_failures_per_account=5, login_failures_per_address=8)
    async with running(settings, sqlite_url) as application:
        yield application


async def test_after_the_failures_allowed_even_the_right_password_is_refused(
    app: FastAPI,
) -> None:
    email = an_email()
    async with client_of(app)(an_address()) as http:
        await register(http, email)
        for _ in range(5):
            assert (await login(http, email, "a wrong guess!")).status_code == 401
        assert_limited(await login(http, email, PASSWORD))
    async with client_of(app)(an_address()) as elsewhere:  # the account's count, any address
        assert_limited(await login(elsewhere, email, PASSWORD))


async def test_one_address_guessing_many_accounts_is_stopped_and_others_are_not(
    app: FastAPI,
) -> None:
    ana = an_email()
    guesser, someone = client_of(app)(an_address()), client_of(app)(an_address())
    async with guesser as http:
        await register(http, ana)
        for n in range(8):  # one guess per account: under every account's limit
            assert (await login(http, an_email(f"u{n}"), "a wrong guess!")).status_code == 401
        assert_limited(await login(http, ana, PASSWORD))
    async with someone as http:
        assert (await login(http, ana, PASSWORD)).status_code == 200


async def test_a_success_clears_the_accounts_failures(app: FastAPI) -> None:
    email = an_email()
    async with client_of(app)(an_address()) as http:
        await register(http, email)
    for _ in range(3):  # each round from an address of its own: the address limit is apart
        async with client_of(app)(an_address()) as http:
            for _ in range(4):
                assert (await login(http, email, "a wrong guess!")).status_code == 401
            assert (await login(http, email, PASSWORD)).status_code == 200


async def test_the_counts_are_shared_through_redis(sqlite_url: str, tmp_path: Any) -> None:
    """Two API processes (two apps) on one database and one Redis share the counts."""
    settings = Settings(
        redis_url=REDIS_URL, login_failures_per_account=3, login_failures_per_address=100
    )
    email = an_email()
    async with running(settings, sqlite_url) as one, running(settings, sqlite_url) as two:
        async with client_of(one)(an_address()) as http:
            await register(http, email)
            for _ in range(3):
                assert (await login(http, email, "a wrong guess!")).status_code == 401
        async with client_of(two)(an_address()) as http:
            assert_limited(await login(http, email, PASSWORD))


async def test_registering_does_not_tell_who_has_an_account(app: FastAPI) -> None:
    email = an_email()
    async with client_of(app)(an_address()) as http:
        await register(http, email)
        answers = [
            await http.post(
                "/api/v1/auth/register",
                json={"email": address, "name": "Eve", "password": "eve's own passphrase"},
            )
            for address in (email, email.upper(), an_email("new"))
        ]
        assert {(a.status_code, a.text) for a in answers} == {
            (202, '{"message":"' + REGISTERED + '"}')
        }
        assert (await login(http, email, PASSWORD)).status_code == 200  # still Ana's password
        assert (await login(http, email, "eve's own passphrase")).status_code == 401


@pytest.mark.parametrize(
    ("password", "message"),
    [
        ("12345678", "the password must be at least 12 characters long"),
        ("short pass", "the password must be at least 12 characters long"),
        ("password1234", "this password is one of the most commonly used: choose another"),
        ("QwertyUiop123", "this password is one of the most commonly used: choose another"),
        ("123456789012", "this password is one of the most commonly used: choose another"),
        ("abababababab", "this password is one of the most commonly used: choose another"),
        ("margaret-rules-2024", "the password must not contain the email address: choose another"),
    ],
)
async def test_weak_passwords_are_refused(app: FastAPI, password: str, message: str) -> None:
    async with client_of(app)(an_address()) as http:
        response = await http.post(
            "/api/v1/auth/register",
            json={"email": "margaret@example.com", "name": "M", "password": password},
        )
    assert response.status_code == 422
    assert response.json()["error"]["details"] == [
        {"field": "password", "message": f"Value error, {message}"}
    ]


async def test_password_hashing_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    in_flight, most = 0, 0
    lock = threading.Lock()
    release = threading.Event()

    def slow_hash(password: str) -> str:
        nonlocal in_flight, most
        with lock:
            in_flight += 1
            most = max(most, in_flight)
        release.wait(5)
        with lock:
            in_flight -= 1
        return "hash"

    monkeypatch.setattr(passwords, "hash_password", slow_hash)
    hasher = PasswordHasher(2)
    tasks = [asyncio.create_task(hasher.hash(f"p{n}")) for n in range(8)]
    await asyncio.sleep(0.2)  # long enough for all eight to start, were they not held back
    with lock:
        assert in_flight == 2
    release.set()
    assert await asyncio.gather(*tasks) == ["hash"] * 8
    assert most == 2
