"""Issue 17: an admin cannot take over a workspace; API keys die with their creator's
membership and act with at most the creator's current role. On the real app, SQLite and
PostgreSQL."""

from __future__ import annotations

import asyncio

import httpx

from tests.api.conftest import Account, new_workspace, signup


async def _with(client: httpx.AsyncClient, owner: Account, ws: str, role: str) -> Account:
    user = await signup(client, role.capitalize())
    added = await client.post(
        f"/api/v1/workspaces/{ws}/members",
        json={"email": user.email, "role": role},
        headers=owner.headers,
    )
    assert added.status_code == 201, added.text
    return user


async def _roles(client: httpx.AsyncClient, owner: Account, ws: str) -> dict[str, str]:
    members = await client.get(f"/api/v1/workspaces/{ws}/members", headers=owner.headers)
    return {m["user_id"]: m["role"] for m in members.json()}


def _denied(response: httpx.Response, message: str) -> None:
    assert response.status_code == 403, response.text
    assert response.json()["error"]["code"] == "permission_denied"
    assert response.json()["error"]["message"] == message


async def test_an_admin_cannot_make_themselves_owner_or_demote_the_owner(
    client: httpx.AsyncClient,
) -> None:
    owner = await signup(client, "Owner")
    ws = await new_workspace(client, owner)
    admin = await _with(client, owner, ws, "admin")

    promote = await client.patch(
        f"/api/v1/workspaces/{ws}/members/{admin.id}", json={"role": "owner"}, headers=admin.headers
    )
    demote = await client.patch(
        f"/api/v1/workspaces/{ws}/members/{owner.id}",
        json={"role": "viewer"},
        headers=admin.headers,
    )
    remove = await client.delete(
        f"/api/v1/workspaces/{ws}/members/{owner.id}", headers=admin.headers
    )

    _denied(promote, "nobody may change their own role; ask another owner")
    _denied(demote, "only an owner may change or remove an owner, not 'admin'")
    _denied(remove, "only an owner may change or remove an owner, not 'admin'")
    assert await _roles(client, owner, ws) == {owner.id: "owner", admin.id: "admin"}


async def test_an_admin_cannot_add_or_promote_an_owner(client: httpx.AsyncClient) -> None:
    owner = await signup(client, "Owner")
    ws = await new_workspace(client, owner)
    admin = await _with(client, owner, ws, "admin")
    viewer = await _with(client, owner, ws, "viewer")
    accomplice = await signup(client, "Accomplice")

    add = await client.post(
        f"/api/v1/workspaces/{ws}/members",
        json={"email": accomplice.email, "role": "owner"},
        headers=admin.headers,
    )
    promote = await client.patch(
        f"/api/v1/workspaces/{ws}/members/{viewer.id}",
        json={"role": "owner"},
        headers=admin.headers,
    )

    _denied(add, "role 'admin' may not grant role 'owner', which is above its own")
    _denied(promote, "role 'admin' may not grant role 'owner', which is above its own")
    assert await _roles(client, owner, ws) == {
        owner.id: "owner",
        admin.id: "admin",
        viewer.id: "viewer",
    }


async def test_an_admin_still_manages_the_members_below_owner(client: httpx.AsyncClient) -> None:
    owner = await signup(client, "Owner")
    ws = await new_workspace(client, owner)
    admin = await _with(client, owner, ws, "admin")
    viewer = await _with(client, owner, ws, "viewer")
    other = await signup(client, "Other")

    added = await client.post(
        f"/api/v1/workspaces/{ws}/members",
        json={"email": other.email, "role": "admin"},
        headers=admin.headers,
    )
    changed = await client.patch(
        f"/api/v1/workspaces/{ws}/members/{viewer.id}",
        json={"role": "member"},
        headers=admin.headers,
    )
    removed = await client.delete(
        f"/api/v1/workspaces/{ws}/members/{other.id}", headers=admin.headers
    )

    assert (added.status_code, changed.status_code, removed.status_code) == (201, 204, 204)
    assert await _roles(client, owner, ws) == {
        owner.id: "owner",
        admin.id: "admin",
        viewer.id: "member",
    }


async def test_owners_manage_owners(client: httpx.AsyncClient) -> None:
    owner = await signup(client, "Owner")
    ws = await new_workspace(client, owner)
    second = await _with(client, owner, ws, "owner")

    demoted = await client.patch(
        f"/api/v1/workspaces/{ws}/members/{second.id}",
        json={"role": "viewer"},
        headers=owner.headers,
    )
    promoted = await client.patch(
        f"/api/v1/workspaces/{ws}/members/{second.id}",
        json={"role": "owner"},
        headers=owner.headers,
    )
    removed = await client.delete(
        f"/api/v1/workspaces/{ws}/members/{second.id}", headers=owner.headers
    )

    assert (demoted.status_code, promoted.status_code, removed.status_code) == (204, 204, 204)
    assert await _roles(client, owner, ws) == {owner.id: "owner"}


