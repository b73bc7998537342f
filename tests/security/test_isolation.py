"""Tenant isolation, generated from the app's own routes: every route that takes an id (in its
path, its query or its body) has cases here, or this module fails naming it.

Two tenants, A (user ``a``, and an API key of A's) and B (user ``b``), each with one object of
every kind a route takes an id of. The intruder is A, with a's login or A's key:

* **theirs**: a route under B's workspace or on B's object, with B's ids;
* **mine, your id**: a route under A's own workspace, where a may do anything, with B's ids
  (``/workspaces/{A}/budgets/{B's budget}``): only the repository's workspace condition stops it;
* **query and body forms**: ``?workspace=B``, ``?workflow_id=<B's>``, B's ids as subjects;
* **WebSockets**: B's run stream and B's workspace feed.

Each is refused (404 with the standard error body, 422 for a body naming an id that is not in
the caller's workspace), answers nothing of B's, and leaves B exactly as it was: after every
case B's whole state is read back as ``b`` and compared with how it was before.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI, WebSocket
from fastapi.routing import iter_route_contexts
from starlette.routing import WebSocketRoute

from agentmill.api.app import create_app
from agentmill.config import Settings
from agentmill.domain.permissions import Role
from agentmill.errors import NotFound
from agentmill.store import queries, workflows
from agentmill.store.db import Database, Tx
from agentmill.store.repositories import (
    api_keys,
    invitations,
    memories,
    providers,
    spending,
    workspaces,
)
from tests.api.conftest import Account, new_workspace, signup
from tests.api.test_workspaces import GATE, _dead_letter, _waiting_run
from tests.conftest import BACKENDS

# ---------------------------------------------------------------------------------------------
# The cases, per route: (method, path template as the app names it) -> probes.


@dataclass(frozen=True)
class Probe:
    """One request by the intruder. ``url`` and ``body`` name ids as ``{A.x}``/``{B.x}``."""

    form: str  # theirs | mine-your-id | query | body
    url: str
    body: Any = None
    status: int = 404
    callers: tuple[str, ...] = ("user", "key")  # a's login token, A's API key
    code: str = ""  # the error's code, if not the status's usual one


def theirs(url: str, body: Any = None, **kw: Any) -> Probe:
    return Probe("theirs", url, body, **kw)


def mine(url: str, body: Any = None, **kw: Any) -> Probe:
    return Probe("mine-your-id", url, body, **kw)


V1 = "/api/v1"
WS_A, WS_B = "/api/v1/workspaces/{A.ws}", "/api/v1/workspaces/{B.ws}"
NEW_PROVIDER = {"name": "intruder", "kind": "openai", "api_key": "sk-intruder"}
RENAMED_GATE = {**GATE, "steps": [{"id": "gate", "type": "human"}]}

CASES: dict[tuple[str, str], list[Probe]] = {
    # workspaces and members
    ("GET", "/api/v1/workspaces/{ws}"): [theirs(WS_B)],
    ("PATCH", "/api/v1/workspaces/{ws}"): [theirs(WS_B, {"name": "Pwned"})],
    ("DELETE", "/api/v1/workspaces/{ws}"): [theirs(WS_B)],
    ("GET", "/api/v1/workspaces/{ws}/members"): [theirs(WS_B + "/members")],
    ("POST", "/api/v1/workspaces/{ws}/members"): [
        theirs(WS_B + "/members", {"email": "{A.helper_email}", "role": "owner"})
    ],
    ("PATCH", "/api/v1/workspaces/{ws}/members/{user_id}"): [
        theirs(WS_B + "/members/{B.member}", {"role": "owner"}),
        mine(WS_A + "/members/{B.member}", {"role": "owner"}),
        mine(WS_A + "/members/{B.owner}", {"role": "viewer"}),
    ],
    ("DELETE", "/api/v1/workspaces/{ws}/members/{user_id}"): [
        theirs(WS_B + "/members/{B.member}"),
        mine(WS_A + "/members/{B.member}"),
        mine(WS_A + "/members/{B.owner}"),
    ],
    # invitations
    ("POST", "/api/v1/workspaces/{ws}/invitations"): [
        theirs(WS_B + "/invitations", {"email": "{A.helper_email}", "role": "owner"})
    ],
    ("GET", "/api/v1/workspaces/{ws}/invitations"): [theirs(WS_B + "/invitations")],
    ("DELETE", "/api/v1/workspaces/{ws}/invitations/{invitation_id}"): [
        theirs(WS_B + "/invitations/{B.invitation}"),
        mine(WS_A + "/invitations/{B.invitation}"),
    ],
    # API keys (the workspace is a query parameter or in the body)
    ("POST", "/api/v1/api-keys"): [
        Probe("body", V1 + "/api-keys", {"workspace_id": "{B.ws}", "name": "x", "role": "viewer"})
    ],
    ("GET", "/api/v1/api-keys"): [Probe("query", V1 + "/api-keys?workspace_id={B.ws}")],
    ("DELETE", "/api/v1/api-keys/{key_id}"): [
        theirs(V1 + "/api-keys/{B.key}?workspace_id={B.ws}"),
        mine(V1 + "/api-keys/{B.key}?workspace_id={A.ws}"),
    ],
    # the workspace's own providers (named, not numbered)
    ("GET", "/api/v1/workspaces/{ws}/providers"): [theirs(WS_B + "/providers")],
    ("POST", "/api/v1/workspaces/{ws}/providers"): [theirs(WS_B + "/providers", NEW_PROVIDER)],
    ("GET", "/api/v1/workspaces/{ws}/providers/{name}"): [
        theirs(WS_B + "/providers/{B.provider}"),
        mine(WS_A + "/providers/{B.provider}"),
    ],
    ("PATCH", "/api/v1/workspaces/{ws}/providers/{name}"): [
        theirs(WS_B + "/providers/{B.provider}", {"timeout": 5}),
        mine(WS_A + "/providers/{B.provider}", {"timeout": 5}),
    ],
    ("DELETE", "/api/v1/workspaces/{ws}/providers/{name}"): [
        theirs(WS_B + "/providers/{B.provider}"),
        mine(WS_A + "/providers/{B.provider}"),
    ],
    # workflows and versions
    ("POST", "/api/v1/workspaces/{ws}/workflows"): [
        theirs(WS_B + "/workflows", {**GATE, "name": "planted"})
    ],
    ("GET", "/api/v1/workspaces/{ws}/workflows"): [theirs(WS_B + "/workflows")],
    ("GET", "/api/v1/workflows/{workflow_id}"): [theirs(V1 + "/workflows/{B.workflow}")],
    ("PUT", "/api/v1/workflows/{workflow_id}"): [
        theirs(V1 + "/workflows/{B.workflow}", RENAMED_GATE)
    ],
    ("DELETE", "/api/v1/workflows/{workflow_id}"): [theirs(V1 + "/workflows/{B.workflow}")],
    ("GET", "/api/v1/workflows/{workflow_id}/versions"): [
        theirs(V1 + "/workflows/{B.workflow}/versions")
    ],
    ("POST", "/api/v1/workflows/{workflow_id}/runs"): [
        theirs(V1 + "/workflows/{B.workflow}/runs", {}),
        theirs(V1 + "/workflows/{B.workflow}/runs", {"version": 1}),
    ],
    # runs, steps, human steps, events
    ("GET", "/api/v1/workspaces/{ws}/runs"): [
        theirs(WS_B + "/runs"),
        Probe("query", WS_A + "/runs?workflow_id={B.workflow}", status=200),
    ],
    ("GET", "/api/v1/runs/{run_id}"): [theirs(V1 + "/runs/{B.run}")],
    ("GET", "/api/v1/runs/{run_id}/steps"): [theirs(V1 + "/runs/{B.run}/steps")],
    ("GET", "/api/v1/runs/{run_id}/metrics"): [theirs(V1 + "/runs/{B.run}/metrics")],
    ("POST", "/api/v1/runs/{run_id}/cancel"): [theirs(V1 + "/runs/{B.run}/cancel")],
    ("POST", "/api/v1/runs/{run_id}/steps/{step_key}/approve"): [
        theirs(V1 + "/runs/{B.run}/steps/gate/approve", {"payload": {"by": "intruder"}})
    ],
    ("POST", "/api/v1/runs/{run_id}/steps/{step_key}/reject"): [
        theirs(V1 + "/runs/{B.run}/steps/gate/reject", {})
    ],
    ("POST", "/api/v1/runs/{run_id}/steps/{step_key}/respond"): [
        theirs(V1 + "/runs/{B.run}/steps/gate/respond", {"answer": {"ok": True}})
    ],
    ("GET", "/api/v1/runs/{run_id}/events"): [theirs(V1 + "/runs/{B.run}/events")],
    ("WS", "/api/v1/runs/{run_id}/ws"): [
        theirs(V1 + "/runs/{B.run}/ws"),
        theirs(V1 + "/runs/{B.run}/ws?after=0&token={token}"),
    ],
    ("WS", "/api/v1/workspaces/{ws}/runs/ws"): [
        theirs(WS_B + "/runs/ws?after=0"),
        theirs(WS_B + "/runs/ws?after=0&token={token}"),
    ],
    # artifacts (by name, within a run)
    ("GET", "/api/v1/runs/{run_id}/artifacts"): [theirs(V1 + "/runs/{B.run}/artifacts")],
    ("GET", "/api/v1/runs/{run_id}/artifacts/{name:path}"): [
        theirs(V1 + "/runs/{B.run}/artifacts/{B.artifact}")
    ],
    # usage, dead letters
    ("GET", "/api/v1/workspaces/{ws}/usage"): [theirs(WS_B + "/usage")],
    ("GET", "/api/v1/workspaces/{ws}/dead-letters"): [theirs(WS_B + "/dead-letters")],
    ("POST", "/api/v1/dead-letters/{step_id}/redrive"): [
        theirs(V1 + "/dead-letters/{B.dead_step}/redrive"),
        theirs(V1 + "/dead-letters/{B.gate_step}/redrive"),
    ],
    # spending: budgets, rate limits, markup, providers' health
    ("GET", "/api/v1/workspaces/{ws}/budgets"): [theirs(WS_B + "/budgets")],
    ("POST", "/api/v1/workspaces/{ws}/budgets"): [
        theirs(WS_B + "/budgets", {"scope": "workspace", "limit_usd": "0.01"}),
        Probe(
            "body",
            WS_A + "/budgets",
            {"scope": "api_key", "subject_id": "{B.key}", "limit_usd": "1"},
            status=422,
        ),
        Probe(
            "body",
            WS_A + "/budgets",
            {"scope": "run", "subject_id": "{B.run}", "limit_usd": "1"},
            status=422,
        ),
    ],
    ("DELETE", "/api/v1/workspaces/{ws}/budgets/{budget_id}"): [
        theirs(WS_B + "/budgets/{B.budget}"),
        mine(WS_A + "/budgets/{B.budget}"),
    ],
    ("GET", "/api/v1/workspaces/{ws}/rate-limits"): [theirs(WS_B + "/rate-limits")],
    ("POST", "/api/v1/workspaces/{ws}/rate-limits"): [
        theirs(WS_B + "/rate-limits", {"scope": "workspace", "requests_per_minute": 1}),
        Probe(
            "body",
            WS_A + "/rate-limits",
            {"scope": "user", "subject_id": "{B.member}", "requests_per_minute": 1},
            status=422,
        ),
    ],
    ("DELETE", "/api/v1/workspaces/{ws}/rate-limits/{limit_id}"): [
        theirs(WS_B + "/rate-limits/{B.limit}"),
        mine(WS_A + "/rate-limits/{B.limit}"),
    ],
    ("GET", "/api/v1/workspaces/{ws}/markup"): [theirs(WS_B + "/markup")],
    ("PUT", "/api/v1/workspaces/{ws}/markup"): [theirs(WS_B + "/markup", {"markup": "9"})],
    ("GET", "/api/v1/providers/health"): [
        Probe("query", V1 + "/providers/health?workspace={B.ws}"),
        Probe("query", V1 + "/providers/health?workspace={A.ws}", status=200),
        Probe("query", V1 + "/providers/health", status=200),
    ],
    # egress
    ("GET", "/api/v1/workspaces/{ws}/egress"): [theirs(WS_B + "/egress")],
    ("PUT", "/api/v1/workspaces/{ws}/egress"): [
        theirs(WS_B + "/egress", {"hosts": ["evil.example.com"], "ports": [443]})
    ],
    ("DELETE", "/api/v1/workspaces/{ws}/egress"): [theirs(WS_B + "/egress")],
    # memory
    ("POST", "/api/v1/workspaces/{ws}/memory"): [theirs(WS_B + "/memory", {"text": "planted"})],
    ("GET", "/api/v1/workspaces/{ws}/memory"): [
        theirs(WS_B + "/memory"),
        Probe("query", WS_A + "/memory?q=B+secret+plan", status=200),
    ],
    ("DELETE", "/api/v1/workspaces/{ws}/memory/{memory_id}"): [
        theirs(WS_B + "/memory/{B.memory}"),
        mine(WS_A + "/memory/{B.memory}"),
    ],
    # the OpenAI-compatible gateway: a key acts in its own workspace; B's providers are not
    # A's to call or to see
    ("POST", "/v1/chat/completions"): [
        Probe(
            "body",
            "/v1/chat/completions",
            {"model": "{B.provider}/gpt", "messages": [{"role": "user", "content": "hi"}]},
            callers=("key",),
            code="model_not_found",
        )
    ],
    ("POST", "/v1/embeddings"): [
        Probe(
            "body",
            "/v1/embeddings",
            {"model": "{B.provider}/embed", "input": "hi"},
            callers=("key",),
            code="model_not_found",
        )
    ],
    ("GET", "/v1/models"): [Probe("query", "/v1/models", status=200, callers=("key",))],
}

# Routes that take no tenant's id at all: nothing to put another workspace's id into.
NO_TENANT_ID = {
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("GET", "/docs/oauth2-redirect"),
    ("GET", "/redoc"),
    ("GET", "/health"),
    ("GET", "/metrics"),
    ("GET", "/"),
    ("POST", "/api/v1/auth/register"),
    ("POST", "/api/v1/auth/login"),
    ("POST", "/api/v1/auth/logout"),
    ("GET", "/api/v1/auth/me"),
    ("POST", "/api/v1/workspaces"),  # creates one of the caller's own
    ("GET", "/api/v1/workspaces"),  # the caller's own
}


def _app_routes(app: FastAPI) -> dict[tuple[str, str], Any]:
    """Every (method, path) the app serves, WebSockets as method ``WS``."""
    found: dict[tuple[str, str], Any] = {}
    for context in iter_route_contexts(app.routes):
        path = context.path
        if path is None:
            continue
        if isinstance(context.original_route, WebSocketRoute) or context.methods is None:
            found[("WS", path)] = context
            continue
        for method in context.methods - {"HEAD"}:
            found[(method, path)] = context
    return found


def _route_regex(path: str) -> re.Pattern[str]:
    """The path template as a regex: {x} is one segment, {x:path} any."""
    pattern = re.sub(r"\{[^}:]+:path\}", ".+", path)
    return re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", pattern) + "$")


def _uncovered(app: FastAPI) -> list[tuple[str, str]]:
    return sorted(set(_app_routes(app)) - set(CASES) - NO_TENANT_ID)


def test_every_route_has_isolation_cases() -> None:
    app = create_app(Settings(), database_url="sqlite://")
    routes = _app_routes(app)
    missing = _uncovered(app)
    assert not missing, (
        f"routes with no isolation case in tests/security/test_isolation.py: {missing}"
    )
    # Every path parameter is someone's id: such a route cannot be declared id-free.
    exempt_with_ids = sorted(r for r in NO_TENANT_ID if "{" in r[1])
    assert not exempt_with_ids, exempt_with_ids
    stale = sorted((set(CASES) | NO_TENANT_ID) - set(routes))
    assert not stale, f"cases for routes the app does not have: {stale}"
    for (method, path), probes in CASES.items():
        assert probes, f"{method} {path} has no probes"
        regex = _route_regex(path)
        for probe in probes:  # each probe reaches the route it is listed under
            assert regex.match(probe.url.split("?")[0]), (method, path, probe.url)


def test_a_new_route_without_cases_is_named() -> None:
    """The check above can fail: an HTTP and a WebSocket route added to the app are reported."""
    app = create_app(Settings(), database_url="sqlite://")
    router = APIRouter()

    @router.post("/workspaces/{ws}/gadgets/{gadget_id}/polish")
    async def polish(ws: str, gadget_id: str) -> None: ...

    @router.websocket("/workspaces/{ws}/gadgets/ws")
    async def gadgets(websocket: WebSocket, ws: str) -> None: ...

    app.include_router(router, prefix="/api/v1")

    assert _uncovered(app) == [
        ("POST", "/api/v1/workspaces/{ws}/gadgets/{gadget_id}/polish"),
        ("WS", "/api/v1/workspaces/{ws}/gadgets/ws"),
    ]


# ---------------------------------------------------------------------------------------------
# The two tenants.


@dataclass
class Tenant:
    owner: Account
    ws: str
    key_headers: dict[str, str]
    ids: dict[str, str] = field(default_factory=dict)
    secrets: list[str] = field(default_factory=list)  # text only this tenant's data holds


@dataclass
class World:
    app: FastAPI
    client: httpx.AsyncClient
    a: Tenant
    b: Tenant
    b_before: dict[str, Any]  # B's state as the last case left it (each case checks its own)


def _provider(label: str) -> dict[str, Any]:
    return {
        "name": f"{label.lower()}prov",
        "kind": "openai_compatible",
        "base_url": "https://93.184.215.14/v1",  # public: loopback would need the operator's leave
        "api_key": f"sk-{label.lower()}-provider-key",
    }


async def _ok(response: httpx.Response, status: int = 201) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    return body


async def _tenant(app: FastAPI, client: httpx.AsyncClient, label: str) -> Tenant:
    """A workspace with one object of every kind a route takes an id of."""
    owner = await signup(client, f"Owner{label}")
    ws = await new_workspace(client, owner, f"{label} Secret Co")
    h = owner.headers
    member = await signup(client, f"Member{label}")
    helper = await signup(client, f"Helper{label}")  # not a member anywhere
    await _ok(
        await client.post(
            f"/api/v1/workspaces/{ws}/members",
            json={"email": member.email, "role": "viewer"},
            headers=h,
        )
    )
    invitee = f"invitee-{label.lower()}@example.com"
    invitation = await _ok(
        await client.post(
            f"/api/v1/workspaces/{ws}/invitations",
            json={"email": invitee, "role": "member"},
            headers=h,
        )
    )
    key = await _ok(
        await client.post(
            "/api/v1/api-keys",
            json={"workspace_id": ws, "name": f"{label}-key", "role": "admin"},
            headers=h,
        )
    )
    budget = await _ok(
        await client.post(
            f"/api/v1/workspaces/{ws}/budgets",
            json={"scope": "workspace", "limit_usd": "5"},
            headers=h,
        )
    )
    limit = await _ok(
        await client.post(
            f"/api/v1/workspaces/{ws}/rate-limits",
            json={"scope": "api_key", "subject_id": key["id"], "requests_per_minute": 60},
            headers=h,
        )
    )
    provider = _provider(label)
    await _ok(await client.post(f"/api/v1/workspaces/{ws}/providers", json=provider, headers=h))
    await _ok(
        await client.put(
            f"/api/v1/workspaces/{ws}/egress",
            json={"hosts": [f"{label.lower()}-only.example.com"], "ports": [443]},
            headers=h,
        ),
        200,
    )
    await _ok(
        await client.put(f"/api/v1/workspaces/{ws}/markup", json={"markup": "0.25"}, headers=h),
        200,
    )
    memory = await _ok(
        await client.post(
            f"/api/v1/workspaces/{ws}/memory", json={"text": f"{label} secret plan"}, headers=h
        )
    )
    workflow, run = await _waiting_run(client, owner, ws)
    steps = await _ok(await client.get(f"/api/v1/runs/{run}/steps", headers=h), 200)
    gate = next(s for s in steps if s["key"] == "gate")
    assert gate["status"] == "WAITING", steps
    versions = await _ok(await client.get(f"/api/v1/workflows/{workflow}/versions", headers=h), 200)
    dead_step = await _dead_letter(client, owner, ws)
    artifact = await app.state.engine.artifacts.write(
        run, "report.md", f"{label} secret report".encode()
    )
    return Tenant(
        owner=owner,
        ws=ws,
        key_headers={"Authorization": f"Bearer {key['key']}"},
        ids={
            "ws": ws,
            "owner": owner.id,
            "member": member.id,
            "helper_email": helper.email,
            "key": key["id"],
            "invitation": invitation["id"],
            "budget": budget["id"],
            "limit": limit["id"],
            "provider": provider["name"],
            "memory": memory["id"],
            "workflow": workflow,
            "version": versions[0]["id"],
            "run": run,
            "gate_step": gate["id"],
            "dead_step": dead_step,
            "artifact": artifact.name,
        },
        secrets=[
            f"{label} Secret Co",
            f"{label} secret plan",
            f"{label} secret report",
            f"{label.lower()}-only.example.com",
            member.email,
            owner.email,
            invitee,
            invitation["token"],
            f"{label}-key",
            provider["name"],
        ],
    )


async def _state(client: httpx.AsyncClient, t: Tenant) -> dict[str, Any]:
    """Everything of the tenant's, read back as its owner (what an intruder could change)."""
    h = t.owner.headers
    ws = f"/api/v1/workspaces/{t.ws}"
    run = f"/api/v1/runs/{t.ids['run']}"

    async def get(url: str) -> Any:
        response = await client.get(url, headers=h)
        assert response.status_code == 200, (url, response.text)
        return response.json()

    urls = {
        "workspace": ws,
        "members": ws + "/members",
        "invitations": ws + "/invitations",
        "keys": f"/api/v1/api-keys?workspace_id={t.ws}",
        "budgets": ws + "/budgets",
        "rate_limits": ws + "/rate-limits",
        "markup": ws + "/markup",
        "egress": ws + "/egress",
        "providers": ws + "/providers",
        "memory": ws + "/memory",
        "workflows": ws + "/workflows",
        "versions": f"/api/v1/workflows/{t.ids['workflow']}/versions",
        "runs": ws + "/runs",
        "steps": run + "/steps",
        "artifacts": run + "/artifacts",
        "dead_letters": ws + "/dead-letters",
    }
    read = dict(zip(urls, await asyncio.gather(*map(get, urls.values())), strict=True))
    # What an intruder could change, without what moves by itself (timestamps of use).
    read["keys"] = [(k["id"], k["name"], k["role"], k["revoked_at"]) for k in read["keys"]]
    read["runs"] = sorted((r["id"], r["workflow_id"], r["status"]) for r in read["runs"]["runs"])
    read["steps"] = [(s["id"], s["key"], s["status"], s["attempt"]) for s in read["steps"]]
    read["dead_letters"] = [
        (d["step_id"], d["attempts"]) for d in read["dead_letters"]["dead_letters"]
    ]
    return read


