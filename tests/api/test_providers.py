"""A workspace's own providers over the API: CRUD, keys write-only and encrypted at rest (not in
any answer, not in the SQLite file, not in the PostgreSQL row), tenants apart, roles, 422s."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select, text
from sqlalchemy.engine import make_url

from agentmill.api.app import create_app
from agentmill.config import Settings
from agentmill.errors import ConfigError
from agentmill.gateway.config import ProviderConfig
from agentmill.store.db import Database
from agentmill.store.models import workspace_providers
from agentmill.store.repositories.providers import workspace_provider_configs
from tests.api.conftest import Account, new_workspace, signup
from tests.conftest import TEST_SECRET_KEY

SECRET = TEST_SECRET_KEY  # the app fixture's
NEW_SECRET = "another-key-Qm4Zr8Tx2Wb6Yn0Vc5Lp9Hs3Kd7Jf1G"


@pytest.fixture
async def app(database_url: str) -> AsyncIterator[FastAPI]:
    """The API, with the operator's permission for provider URLs on loopback and private
    addresses: these tests register providers on 127.0.0.1 and 10.0.0.5 (test_egress.py covers
    the refusal without it)."""
    settings = Settings(secret_key=SECRET, allow_private_provider_urls=True)
    application = create_app(settings, database_url=database_url)
    async with application.router.lifespan_context(application):
        yield application


def a_key() -> str:
    return f"sk-test-{uuid.uuid4().hex}"


def providers_url(ws: str, name: str | None = None) -> str:
    return f"/api/v1/workspaces/{ws}/providers" + (f"/{name}" if name else "")


async def stored_rows(db: Database, ws: str) -> list[dict[str, Any]]:
    rows = await db.read(
        lambda tx: tx.conn.execute(
            select(workspace_providers).where(workspace_providers.c.workspace_id == ws)
        ).all()
    )
    return [dict(row._mapping) for row in rows]


async def test_crud_through_the_api_never_answers_the_key(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    owner = await signup(client)
    ws = await new_workspace(client, owner)
    key, rotated = a_key(), a_key()
    answers: list[httpx.Response] = []

    async def call(method: str, url: str, **kwargs: Any) -> httpx.Response:
        answers.append(await client.request(method, url, headers=owner.headers, **kwargs))
        return answers[-1]

    created = await call(
        "POST",
        providers_url(ws),
        json={
            "name": "my-openai",
            "kind": "openai",
            "api_key": key,
            "headers": {"OpenAI-Organization": "org-1"},
        },
    )
    assert created.status_code == 201, created.text
    body = created.json()
    assert {k: v for k, v in body.items() if k not in ("id", "created_at", "updated_at")} == {
        "workspace_id": ws,
        "name": "my-openai",
        "kind": "openai",
        "base_url": None,
        "timeout": 60.0,
        "headers": {"OpenAI-Organization": "org-1"},
        "has_api_key": True,
    }
    local = await call(
        "POST",
        providers_url(ws),
        json={"name": "local", "kind": "ollama", "base_url": "http://127.0.0.1:11434"},
    )
    assert (local.status_code, local.json()["has_api_key"]) == (201, False)

    listed = await call("GET", providers_url(ws))
    assert [(p["name"], p["has_api_key"]) for p in listed.json()] == [
        ("local", False),
        ("my-openai", True),
    ]
    assert (await call("GET", providers_url(ws, "my-openai"))).json() == body

    patched = await call(
        "PATCH", providers_url(ws, "my-openai"), json={"timeout": 12.5, "api_key": rotated}
    )
    assert patched.status_code == 200, patched.text
    assert (patched.json()["timeout"], patched.json()["headers"]) == (12.5, body["headers"])
    configs = await workspace_provider_configs(app.state.db, ws, secret_key=SECRET)
    assert configs["my-openai"] == ProviderConfig(
        name="my-openai",
        kind="openai",
        api_key=rotated,
        timeout=12.5,
        headers={"OpenAI-Organization": "org-1"},
    )
    rows = {row["name"]: row for row in await stored_rows(app.state.db, ws)}
    ciphertext = rows["my-openai"]["api_key_encrypted"]

    duplicate = await call("POST", providers_url(ws), json={"name": "local", "kind": "ollama"})
    assert duplicate.status_code == 422  # ollama needs a base_url
    duplicate = await call(
        "POST",
        providers_url(ws),
        json={"name": "local", "kind": "ollama", "base_url": "http://127.0.0.1:1"},
    )
    assert duplicate.status_code == 409
    assert duplicate.json()["error"]["message"] == (
        "provider 'local' already exists in this workspace"
    )

    assert (await call("DELETE", providers_url(ws, "my-openai"))).status_code == 204
    gone = await call("GET", providers_url(ws, "my-openai"))
    assert (gone.status_code, gone.json()["error"]["message"]) == (
        404,
        "provider 'my-openai' not found",
    )
    assert (await call("DELETE", providers_url(ws, "my-openai"))).status_code == 404
    assert [p["name"] for p in (await call("GET", providers_url(ws))).json()] == ["local"]

    for answer in answers:
        for secret in (key, rotated, ciphertext, ciphertext[3:40]):
            assert secret not in answer.text, (answer.request.method, answer.request.url)
        assert 'api_key"' not in answer.text.replace('has_api_key"', "")


async def test_the_key_is_not_readable_in_the_database(
    app: FastAPI, client: httpx.AsyncClient, database_url: str
) -> None:
    owner = await signup(client)
    ws = await new_workspace(client, owner)
    key = a_key()

    created = await client.post(
        providers_url(ws),
        json={"name": "vault", "kind": "anthropic", "api_key": key},
        headers=owner.headers,
    )
    assert created.status_code == 201, created.text

    db: Database = app.state.db
    (row,) = await stored_rows(db, ws)
    ciphertext = row["api_key_encrypted"]
    assert ciphertext.startswith("v1.")
    assert all(key not in str(value) for value in row.values())
    if db.dialect == "postgresql":
        # The whole row as PostgreSQL renders it, every column included.
        (text_row,) = await db.read(
            lambda tx: tx.conn.execute(
                text("SELECT CAST(t AS text) FROM workspace_providers t WHERE workspace_id = :ws"),
                {"ws": ws},
            ).all()
        )
        assert ciphertext in text_row[0]
        assert key not in text_row[0]
        return
    # SQLite: the database file and its write-ahead log, byte for byte.
    path = Path(str(make_url(database_url).database))
    files = [p for p in path.parent.iterdir() if p.name.startswith(path.name)]
    everything = b"".join(p.read_bytes() for p in files)
    assert ciphertext.encode() in everything  # the row is on disk: the search below is real
    assert key.encode() not in everything
    assert key.removeprefix("sk-test-").encode() not in everything


@asynccontextmanager
async def app_with_secret(database_url: str, secret: str) -> AsyncIterator[httpx.AsyncClient]:
    """Another server on the same database, started with another AGENTMILL_SECRET_KEY."""
    application = create_app(Settings(secret_key=secret), database_url=database_url, workers=False)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://other.test") as http:
            yield http


async def test_after_the_secret_key_changes_keys_fail_clearly_until_entered_again(
    app: FastAPI, client: httpx.AsyncClient, database_url: str
) -> None:
    owner = await signup(client)
    ws = await new_workspace(client, owner)
    for name in ("first", "second"):
        await client.post(
            providers_url(ws),
            json={"name": name, "kind": "openai", "api_key": a_key()},
            headers=owner.headers,
        )
    db: Database = app.state.db

    configs = await workspace_provider_configs(db, ws, secret_key=NEW_SECRET)
    with pytest.raises(
        ConfigError,
        match="^"
        + re.escape(
            "workspace provider 'first': "
            "cannot decrypt provider credentials: AGENTMILL_SECRET_KEY changed?"
        )
        + "$",
    ):
        configs["first"]

    new_key = a_key()
    async with app_with_secret(database_url, NEW_SECRET) as other:
        login = await other.post(
            "/api/v1/auth/login", json={"email": owner.email, "password": "correct horse"}
        )
        headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
        listed = await other.get(providers_url(ws), headers=headers)  # no key is needed to list
        assert [p["has_api_key"] for p in listed.json()] == [True, True]
        patched = await other.patch(
            providers_url(ws, "first"), json={"api_key": new_key}, headers=headers
        )
        assert patched.status_code == 200, patched.text

    configs = await workspace_provider_configs(db, ws, secret_key=NEW_SECRET)
    assert configs["first"].api_key == new_key
    with pytest.raises(ConfigError, match="workspace provider 'second': cannot decrypt"):
        configs["second"]


async def test_another_workspaces_provider_is_not_found_and_unchanged(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    victim = await signup(client, "Victim")
    theirs = await new_workspace(client, victim, "Secret Co")
    key = a_key()
    await client.post(
        providers_url(theirs),
        json={"name": "openai", "kind": "openai", "api_key": key},
        headers=victim.headers,
    )
    intruder = await signup(client, "Intruder")
    mine = await new_workspace(client, intruder, "Mine")

    attempts = [
        ("GET", providers_url(mine, "openai"), None),  # their name, asked in my workspace
        ("PATCH", providers_url(mine, "openai"), {"timeout": 1}),
        ("DELETE", providers_url(mine, "openai"), None),
        ("GET", providers_url(theirs), None),
        ("GET", providers_url(theirs, "openai"), None),
        ("PATCH", providers_url(theirs, "openai"), {"api_key": a_key()}),
        ("DELETE", providers_url(theirs, "openai"), None),
        ("POST", providers_url(theirs), {"name": "x", "kind": "openai", "api_key": "sk-x"}),
    ]
    for method, url, body in attempts:
        response = await client.request(method, url, json=body, headers=intruder.headers)
        assert response.status_code == 404, (method, url, response.text)

    assert (await client.get(providers_url(mine), headers=intruder.headers)).json() == []
    kept = (await client.get(providers_url(theirs), headers=victim.headers)).json()
    assert [(p["name"], p["timeout"]) for p in kept] == [("openai", 60.0)]
    configs = await workspace_provider_configs(app.state.db, theirs, secret_key=SECRET)
    assert configs["openai"].api_key == key


async def _member(client: httpx.AsyncClient, owner: Account, ws: str, role: str) -> Account:
    user = await signup(client, role.title())
    added = await client.post(
        f"/api/v1/workspaces/{ws}/members",
        json={"email": user.email, "role": role},
        headers=owner.headers,
    )
    assert added.status_code == 201, added.text
    return user


async def test_viewers_and_members_read_but_only_admins_and_owners_write(
    client: httpx.AsyncClient,
) -> None:
    owner = await signup(client, "Owner")
    ws = await new_workspace(client, owner)
    await client.post(
        providers_url(ws),
        json={"name": "shared", "kind": "gemini", "api_key": a_key()},
        headers=owner.headers,
    )
    viewer, member, admin = [
        await _member(client, owner, ws, r) for r in ("viewer", "member", "admin")
    ]

    for reader in (viewer, member):
        assert (await client.get(providers_url(ws), headers=reader.headers)).status_code == 200
        writes = [
            await client.post(
                providers_url(ws),
                json={"name": "mine", "kind": "gemini", "api_key": a_key()},
                headers=reader.headers,
            ),
            await client.patch(
                providers_url(ws, "shared"), json={"timeout": 1}, headers=reader.headers
            ),
            await client.delete(providers_url(ws, "shared"), headers=reader.headers),
        ]
        for refused in writes:
            assert refused.status_code == 403, refused.text
            assert refused.json()["error"]["message"] == (
                f"role {reader.email.split('-')[0]!r} may not 'providers:manage' in this workspace"
            )
    viewer_key = await client.post(
        "/api/v1/api-keys",
        json={"workspace_id": ws, "name": "ro", "role": "viewer"},
        headers=owner.headers,
    )
    key_headers = {"Authorization": f"Bearer {viewer_key.json()['key']}"}
    assert (
        await client.delete(providers_url(ws, "shared"), headers=key_headers)
    ).status_code == 403

    patched = await client.patch(
        providers_url(ws, "shared"), json={"timeout": 9}, headers=admin.headers
    )
    assert (patched.status_code, patched.json()["timeout"]) == (200, 9.0)
    assert (
        await client.delete(providers_url(ws, "shared"), headers=admin.headers)
    ).status_code == 204


OPENAI = {"name": "p", "kind": "openai", "api_key": "sk-valid"}
# Each invalid body, the one field the 422 names, and what its message says. (One test walks
# them all: the checks happen before the database, so one app serves every case.)
INVALID_CREATES: list[tuple[dict[str, Any], str, str]] = [
    ({**OPENAI, "name": "My Provider"}, "name", "String should match pattern"),
    ({**OPENAI, "name": "a/b"}, "name", "String should match pattern"),
    ({**OPENAI, "name": "scripted"}, "name", "reserved for the built-in offline provider"),
    ({**OPENAI, "name": "x" * 65}, "name", "at most 64 characters"),
    ({**OPENAI, "kind": "scripted"}, "kind", "Input should be 'openai'"),
    ({**OPENAI, "kind": "azure"}, "kind", "Input should be 'openai'"),
    ({"name": "p", "kind": "openai"}, "api_key", "required for kind 'openai'"),
    ({"name": "p", "kind": "anthropic", "api_key": None}, "api_key", "required for kind"),
    (
        {"name": "p", "kind": "openai_compatible", "api_key": "sk-compat-key"},
        "base_url",
        "required for kind 'openai_compatible'",
    ),
    ({"name": "p", "kind": "ollama"}, "base_url", "required for kind 'ollama'"),
    ({**OPENAI, "base_url": "ftp://example.com"}, "base_url", "http:// or https://"),
    ({**OPENAI, "base_url": "https://u:pw@example.com"}, "base_url", "must not contain cred"),
    ({**OPENAI, "base_url": "https://example.com/v1?key=1"}, "base_url", "query string"),
    ({**OPENAI, "base_url": "https://example.com:99999"}, "base_url", "not a valid URL"),
    ({**OPENAI, "api_key": "sk with spaces"}, "api_key", "visible ASCII"),
    ({**OPENAI, "api_key": "sk-\r\nX-Evil: 1"}, "api_key", "visible ASCII"),
    ({**OPENAI, "timeout": 0}, "timeout", "greater than 0"),
    ({**OPENAI, "headers": {"Authorization": "Bearer sk"}}, "headers", "use api_key"),
    ({**OPENAI, "headers": {"x-api-key": "sk"}}, "headers", "use api_key"),
    ({**OPENAI, "headers": {"Bad Name": "v"}}, "headers", "not a valid header name"),
    ({**OPENAI, "headers": {"X-A": "1\r\nX-B: 2"}}, "headers", "visible ASCII"),
    ({**OPENAI, "api_key_encrypted": "v1.x"}, "api_key_encrypted", "Extra inputs"),
]


async def test_an_invalid_provider_is_refused_naming_the_field(
    client: httpx.AsyncClient,
) -> None:
    owner = await signup(client)
    ws = await new_workspace(client, owner)

    for body, field, message in INVALID_CREATES:
        response = await client.post(providers_url(ws), json=body, headers=owner.headers)

        assert response.status_code == 422, (body, response.text)
        error = response.json()["error"]
        assert error["code"] == "validation_error"
        assert [d["field"] for d in error["details"]] == [field], (body, error)
        assert message in error["details"][0]["message"], (body, error)
        assert error["message"].startswith(f"{field}: "), (body, error)
        if body.get("api_key") not in (None, "sk-valid"):
            assert body["api_key"] not in response.text  # an invalid key is not echoed either
    assert (await client.get(providers_url(ws), headers=owner.headers)).json() == []


INVALID_CHANGES: list[tuple[dict[str, Any], str, str]] = [
    ({"kind": None}, "kind", "may not be null"),
    ({"timeout": None}, "timeout", "may not be null"),
    ({"name": "renamed"}, "name", "Extra inputs"),
    ({"api_key": None}, "api_key", "required for kind 'openai_compatible'"),
    ({"base_url": None}, "base_url", "required for kind 'openai_compatible'"),
    ({"kind": "ollama", "base_url": None}, "base_url", "required for kind 'ollama'"),
    ({"headers": {"Cookie": "a=b"}}, "headers", "use api_key"),
]


async def test_an_invalid_change_is_refused_naming_the_field_and_changes_nothing(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    owner = await signup(client)
    ws = await new_workspace(client, owner)
    key = a_key()
    created = await client.post(
        providers_url(ws),
        json={
            "name": "vllm",
            "kind": "openai_compatible",
            "base_url": "http://10.0.0.5:8000/v1",
            "api_key": key,
        },
        headers=owner.headers,
    )

    for change, field, message in INVALID_CHANGES:
        response = await client.patch(providers_url(ws, "vllm"), json=change, headers=owner.headers)

        assert response.status_code == 422, (change, response.text)
        details = response.json()["error"]["details"]
        assert [d["field"] for d in details] == [field], (change, details)
        assert message in details[0]["message"], (change, details)
    after = await client.get(providers_url(ws, "vllm"), headers=owner.headers)
    assert after.json() == created.json()
    configs = await workspace_provider_configs(app.state.db, ws, secret_key=SECRET)
    assert configs["vllm"].api_key == key


async def test_a_change_of_kind_with_what_it_needs_is_accepted(
    client: httpx.AsyncClient,
) -> None:
    owner = await signup(client)
    ws = await new_workspace(client, owner)
    await client.post(
        providers_url(ws),
        json={"name": "box", "kind": "ollama", "base_url": "http://127.0.0.1:11434"},
        headers=owner.headers,
    )

    no_key = await client.patch(
        providers_url(ws, "box"), json={"kind": "openai_compatible"}, headers=owner.headers
    )
    with_key = await client.patch(
        providers_url(ws, "box"),
        json={"kind": "openai_compatible", "api_key": "none"},
        headers=owner.headers,
    )

    assert no_key.status_code == 422
    assert "any placeholder for a server without keys" in no_key.json()["error"]["message"]
    assert with_key.status_code == 200, with_key.text
    assert (with_key.json()["kind"], with_key.json()["has_api_key"]) == ("openai_compatible", True)


async def test_a_name_that_cannot_exist_is_not_found(client: httpx.AsyncClient) -> None:
    owner = await signup(client)
    ws = await new_workspace(client, owner)

    for name in ("Not-A-Slug", "a%2Fb", "x" * 65, "scripted", "%00"):
        for method in ("GET", "PATCH", "DELETE"):
            body = {"timeout": 1} if method == "PATCH" else None
            response = await client.request(
                method, providers_url(ws, name), json=body, headers=owner.headers
            )
            assert response.status_code == 404, (name, method, response.text)
