"""/api/v1/workspaces/{ws}/egress: a workspace's own allowlist for http_request, within the
operator's ceiling; applied to its agents' calls and to no other workspace's; and workspace
providers' base URLs refused on non-public addresses unless the operator allows them."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from agentmill.api.app import create_app
from agentmill.config import Settings
from agentmill.engine.engine import Engine
from tests.api.conftest import Account, new_workspace, signup
from tests.api.test_workflows_and_runs import YAML, settle
from tests.gateway.wire._harness import WireResponse, WireServer

OPERATOR_YAML = """
tools:
  http_request:
    egress: {hosts: [api.example.com], ports: [443]}
    allow_workspace_networks: [127.0.0.0/8]
"""


@pytest.fixture
async def open_app(database_url: str, tmp_path: Path) -> AsyncIterator[FastAPI]:
    """A server whose operator lets workspaces open loopback networks (and no others)."""
    config = tmp_path / "agentmill.yaml"
    config.write_text(OPERATOR_YAML)
    application = create_app(Settings(config=config), database_url=database_url)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def open_client(open_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=open_app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://agentmill.test") as http:
        yield http


def egress_url(ws: str) -> str:
    return f"/api/v1/workspaces/{ws}/egress"


async def add_member(client: httpx.AsyncClient, owner: Account, ws: str, role: str) -> Account:
    user = await signup(client, role.title())
    added = await client.post(
        f"/api/v1/workspaces/{ws}/members",
        json={"email": user.email, "role": role},
        headers=owner.headers,
    )
    assert added.status_code == 201, added.text
    return user


async def test_the_operators_default_applies_until_the_workspace_sets_its_own(
    open_client: httpx.AsyncClient,
) -> None:
    owner = await signup(open_client)
    ws = await new_workspace(open_client, owner)
    default = {
        "workspace_id": ws,
        "source": "operator",
        "hosts": ["api.example.com"],
        "networks": [],
        "ports": [443],
        "permitted_networks": ["127.0.0.0/8"],
        "updated_at": None,
    }
    assert (await open_client.get(egress_url(ws), headers=owner.headers)).json() == default

    own = {"hosts": ["*.example.org", "127.0.0.1"], "networks": ["127.0.0.0/24"], "ports": [8443]}
    put = await open_client.put(egress_url(ws), json=own, headers=owner.headers)
    assert put.status_code == 200, put.text
    got = (await open_client.get(egress_url(ws), headers=owner.headers)).json()
    assert got == {**default, **own, "source": "workspace", "updated_at": got["updated_at"]}
    assert got["updated_at"] is not None
    assert put.json() == got

    # Ports default to 80 and 443, as in agentmill.yaml.
    put = await open_client.put(
        egress_url(ws), json={"hosts": ["a.example"]}, headers=owner.headers
    )
    assert (put.json()["hosts"], put.json()["ports"]) == (["a.example"], [80, 443])

    cleared = await open_client.delete(egress_url(ws), headers=owner.headers)
    assert cleared.status_code == 204
    assert (await open_client.get(egress_url(ws), headers=owner.headers)).json() == default


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"networks": ["10.0.0.1/8"]}, "networks.0", "egress network '10.0.0.1/8' is not a CIDR"),
        ({"networks": ["ten/8"]}, "networks.0", "egress network 'ten/8' is not a CIDR block"),
        ({"ports": [443, 70000]}, "ports.1", "egress port 70000 is not a port (1-65535)"),
        ({"ports": [0]}, "ports.0", "egress port 0 is not a port (1-65535)"),
        ({"ports": ["443"]}, "ports.0", "Input should be a valid integer"),
        ({"hosts": ["ok.example", "*."]}, "hosts.1", "egress host '*.' is not a host name"),
        ({"hosts": ["*.10.0.0.1"]}, "hosts.0", "a wildcard needs a domain name"),
        ({"hosts": ["http://x.example/"]}, "hosts.0", "is not a host name or IP address"),
        ({"hosts": "x.example"}, "hosts", "Input should be a valid list"),
        ({"hosts": [], "proxies": []}, "proxies", "Extra inputs are not permitted"),
    ],
)
async def test_a_bad_entry_is_refused_naming_it_and_nothing_is_saved(
    client: httpx.AsyncClient, body: dict[str, Any], field: str, message: str
) -> None:
    owner = await signup(client)
    ws = await new_workspace(client, owner)
    await client.put(egress_url(ws), json={"hosts": ["kept.example"]}, headers=owner.headers)

    response = await client.put(egress_url(ws), json=body, headers=owner.headers)

    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert error["details"][0]["field"] == field
    assert message in error["details"][0]["message"]
    assert (await client.get(egress_url(ws), headers=owner.headers)).json()["hosts"] == [
        "kept.example"
    ]


async def test_every_bad_entry_is_named_at_once(client: httpx.AsyncClient) -> None:
    owner = await signup(client)
    ws = await new_workspace(client, owner)
    body = {"hosts": ["*.", "good.example"], "networks": ["nope"], "ports": [99999]}

    response = await client.put(egress_url(ws), json=body, headers=owner.headers)

    fields = [d["field"] for d in response.json()["error"]["details"]]
    assert (response.status_code, fields) == (422, ["hosts.0", "networks.0", "ports.0"])


async def test_non_public_networks_need_the_operators_permission(
    client: httpx.AsyncClient, open_client: httpx.AsyncClient
) -> None:
    # The default server lets workspaces open none.
    owner = await signup(client)
    ws = await new_workspace(client, owner)
    body = {"hosts": ["127.0.0.1"], "networks": ["127.0.0.1/32"]}
    response = await client.put(egress_url(ws), json=body, headers=owner.headers)
    assert response.status_code == 422
    assert response.json()["error"]["details"] == [
        {
            "field": "networks.0",
            "message": "this server does not let workspaces open non-public networks (the "
            "operator's tools.http_request.allow_workspace_networks is off); list host names "
            "instead",
        }
    ]
    assert (await client.get(egress_url(ws), headers=owner.headers)).json()["source"] == "operator"

    # This one permits loopback, and nothing wider or elsewhere.
    owner = await signup(open_client)
    ws = await new_workspace(open_client, owner)
    body = {"networks": ["127.0.0.0/8", "10.0.0.0/8", "169.254.169.254/32"]}
    response = await open_client.put(egress_url(ws), json=body, headers=owner.headers)
    assert response.status_code == 422
    assert response.json()["error"]["details"] == [
        {
            "field": f"networks.{i}",
            "message": f"{net} is outside the networks workspaces may open here (127.0.0.0/8)",
        }
        for i, net in ((1, "10.0.0.0/8"), (2, "169.254.169.254/32"))
    ]


async def test_members_read_the_policy_and_only_admins_and_owners_change_it(
    client: httpx.AsyncClient,
) -> None:
    owner = await signup(client)
    ws = await new_workspace(client, owner)
    member = await add_member(client, owner, ws, "member")
    viewer = await add_member(client, owner, ws, "viewer")
    admin = await add_member(client, owner, ws, "admin")
    body = {"hosts": ["api.example.com"]}

    for reader in (member, viewer):
        assert (await client.get(egress_url(ws), headers=reader.headers)).status_code == 200
        refused = await client.put(egress_url(ws), json=body, headers=reader.headers)
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "permission_denied"
        assert (await client.delete(egress_url(ws), headers=reader.headers)).status_code == 403
    assert (await client.get(egress_url(ws), headers=owner.headers)).json()["source"] == "operator"

    changed = await client.put(egress_url(ws), json=body, headers=admin.headers)
    assert changed.status_code == 200
    assert (await client.get(egress_url(ws), headers=member.headers)).json()["hosts"] == [
        "api.example.com"
    ]


async def test_another_workspaces_policy_is_not_found_and_unchanged(
    client: httpx.AsyncClient,
) -> None:
    victim, stranger = await signup(client, "Victim"), await signup(client, "Stranger")
    theirs = await new_workspace(client, victim)
    await client.put(egress_url(theirs), json={"hosts": ["a.example"]}, headers=victim.headers)

    assert (await client.get(egress_url(theirs), headers=stranger.headers)).status_code == 404
    put = await client.put(egress_url(theirs), json={"hosts": ["*"]}, headers=stranger.headers)
    assert put.status_code == 404
    assert (await client.delete(egress_url(theirs), headers=stranger.headers)).status_code == 404
    got = (await client.get(egress_url(theirs), headers=victim.headers)).json()
    assert (got["source"], got["hosts"]) == ("workspace", ["a.example"])


def fetching_flow(url: str) -> str:
    replies = [
        {"tool_calls": [{"name": "http_request", "arguments": {"url": url}}]},
        "Fetched.",
    ]
    return f"""