@pytest.fixture(scope="module", params=BACKENDS)
def backend_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('isolation') / 'agentmill.db'}"
    url: str = request.getfixturevalue("pg_database")  # the session's, migrated
    return url


@pytest.fixture(scope="module")
async def world(backend_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    """Built once per module and backend: two tenants and everything in them."""
    tmp: Path = tmp_path_factory.mktemp("isolation")
    url = backend_url  # the app's lifespan migrates it
    settings = Settings(artifacts_dir=tmp / "artifacts")
    app = create_app(settings, database_url=url)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://agentmill.test") as c:
            a = await _tenant(app, c, "A")
            b = await _tenant(app, c, "B")
            yield World(app=app, client=c, a=a, b=b, b_before=await _state(c, b))


# ---------------------------------------------------------------------------------------------
# WebSockets, driven over ASGI in this event loop (the app's database lives in it).


@dataclass
class Socket:
    texts: list[str]
    close_code: int | None


async def _websocket(app: FastAPI, url: str, headers: dict[str, str], *, first: bool) -> Socket:
    """Connect to ``url``; collect what the server sends until it closes (or, with ``first``,
    until its first message: a stream that would go on, for the control)."""
    path, _, query = url.partition("?")
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    inbox.put_nowait({"type": "websocket.connect"})
    texts: list[str] = []
    close: list[int] = []
    done = asyncio.Event()

    async def receive() -> dict[str, Any]:
        return await inbox.get()

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "websocket.send":
            texts.append(message.get("text") or "")
            if first:
                done.set()
        elif message["type"] == "websocket.close":
            close.append(message.get("code", 1000))
            done.set()

    scope = {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "scheme": "ws",
        "http_version": "1.1",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": query.encode(),
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("agentmill.test", 80),
        "subprotocols": [],
    }
    task = asyncio.ensure_future(app(scope, receive, send))
    try:
        await asyncio.wait_for(done.wait(), 20)  # a bound on a hang, not a timing assertion
    finally:
        inbox.put_nowait({"type": "websocket.disconnect", "code": 1000})
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    return Socket(texts=texts, close_code=close[0] if close else None)


# ---------------------------------------------------------------------------------------------
# The cases.


def _fill(value: Any, names: dict[str, Any]) -> Any:
    if isinstance(value, str):
        return value.format(**names) if "{" in value else value
    if isinstance(value, dict):
        return {k: _fill(v, names) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, names) for v in value]
    return value


