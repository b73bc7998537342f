"""API keys: shown once, stored hashed, scoped to a workspace and role, revocable."""

from __future__ import annotations

import httpx

from tests.api.conftest import new_workspace, signup


async def test_a_key_works_in_its_workspace_only_and_stops_when_revoked(
    client: httpx.AsyncClient,
) -> None:
    ana = await signup(client, "Ana")
    ws = await new_workspace(client, ana)
    other_ws = await new_workspace(client, ana, "Other")

    created = await client.post(
        "/api/v1/api-keys",
        json={"workspace_id": ws, "name": "ci", "role": "viewer"},
        headers=ana.headers,
    )
    assert created.status_code == 201
    secret = created.json()["key"]
    assert secret.startswith("am_")
    key_headers = {"Authorization": f"Bearer {secret}"}

    assert (await client.get(f"/api/v1/workspaces/{ws}", headers=key_headers)).status_code == 200
    assert (
        await client.get(f"/api/v1/workspaces/{other_ws}", headers=key_headers)
    ).status_code == 404
    # a viewer key cannot do what viewers cannot
    renamed = await client.patch(
        f"/api/v1/workspaces/{ws}", json={"name": "x"}, headers=key_headers
    )
    assert renamed.status_code == 403

    listed = await client.get(f"/api/v1/api-keys?workspace_id={ws}", headers=ana.headers)
    assert [k["name"] for k in listed.json()] == ["ci"]
    assert secret not in listed.text
    assert listed.json()[0]["prefix"] == secret.split("_")[1]

    key_id = created.json()["id"]
    assert (
        await client.delete(f"/api/v1/api-keys/{key_id}?workspace_id={ws}", headers=ana.headers)
    ).status_code == 204
    refused = await client.get(f"/api/v1/workspaces/{ws}", headers=key_headers)
    assert refused.status_code == 401
    assert refused.json()["error"]["message"] == "invalid or revoked API key"


async def test_a_tampered_key_is_refused(client: httpx.AsyncClient) -> None:
    ana = await signup(client, "Ana")
    ws = await new_workspace(client, ana)
    secret = (
        await client.post(
            "/api/v1/api-keys", json={"workspace_id": ws, "name": "k"}, headers=ana.headers
        )
    ).json()["key"]

    tampered = secret[:-2] + ("AA" if not secret.endswith("AA") else "BB")
    response = await client.get(
        f"/api/v1/workspaces/{ws}", headers={"Authorization": f"Bearer {tampered}"}
    )
    assert response.status_code == 401


async def test_nobody_mints_a_key_stronger_than_themselves(client: httpx.AsyncClient) -> None:
    owner = await signup(client, "Owner")
    admin = await signup(client, "Admin")
    ws = await new_workspace(client, owner)
    await client.post(
        f"/api/v1/workspaces/{ws}/members",
        json={"email": admin.email, "role": "admin"},
        headers=owner.headers,
    )

    too_strong = await client.post(
        "/api/v1/api-keys",
        json={"workspace_id": ws, "name": "x", "role": "owner"},
        headers=admin.headers,
    )
    fine = await client.post(
        "/api/v1/api-keys",
        json={"workspace_id": ws, "name": "x", "role": "admin"},
        headers=admin.headers,
    )
    assert too_strong.status_code == 403
    assert fine.status_code == 201


async def test_api_keys_cannot_act_as_a_user(client: httpx.AsyncClient) -> None:
    ana = await signup(client, "Ana")
    ws = await new_workspace(client, ana)
    secret = (
        await client.post(
            "/api/v1/api-keys",
            json={"workspace_id": ws, "name": "k", "role": "owner"},
            headers=ana.headers,
        )
    ).json()["key"]

    response = await client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {secret}"})
    assert response.status_code == 403