name: fetch
agents:
  fetcher:
    model: scripted/fetcher
    tools: [http_request]
    options: {{replies: {json.dumps(replies)}}}
steps:
  - id: fetch
    agent: fetcher
    prompt: Fetch it.
"""


async def tool_outcome(
    client: httpx.AsyncClient, engine: Engine, who: Account, ws: str, url: str
) -> dict[str, Any]:
    """Run an agent that calls http_request once in ``ws``; what the call's audit event says."""
    created = await client.post(
        f"/api/v1/workspaces/{ws}/workflows",
        content=fetching_flow(url),
        headers={**who.headers, **YAML},
    )
    assert created.status_code == 201, created.text
    started = await client.post(
        f"/api/v1/workflows/{created.json()['id']}/runs", json={}, headers=who.headers
    )
    run = await settle(client, who, started.json()["id"])
    assert run["status"] == "COMPLETED", run
    (event,) = [
        e for e in await engine.events(run_id=run["id"]) if e["data"].get("topic") == "tool"
    ]
    return dict(event["data"])


async def test_an_agent_fetches_what_its_workspace_allows_and_another_workspace_cannot(
    open_app: FastAPI, open_client: httpx.AsyncClient
) -> None:
    async def answer(_: object) -> WireResponse:
        return WireResponse(body={"temperature": 21})

    engine: Engine = open_app.state.engine
    owner = await signup(open_client)
    allowed, other = (
        await new_workspace(open_client, owner),
        await new_workspace(open_client, owner),
    )
    with WireServer(answer, lambda status, message: {"error": message}) as server:
        policy = {"hosts": ["127.0.0.1"], "networks": ["127.0.0.1/32"], "ports": [server.port]}
        put = await open_client.put(egress_url(allowed), json=policy, headers=owner.headers)
        assert put.status_code == 200, put.text

        fetched = await tool_outcome(open_client, engine, owner, allowed, f"{server.url}/now")
        refused = await tool_outcome(open_client, engine, owner, other, f"{server.url}/now")

    assert (fetched["tool"], fetched["outcome"], fetched["error"]) == ("http_request", "ok", None)
    # The other workspace has the operator's default: api.example.com on 443 only.
    assert refused["outcome"] == "error"
    assert refused["error"] == f"refused: port {server.port} is not allowed (allowed ports: 443)"
    assert [r.path for r in server.requests] == ["/now"]  # the refused call never arrived


