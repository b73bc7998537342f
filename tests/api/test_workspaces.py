"""Workspaces, members and roles: the whole permission table, generated; tenants never meet."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from agentmill.domain.permissions import PERMISSIONS, Permission, Role, allows
from tests.api.conftest import Account, new_workspace, signup


def test_the_permission_table_is_a_strict_hierarchy() -> None:
    assert (
        PERMISSIONS[Role.VIEWER]
        < PERMISSIONS[Role.MEMBER]
        < PERMISSIONS[Role.ADMIN]
        < PERMISSIONS[Role.OWNER]
    )
    assert PERMISSIONS[Role.OWNER] == frozenset(Permission)
    assert PERMISSIONS[Role.VIEWER] == {Permission.WORKFLOW_READ, Permission.USAGE_READ}


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str  # {ws} and {other} are filled in
    permission: Permission
    body: dict[str, Any] | None = None
    api_key: bool = False  # the OpenAI-compatible /v1 endpoints take API keys only


HELLO = {"model": "scripted/m", "messages": [{"role": "user", "content": "hi"}]}


# Every workspace route that exists today, with the permission it needs.
ENDPOINTS = [
    Endpoint("GET", "/api/v1/workspaces/{ws}", Permission.WORKFLOW_READ),
    Endpoint("GET", "/api/v1/workspaces/{ws}/members", Permission.WORKFLOW_READ),
    Endpoint("PATCH", "/api/v1/workspaces/{ws}", Permission.WORKSPACE_MANAGE, {"name": "Renamed"}),
    Endpoint(
        "POST",
        "/api/v1/workspaces/{ws}/members",
        Permission.MEMBERS_MANAGE,
        {"email": "{other}", "role": "viewer"},
    ),
    Endpoint("GET", "/api/v1/api-keys?workspace_id={ws}", Permission.API_KEYS_MANAGE),
    Endpoint(
        "POST",
        "/api/v1/api-keys",
        Permission.API_KEYS_MANAGE,
        {"workspace_id": "{ws}", "name": "ci", "role": "viewer"},
    ),
    Endpoint("DELETE", "/api/v1/workspaces/{ws}", Permission.WORKSPACE_MANAGE),
    Endpoint("GET", "/api/v1/workspaces/{ws}/workflows", Permission.WORKFLOW_READ),
    Endpoint(
        "POST",
        "/api/v1/workspaces/{ws}/workflows",
        Permission.WORKFLOW_CREATE,
        {"name": "new", "steps": [{"id": "a", "value": 1}]},
    ),
    Endpoint("GET", "/api/v1/workflows/{workflow}", Permission.WORKFLOW_READ),
    Endpoint(
        "PUT",
        "/api/v1/workflows/{workflow}",
        Permission.WORKFLOW_UPDATE,
        {"name": "gate", "steps": [{"id": "a", "value": 2}]},
    ),
    Endpoint("DELETE", "/api/v1/workflows/{workflow}", Permission.WORKFLOW_DELETE),
    Endpoint("POST", "/api/v1/workflows/{workflow}/runs", Permission.WORKFLOW_EXECUTE, {}),
    Endpoint("GET", "/api/v1/workspaces/{ws}/runs", Permission.WORKFLOW_READ),
    Endpoint("GET", "/api/v1/runs/{run}", Permission.WORKFLOW_READ),
    Endpoint("GET", "/api/v1/runs/{run}/steps", Permission.WORKFLOW_READ),
    Endpoint("POST", "/api/v1/runs/{run}/cancel", Permission.RUN_CANCEL),
    Endpoint("POST", "/api/v1/runs/{run}/steps/gate/approve", Permission.RUN_APPROVE, {}),
    Endpoint("POST", "/api/v1/runs/{run}/steps/gate/reject", Permission.RUN_APPROVE, {}),
    Endpoint("GET", "/api/v1/workspaces/{ws}/usage", Permission.USAGE_READ),
    Endpoint("GET", "/api/v1/workspaces/{ws}/providers", Permission.WORKFLOW_READ),
    Endpoint("GET", "/api/v1/workspaces/{ws}/providers/existing", Permission.WORKFLOW_READ),
    Endpoint(
        "POST",
        "/api/v1/workspaces/{ws}/providers",
        Permission.PROVIDERS_MANAGE,
        {"name": "new", "kind": "openai", "api_key": "sk-new"},
    ),
    Endpoint(
        "PATCH",
        "/api/v1/workspaces/{ws}/providers/existing",
        Permission.PROVIDERS_MANAGE,
        {"timeout": 5, "api_key": "sk-changed"},
    ),
    Endpoint("DELETE", "/api/v1/workspaces/{ws}/providers/existing", Permission.PROVIDERS_MANAGE),
    Endpoint("GET", "/api/v1/workspaces/{ws}/budgets", Permission.USAGE_READ),
    Endpoint(
        "POST",
        "/api/v1/workspaces/{ws}/budgets",
        Permission.BUDGETS_MANAGE,
        {"scope": "workspace", "limit_usd": "5"},
    ),
    Endpoint("GET", "/api/v1/workspaces/{ws}/rate-limits", Permission.USAGE_READ),
    Endpoint(
        "POST",
        "/api/v1/workspaces/{ws}/rate-limits",
        Permission.BUDGETS_MANAGE,
        {"scope": "api_key", "requests_per_minute": 60},
    ),
    Endpoint("GET", "/api/v1/workspaces/{ws}/markup", Permission.USAGE_READ),
    Endpoint(
        "PUT", "/api/v1/workspaces/{ws}/markup", Permission.WORKSPACE_MANAGE, {"markup": "0.1"}
    ),
    Endpoint("GET", "/api/v1/workspaces/{ws}/egress", Permission.WORKFLOW_READ),
    Endpoint(
        "PUT",
        "/api/v1/workspaces/{ws}/egress",
        Permission.EGRESS_MANAGE,
        {"hosts": ["api.example.com"], "ports": [443]},
    ),
    Endpoint("DELETE", "/api/v1/workspaces/{ws}/egress", Permission.EGRESS_MANAGE),
    Endpoint("GET", "/api/v1/workspaces/{ws}/memory", Permission.WORKFLOW_READ),
    Endpoint(
        "POST", "/api/v1/workspaces/{ws}/memory", Permission.WORKFLOW_CREATE, {"text": "remember"}
    ),
    Endpoint("DELETE", "/api/v1/workspaces/{ws}/memory/{memory}", Permission.WORKFLOW_CREATE),
    Endpoint("GET", "/api/v1/workspaces/{ws}/dead-letters", Permission.WORKFLOW_READ),
    Endpoint("POST", "/api/v1/dead-letters/{dead_letter}/redrive", Permission.WORKFLOW_EXECUTE),
    Endpoint("POST", "/v1/chat/completions", Permission.MODEL_CALL, HELLO, api_key=True),
    Endpoint(
        "POST",
        "/v1/embeddings",
        Permission.MODEL_CALL,
        {"model": "scripted/e", "input": "hi"},
        api_key=True,
    ),
    Endpoint("GET", "/v1/models", Permission.MODEL_CALL, api_key=True),
]
# A /v1 call acts in its key's workspace: there is no other workspace it could name.
WORKSPACE_ENDPOINTS = [e for e in ENDPOINTS if not e.api_key]
COVERED = {e.permission for e in ENDPOINTS}
GATE = {
    "name": "gate",
    "steps": [{"id": "gate", "type": "human"}, {"id": "after", "needs": ["gate"], "value": 1}],
}
FAILS_ONCE = {
    "name": "fails-once",
    "agents": {
        "m": {"model": "scripted/m", "options": {"fail_attempts": 1, "fail_with": "bad_request"}}
    },
    "steps": [{"id": "call", "agent": "m", "prompt": "x"}],
}


EXISTING_PROVIDER = {
    "name": "existing",
    "kind": "openai_compatible",
    "base_url": "https://93.184.215.14/v1",  # public: loopback would need the operator's leave
    "api_key": "sk-existing",
}


async def _provider(client: httpx.AsyncClient, owner: Account, ws: str) -> None:
    created = await client.post(
        f"/api/v1/workspaces/{ws}/providers", json=EXISTING_PROVIDER, headers=owner.headers
    )
    assert created.status_code == 201, created.text


async def _memory(client: httpx.AsyncClient, owner: Account, ws: str) -> str:
    created = await client.post(
        f"/api/v1/workspaces/{ws}/memory", json={"text": "a secret plan"}, headers=owner.headers
    )
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


def _fill(value: Any, names: dict[str, str]) -> Any:
    if isinstance(value, str):
        for key, replacement in names.items():
            value = value.replace("{" + key + "}", replacement)
        return value
    if isinstance(value, dict):
        return {k: _fill(v, names) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, names) for v in value]
    return value


def test_every_permission_is_in_the_matrix() -> None:
    assert set(Permission) == COVERED


async def _waiting_run(client: httpx.AsyncClient, owner: Account, ws: str) -> tuple[str, str]:
    workflow = (
        await client.post(f"/api/v1/workspaces/{ws}/workflows", json=GATE, headers=owner.headers)
    ).json()
    run = (
        await client.post(
            f"/api/v1/workflows/{workflow['id']}/runs", json={}, headers=owner.headers
        )
    ).json()
    for _ in range(200):
        status = (await client.get(f"/api/v1/runs/{run['id']}", headers=owner.headers)).json()[
            "status"
        ]
        if status == "WAITING":
            break
        await asyncio.sleep(0.02)
    return workflow["id"], run["id"]


async def _dead_letter(client: httpx.AsyncClient, owner: Account, ws: str) -> str:
    """A run that failed, and the id of its failed step."""
    workflow = (
        await client.post(
            f"/api/v1/workspaces/{ws}/workflows", json=FAILS_ONCE, headers=owner.headers
        )
    ).json()
    run = (
        await client.post(
            f"/api/v1/workflows/{workflow['id']}/runs", json={}, headers=owner.headers
        )
    ).json()
    for _ in range(200):
        run = (await client.get(f"/api/v1/runs/{run['id']}", headers=owner.headers)).json()
        if run["status"] == "FAILED":
            break
        await asyncio.sleep(0.02)
    steps = (await client.get(f"/api/v1/runs/{run['id']}/steps", headers=owner.headers)).json()
    return str(steps[0]["id"])


async def _workspace_with(client: httpx.AsyncClient, role: Role) -> tuple[Account, Account, str]:
    owner = await signup(client, "Owner")
    ws = await new_workspace(client, owner)
    if role == Role.OWNER:
        return owner, owner, ws
    user = await signup(client, "User")
    added = await client.post(
        f"/api/v1/workspaces/{ws}/members",
        json={"email": user.email, "role": role.value},
        headers=owner.headers,
    )
    assert added.status_code == 201, added.text
    return owner, user, ws


@pytest.mark.parametrize("role", list(Role), ids=lambda r: r.value)
@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=lambda e: f"{e.method} {e.path}")
async def test_each_role_may_do_exactly_what_the_table_says(
    client: httpx.AsyncClient, role: Role, endpoint: Endpoint
) -> None:
    owner, user, ws = await _workspace_with(client, role)
    other = await signup(client, "Other")
    names = {"ws": ws, "other": other.email}
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
    if endpoint.api_key:  # a key with the role, made by the owner (an admin may not make one)
        key = await client.post(
            "/api/v1/api-keys",
            json={"workspace_id": ws, "name": "role", "role": role.value},
            headers=owner.headers,
        )
        headers = {"Authorization": f"Bearer {key.json()['key']}"}

    response = await client.request(
        endpoint.method,
        _fill(endpoint.path, names),
        json=_fill(endpoint.body, names),
        headers=headers,
    )

    if allows(role, endpoint.permission):
        assert response.status_code in (200, 201, 202, 204), response.text
    else:
        assert response.status_code == 403, response.text
        assert response.json()["error"]["code"] == "permission_denied"


@pytest.mark.parametrize("endpoint", WORKSPACE_ENDPOINTS, ids=lambda e: f"{e.method} {e.path}")
async def test_another_tenants_workspace_is_not_found_and_unchanged(
    client: httpx.AsyncClient, endpoint: Endpoint
) -> None:
    victim = await signup(client, "Victim")
    theirs = await new_workspace(client, victim, "Secret Co")
    intruder = await signup(client, "Intruder")
    await new_workspace(client, intruder, "Mine")
    names = {"ws": theirs, "other": intruder.email}
    names["workflow"], names["run"] = await _waiting_run(client, victim, theirs)
    if "{dead_letter}" in endpoint.path:
        names["dead_letter"] = await _dead_letter(client, victim, theirs)
    await _provider(client, victim, theirs)
    names["memory"] = await _memory(client, victim, theirs)

    response = await client.request(
        endpoint.method,
        _fill(endpoint.path, names),
        json=_fill(endpoint.body, names),
        headers=intruder.headers,
    )

    assert response.status_code == 404, response.text
    assert "Secret Co" not in response.text
    still = await client.get(f"/api/v1/workspaces/{theirs}", headers=victim.headers)
    assert still.json()["name"] == "Secret Co"
    memory = await client.get(f"/api/v1/workspaces/{theirs}/memory", headers=victim.headers)
    assert [m["id"] for m in memory.json()] == [names["memory"]]  # not forgotten by the intruder
    members = await client.get(f"/api/v1/workspaces/{theirs}/members", headers=victim.headers)
    assert [m["email"] for m in members.json()] == [victim.email]
    run = (await client.get(f"/api/v1/runs/{names['run']}", headers=victim.headers)).json()
    assert run["status"] == "WAITING"  # not cancelled, approved or rejected by the intruder
    workflows = (
        await client.get(f"/api/v1/workspaces/{theirs}/workflows", headers=victim.headers)
    ).json()
    expected = {("gate", 1), ("fails-once", 1)} if "dead_letter" in names else {("gate", 1)}
    assert {(w["name"], w["latest_version"]) for w in workflows} == expected
    providers = (
        await client.get(f"/api/v1/workspaces/{theirs}/providers", headers=victim.headers)
    ).json()  # none added, changed or deleted by the intruder
    assert [(p["name"], p["timeout"], p["has_api_key"]) for p in providers] == [
        ("existing", 60.0, True)
    ]
    if "dead_letter" in names:  # not re-driven by the intruder
        letters = await client.get(
            f"/api/v1/workspaces/{theirs}/dead-letters", headers=victim.headers
        )
        assert [d["step_id"] for d in letters.json()["dead_letters"]] == [names["dead_letter"]]


async def test_a_workspace_always_keeps_an_owner(client: httpx.AsyncClient) -> None:
    owner = await signup(client, "Owner")
    ws = await new_workspace(client, owner)

    demote = await client.patch(
        f"/api/v1/workspaces/{ws}/members/{owner.id}", json={"role": "admin"}, headers=owner.headers
    )
    leave = await client.delete(
        f"/api/v1/workspaces/{ws}/members/{owner.id}", headers=owner.headers
    )

    # Nobody changes their own role (issue 17), so the last owner cannot step down either.
    assert demote.status_code == 403
    assert (
        demote.json()["error"]["message"] == "nobody may change their own role; ask another owner"
    )
    assert leave.status_code == 409
    assert (
        leave.json()["error"]["message"]
        == "a workspace needs at least one owner; make someone else owner first"
    )
    second = await signup(client, "Second")
    await client.post(
        f"/api/v1/workspaces/{ws}/members",
        json={"email": second.email, "role": "owner"},
        headers=owner.headers,
    )
    assert (
        await client.patch(
            f"/api/v1/workspaces/{ws}/members/{owner.id}",
            json={"role": "admin"},
            headers=second.headers,
        )
    ).status_code == 204


async def test_members_list_shows_roles_and_a_user_sees_only_their_workspaces(
    client: httpx.AsyncClient,
) -> None:
    ana = await signup(client, "Ana")
    bo = await signup(client, "Bo")
    ws = await new_workspace(client, ana, "Shared")
    await new_workspace(client, bo, "Bo's own")
    await client.post(
        f"/api/v1/workspaces/{ws}/members",
        json={"email": bo.email, "role": "viewer"},
        headers=ana.headers,
    )

    members = (await client.get(f"/api/v1/workspaces/{ws}/members", headers=ana.headers)).json()
    mine = (await client.get("/api/v1/workspaces", headers=ana.headers)).json()
    bos = (await client.get("/api/v1/workspaces", headers=bo.headers)).json()

    assert [(m["email"], m["role"]) for m in members] == [
        (ana.email, "owner"),
        (bo.email, "viewer"),
    ]
    assert [w["name"] for w in mine] == ["Shared"]
    assert sorted((w["name"], w["role"]) for w in bos) == [
        ("Bo's own", "owner"),
        ("Shared", "viewer"),
    ]
