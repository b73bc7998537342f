"""The role matrix, written out by hand: which role may do what. Not computed from the code's
own table (PERMISSIONS / allows), so widening a role (say, members managing budgets) fails here
until someone means it and edits this table too."""

from __future__ import annotations

import httpx
import pytest

from agentmill.domain.permissions import PERMISSIONS, Permission, Role
from tests.api.test_workspaces import (
    ENDPOINTS,
    Endpoint,
    _dead_letter,
    _fill,
    _memory,
    _provider,
    _waiting_run,
    _workspace_with,
)

_VIEWER = {"workflow:read", "usage:read"}
_MEMBER = _VIEWER | {
    "workflow:create",
    "workflow:update",
    "workflow:execute",
    "run:cancel",
    "run:approve",
    "model:call",
}
_ADMIN = _MEMBER | {
    "workflow:delete",
    "members:manage",
    "api_keys:manage",
    "budgets:manage",
    "providers:manage",
    "egress:manage",
}
EXPECTED: dict[str, set[str]] = {
    "viewer": _VIEWER,
    "member": _MEMBER,
    "admin": _ADMIN,
    "owner": _ADMIN | {"workspace:manage"},
}
ALL = {
    "workflow:create",
    "workflow:read",
    "workflow:update",
    "workflow:delete",
    "workflow:execute",
    "run:cancel",
    "run:approve",
    "workspace:manage",
    "members:manage",
    "usage:read",
    "api_keys:manage",
    "budgets:manage",
    "model:call",
    "providers:manage",
    "egress:manage",
}


def test_the_code_grants_exactly_the_written_table() -> None:
    assert {p.value for p in Permission} == ALL
    assert {r.value: {p.value for p in ps} for r, ps in PERMISSIONS.items()} == EXPECTED


# One representative request per permission: the first route in the API tests' list that needs
# it (a write where there is one, since reads are the easy ones).
def _representative(permission: str) -> Endpoint:
    needing = [e for e in ENDPOINTS if e.permission.value == permission]
    writes = [e for e in needing if e.method != "GET"]
    return (writes or needing)[0]


@pytest.mark.parametrize("role", sorted(EXPECTED), ids=str)
@pytest.mark.parametrize("permission", sorted(ALL), ids=str)
async def test_each_role_is_allowed_or_refused_as_written(
    client: httpx.AsyncClient, role: str, permission: str
) -> None:
    endpoint = _representative(permission)
    owner, user, ws = await _workspace_with(client, Role(role))
    other = await client.post(
        "/api/v1/auth/register",
        json={"email": f"other-{ws}@example.com", "name": "O", "password": "correct horse"},
    )
    assert other.status_code == 202, other.text
    names = {"ws": ws, "other": f"other-{ws}@example.com"}
    if "{workflow}" in endpoint.path or "{run}" in endpoint.path:
        names["workflow"], names["run"] = await _waiting_run(client, owner, ws)
        if endpoint.method == "DELETE":  # a workflow with unfinished runs cannot be deleted
            await client.post(f"/api/v1/runs/{names['run']}/cancel", headers=owner.headers)
    if "{dead_letter}" in endpoint.path:
        names["dead_letter"] = await _dead_letter(client, owner, ws)
    if "/providers/existing" in endpoint.path:
        await _provider(client, owner, ws)
    if "{memory}" in endpoint.path:
        names["memory"] = await _memory(client, owner, ws)
    headers = user.headers
    if endpoint.api_key:  # a key with the role, made by the owner
        key = await client.post(
            "/api/v1/api-keys",
            json={"workspace_id": ws, "name": "role", "role": role},
            headers=owner.headers,
        )
        headers = {"Authorization": f"Bearer {key.json()['key']}"}

    response = await client.request(
        endpoint.method,
        _fill(endpoint.path, names),
        json=_fill(endpoint.body, names),
        headers=headers,
    )

    if permission in EXPECTED[role]:
        assert response.status_code != 403, response.text
        assert response.status_code < 400, response.text
    else:
        assert response.status_code == 403, response.text
        assert response.json()["error"]["code"] == "permission_denied"