async def test_two_owners_demoting_each_other_at_once_leave_one_owner(
    client: httpx.AsyncClient,
) -> None:
    # Which one wins is up to the scheduler; that exactly one does, and an owner stays, is not.
    for _ in range(3):
        ana = await signup(client, "Ana")
        ws = await new_workspace(client, ana)
        bo = await _with(client, ana, ws, "owner")

        results = await asyncio.gather(
            client.patch(
                f"/api/v1/workspaces/{ws}/members/{bo.id}",
                json={"role": "viewer"},
                headers=ana.headers,
            ),
            client.patch(
                f"/api/v1/workspaces/{ws}/members/{ana.id}",
                json={"role": "viewer"},
                headers=bo.headers,
            ),
        )

        codes = sorted(r.status_code for r in results)
        assert codes in ([204, 403], [204, 409]), [r.text for r in results]
        assert sorted((await _roles(client, ana, ws)).values()) == ["owner", "viewer"]


async def _key(client: httpx.AsyncClient, by: Account, ws: str, role: str) -> dict[str, str]:
    created = await client.post(
        "/api/v1/api-keys",
        json={"workspace_id": ws, "name": "ci", "role": role},
        headers=by.headers,
    )
    assert created.status_code == 201, created.text
    body = created.json()
    return {"id": body["id"], "Authorization": f"Bearer {body['key']}"}


async def test_a_removed_admins_key_stops_working_and_is_listed_revoked(
    client: httpx.AsyncClient,
) -> None:
    owner = await signup(client, "Owner")
    ws = await new_workspace(client, owner)
    admin = await _with(client, owner, ws, "admin")
    key = await _key(client, admin, ws, "admin")
    auth = {"Authorization": key["Authorization"]}
    assert (await client.get(f"/api/v1/workspaces/{ws}/members", headers=auth)).status_code == 200

    removed = await client.delete(
        f"/api/v1/workspaces/{ws}/members/{admin.id}", headers=owner.headers
    )
    assert removed.status_code == 204
    stranger = await signup(client, "Stranger")

    listed = await client.get(f"/api/v1/workspaces/{ws}/members", headers=auth)
    added = await client.post(
        f"/api/v1/workspaces/{ws}/members",
        json={"email": stranger.email, "role": "admin"},
        headers=auth,
    )

    for response in (listed, added):
        assert response.status_code == 401, response.text
        assert response.json()["error"]["message"] == "invalid or revoked API key"
    keys = await client.get(f"/api/v1/api-keys?workspace_id={ws}", headers=owner.headers)
    [listed_key] = [k for k in keys.json() if k["id"] == key["id"]]
    assert listed_key["revoked_at"] is not None
    assert await _roles(client, owner, ws) == {owner.id: "owner"}


async def test_a_key_acts_with_at_most_its_creators_current_role(
    client: httpx.AsyncClient,
) -> None:
    owner = await signup(client, "Owner")
    ws = await new_workspace(client, owner)
    admin = await _with(client, owner, ws, "admin")
    key = await _key(client, admin, ws, "admin")
    auth = {"Authorization": key["Authorization"]}
    stranger = await signup(client, "Stranger")

    demoted = await client.patch(
        f"/api/v1/workspaces/{ws}/members/{admin.id}",
        json={"role": "viewer"},
        headers=owner.headers,
    )
    assert demoted.status_code == 204
    added = await client.post(
        f"/api/v1/workspaces/{ws}/members",
        json={"email": stranger.email, "role": "viewer"},
        headers=auth,
    )
    keys = await client.get(f"/api/v1/api-keys?workspace_id={ws}", headers=auth)
    read = await client.get(f"/api/v1/workspaces/{ws}", headers=auth)

    _denied(added, "role 'viewer' may not 'members:manage' in this workspace")
    _denied(keys, "role 'viewer' may not manage API keys in this workspace")
    assert read.status_code == 200
    assert read.json()["role"] == "viewer"
    assert await _roles(client, owner, ws) == {owner.id: "owner", admin.id: "viewer"}


async def test_a_key_cannot_promote_its_own_creator(client: httpx.AsyncClient) -> None:
    owner = await signup(client, "Owner")
    ws = await new_workspace(client, owner)
    admin = await _with(client, owner, ws, "admin")
    key = await _key(client, admin, ws, "admin")

    promote = await client.patch(
        f"/api/v1/workspaces/{ws}/members/{admin.id}",
        json={"role": "owner"},
        headers={"Authorization": key["Authorization"]},
    )

    _denied(promote, "nobody may change their own role; ask another owner")