PRIVATE_URLS = [
    ("http://127.0.0.1:8000/v1", "127.0.0.1 is a loopback address"),
    ("http://169.254.169.254/", "169.254.169.254 is the cloud metadata address"),
    ("http://[::1]/", "::1 is a loopback address"),
    ("http://2130706433/", "'2130706433' is an IP address in an unusual form"),
]


@pytest.mark.parametrize(("url", "reason"), PRIVATE_URLS)
async def test_a_provider_on_a_non_public_address_is_refused(
    client: httpx.AsyncClient, url: str, reason: str
) -> None:
    owner = await signup(client)
    ws = await new_workspace(client, owner)
    providers = f"/api/v1/workspaces/{ws}/providers"
    body = {"name": "mine", "kind": "openai_compatible", "base_url": url, "api_key": "sk-x"}

    created = await client.post(providers, json=body, headers=owner.headers)

    assert created.status_code == 422, created.text
    (detail,) = created.json()["error"]["details"]
    assert detail["field"] == "base_url"
    assert detail["message"].startswith(f"refused: {reason}")
    assert detail["message"].endswith(
        "; this server only calls providers on public addresses "
        "(the operator can allow others with AGENTMILL_ALLOW_PRIVATE_PROVIDER_URLS)"
    )
    assert (await client.get(providers, headers=owner.headers)).json() == []

    # Nor can an existing provider be pointed there.
    body = {"name": "pub", "kind": "openai_compatible", "base_url": "https://93.184.215.14/v1"}
    assert (
        await client.post(providers, json={**body, "api_key": "k"}, headers=owner.headers)
    ).status_code == 201
    patched = await client.patch(f"{providers}/pub", json={"base_url": url}, headers=owner.headers)
    assert patched.status_code == 422
    assert patched.json()["error"]["details"][0]["field"] == "base_url"
    got = (await client.get(f"{providers}/pub", headers=owner.headers)).json()
    assert got["base_url"] == "https://93.184.215.14/v1"


async def test_the_operator_can_allow_providers_on_private_addresses(database_url: str) -> None:
    settings = Settings(allow_private_provider_urls=True)
    application = create_app(settings, database_url=database_url, workers=False)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://a.test") as client:
            owner = await signup(client)
            ws = await new_workspace(client, owner)
            for index, (url, _) in enumerate(PRIVATE_URLS):
                body = {"name": f"p{index}", "kind": "ollama", "base_url": url}
                created = await client.post(
                    f"/api/v1/workspaces/{ws}/providers", json=body, headers=owner.headers
                )
                assert created.status_code == 201, created.text
                assert created.json()["base_url"] == url