def _names(world: World, token: str) -> dict[str, Any]:
    return {
        "A": SimpleNamespace(**world.a.ids),
        "B": SimpleNamespace(**world.b.ids),
        "token": token,
    }


PROBES = [
    pytest.param(route, probe, caller, id=f"{route[0]} {probe.url} [{probe.form}, {caller}]")
    for route, probes in CASES.items()
    for probe in probes
    for caller in probe.callers
]


def _assert_nothing_of_bs(world: World, text: str, *, ids_too: bool, sent: str = "") -> None:
    """No text of B's in ``text`` (but what the intruder sent may be quoted back)."""
    for secret in world.b.secrets:
        if secret in sent:
            continue
        assert secret not in text, f"{secret!r} of B's in the answer: {text[:500]}"
    if ids_too:
        for name, value in world.b.ids.items():
            if value not in sent:
                assert value not in text, f"B's {name} {value!r} in the answer: {text[:500]}"


@pytest.mark.parametrize(("route", "probe", "caller"), PROBES)
async def test_the_intruder_is_refused_sees_nothing_and_changes_nothing(
    world: World, route: tuple[str, str], probe: Probe, caller: str
) -> None:
    headers = world.a.owner.headers if caller == "user" else world.a.key_headers
    token = headers["Authorization"].removeprefix("Bearer ")
    names = _names(world, token)
    url = _fill(probe.url, names)

    try:
        if route[0] == "WS":
            auth = {} if "token=" in url else headers
            socket = await _websocket(world.app, url, auth, first=False)
            # Refused: closed with a policy violation, and all that came first is the error.
            assert socket.close_code == 1008, socket
            assert [json.loads(t)["error"]["code"] for t in socket.texts] == ["not_found"], socket
            _assert_nothing_of_bs(world, "".join(socket.texts), ids_too=False, sent=url)
        else:
            body = _fill(probe.body, names)
            sent = url + json.dumps(body)
            response = await world.client.request(route[0], url, json=body, headers=headers)
            assert response.status_code == probe.status, response.text
            if probe.status == 200:  # a query form: answered, but with nothing of B's
                _assert_nothing_of_bs(world, response.text, ids_too=True, sent=sent)
            else:
                error = response.json()["error"]
                assert set(response.json()) == {"error"}, response.text
                # /v1 answers in OpenAI's error shape (its SDKs read it), the rest in ours.
                shape = {"message", "type", "param", "code"} if url.startswith("/v1/") else None
                assert set(error) == (shape or {"code", "message", "details"}), response.text
                expected = {404: "not_found", 422: "validation_error"}[probe.status]
                assert error["code"] == (probe.code or expected), response.text
                _assert_nothing_of_bs(world, response.text, ids_too=False, sent=sent)

    finally:  # B read back as b, and remembered, even if the answer failed this case already
        # (not after a plain GET: a read, and skipping it keeps the module near a minute)
        after = world.b_before if route[0] == "GET" else await _state(world.client, world.b)
        before, world.b_before = world.b_before, after  # a change fails this case only
    assert after == before  # B is as it was


async def test_the_websocket_harness_does_deliver_a_tenants_own_stream(world: World) -> None:
    """The control for the WebSocket cases: the same connection to A's own run, as a, gets
    A's events (so a refusal above is the route refusing, not the harness failing)."""
    url = f"/api/v1/runs/{world.a.ids['run']}/ws?after=0"
    socket = await _websocket(world.app, url, world.a.owner.headers, first=True)
    assert json.loads(socket.texts[0])["run_id"] == world.a.ids["run"], socket
    feed = f"/api/v1/workspaces/{world.a.ws}/runs/ws?after=0"
    socket = await _websocket(world.app, feed, world.a.key_headers, first=True)
    a_runs = {run_id for run_id, _, _ in (await _state(world.client, world.a))["runs"]}
    assert json.loads(socket.texts[0])["run_id"] in a_runs, socket


async def test_the_mine_your_id_routes_do_act_on_the_callers_own_ids(world: World) -> None:
    """The control for "mine, your id": the same deletes with A's own fresh ids succeed, so
    their 404 above is the workspace condition, not a wrong URL."""
    c, h, ws = world.client, world.a.owner.headers, world.a.ws
    budget = await _ok(
        await c.post(
            f"/api/v1/workspaces/{ws}/budgets",
            json={"scope": "workspace", "limit_usd": "1"},
            headers=h,
        )
    )
    assert (
        await c.delete(f"/api/v1/workspaces/{ws}/budgets/{budget['id']}", headers=h)
    ).status_code == 204
    key = await _ok(
        await c.post(
            "/api/v1/api-keys",
            json={"workspace_id": ws, "name": "spare", "role": "viewer"},
            headers=h,
        )
    )
    revoked = await c.delete(f"/api/v1/api-keys/{key['id']}?workspace_id={ws}", headers=h)
    assert revoked.status_code == 204, revoked.text


# ---------------------------------------------------------------------------------------------
# Below the routes: every repository function that takes a workspace and an object's id finds
# nothing of another workspace's (so a route that forgot its own check still could not reach it).

WRITES: dict[str, Callable[[Tx, SimpleNamespace, SimpleNamespace], object]] = {
    "spending.delete_budget": lambda tx, a, b: spending.delete_budget(tx, a.ws, b.budget),
    "spending.delete_rate_limit": lambda tx, a, b: spending.delete_rate_limit(tx, a.ws, b.limit),
    "api_keys.revoke_api_key": lambda tx, a, b: api_keys.revoke_api_key(tx, a.ws, b.key),
    "invitations.revoke_invitation": lambda tx, a, b: invitations.revoke_invitation(
        tx, a.ws, b.invitation
    ),
    "memories.delete_memory": lambda tx, a, b: memories.delete_memory(tx, a.ws, b.memory),
    "providers.update_provider": lambda tx, a, b: providers.update_provider(
        tx, a.ws, b.provider, {"timeout": 5}, secret_key="test-secret"
    ),
    "providers.delete_provider": lambda tx, a, b: providers.delete_provider(tx, a.ws, b.provider),
    "workspaces.change_role": lambda tx, a, b: workspaces.change_role(
        tx, a.ws, b.member, Role.OWNER, actor_id=a.owner
    ),
    "workspaces.remove_member": lambda tx, a, b: workspaces.remove_member(
        tx, a.ws, b.member, actor_id=a.owner
    ),
    "workflows.delete_workflow": lambda tx, a, b: workflows.delete_workflow(tx, a.ws, b.workflow),
}

READS: dict[str, Callable[[Tx, SimpleNamespace, SimpleNamespace], object]] = {
    "providers.get_provider": lambda tx, a, b: providers.get_provider(tx, a.ws, b.provider),
    "workflows.get_workflow": lambda tx, a, b: workflows.get_workflow(tx, a.ws, b.workflow),
    "workflows.list_versions": lambda tx, a, b: workflows.list_versions(tx, a.ws, b.workflow),
    "workflows.get_version": lambda tx, a, b: workflows.get_version(tx, a.ws, b.workflow, 1),
}

# Those that answer "none" rather than NotFound: what they answer must hold nothing of B's.
EMPTY: dict[str, Callable[[Tx, SimpleNamespace, SimpleNamespace], object]] = {
    "workspaces.role_in": lambda tx, a, b: workspaces.role_in(tx, a.ws, b.member),
    "spending.subject_exists(api_key)": lambda tx, a, b: (
        spending.subject_exists(tx, a.ws, "api_key", b.key) or None
    ),
    "spending.subject_exists(user)": lambda tx, a, b: (
        spending.subject_exists(tx, a.ws, "user", b.member) or None
    ),
    "spending.subject_exists(run)": lambda tx, a, b: (
        spending.subject_exists(tx, a.ws, "run", b.run) or None
    ),
    "queries.list_runs(workflow_id)": lambda tx, a, b: (
        queries.list_runs(tx, a.ws, workflow_id=b.workflow).runs or None
    ),
    "queries.run_status_events": lambda tx, a, b: (
        [e for e in queries.run_status_events(tx, a.ws, 0) if e["run_id"] == b.run] or None
    ),
}


@pytest.mark.parametrize("name", [*WRITES, *READS, *EMPTY])
async def test_repositories_find_nothing_of_another_workspace(world: World, name: str) -> None:
    db: Database = world.app.state.db
    a, b = SimpleNamespace(**world.a.ids), SimpleNamespace(**world.b.ids)
    try:
        if name in EMPTY:
            assert await db.read(lambda tx: EMPTY[name](tx, a, b)) is None
        elif name in WRITES:  # refused, so rolled back: nothing of B's written
            with pytest.raises(NotFound):
                await db.write(lambda tx: WRITES[name](tx, a, b))
        else:
            with pytest.raises(NotFound):
                await db.read(lambda tx: READS[name](tx, a, b))
    finally:  # after the writes (the reads only read)
        after = await _state(world.client, world.b) if name in WRITES else world.b_before
        before, world.b_before = world.b_before, after
    assert after == before
