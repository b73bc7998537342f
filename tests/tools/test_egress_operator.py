"""How the operator's egress settings and a workspace's own policy combine (tools.http._operator):
the workspace's replaces the default; its non-public networks stay within the operator's
ceiling, when it is set and again when it is used; provider URLs are checked like requests."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from ipaddress import ip_network

import pytest

from agentmill.errors import ConfigError
from agentmill.tools.base import ToolContext
from agentmill.tools.http import (
    WORKSPACE_EGRESS,
    EgressPolicy,
    HttpRequestTool,
    OperatorEgress,
    Refused,
    check_public_url,
    entry_errors,
)
from agentmill.tools.registry import parse_tool_settings
from tests.tools._http_servers import LoopbackServer
from tests.tools.test_http_tool import FakeDNS, json_reply, ok, refused


@pytest.fixture
async def server() -> AsyncIterator[LoopbackServer]:
    s = await LoopbackServer().start()
    s.routes["/json"] = json_reply
    yield s
    await s.stop()


def operator(allow: object = False, **egress: object) -> dict[str, object]:
    return {"egress": egress, "allow_workspace_networks": allow}


async def fetch(server: LoopbackServer, settings: dict[str, object]) -> str | dict[str, object]:
    result = await HttpRequestTool().run(
        {"url": f"{server.origin}/json"}, ToolContext(workspace_id="ws", settings=settings)
    )
    return ok(result) if not result.is_error else refused(result)


async def test_a_workspace_policy_replaces_the_operators_default(server: LoopbackServer) -> None:
    default = operator(allow=["127.0.0.0/8"], networks=["127.0.0.1/32"], ports=[server.port])
    own = {"hosts": ["api.example.com"], "networks": [], "ports": [443]}

    assert isinstance(await fetch(server, default), dict)  # the default lets it through
    told = await fetch(server, {**default, WORKSPACE_EGRESS: own})
    assert told == f"refused: port {server.port} is not allowed (allowed ports: 443)"
    assert len(server.requests) == 1


async def test_workspace_networks_count_only_within_the_operators_ceiling(
    server: LoopbackServer,
) -> None:
    own = {"hosts": ["127.0.0.1"], "networks": ["127.0.0.1/32"], "ports": [server.port]}

    for allow in (True, ["127.0.0.0/8"]):
        assert isinstance(await fetch(server, {**operator(allow), WORKSPACE_EGRESS: own}), dict)
    # The operator narrowed the ceiling after the workspace stored its policy: dropped at once.
    for allow in (False, ["10.0.0.0/8"], ["::1/128"]):
        told = await fetch(server, {**operator(allow), WORKSPACE_EGRESS: own})
        assert told == "refused: 127.0.0.1 is a loopback address"
    assert len(server.requests) == 2


def test_the_ceiling_says_why_a_network_is_refused() -> None:
    closed = OperatorEgress.from_settings({})
    some = OperatorEgress.from_settings({"allow_workspace_networks": ["10.20.0.0/16"]})
    everything = OperatorEgress.from_settings({"allow_workspace_networks": True})

    assert closed.refusal(ip_network("10.20.1.0/24")) == (
        "this server does not let workspaces open non-public networks (the operator's "
        "tools.http_request.allow_workspace_networks is off); list host names instead"
    )
    assert some.refusal(ip_network("10.20.1.0/24")) is None
    assert some.refusal(ip_network("10.0.0.0/8")) == (
        "10.0.0.0/8 is outside the networks workspaces may open here (10.20.0.0/16)"
    )
    assert some.refusal(ip_network("fd00::/8")) is not None  # another family is outside too
    assert everything.refusal(ip_network("169.254.169.254/32")) is None
    assert everything.refusal(ip_network("fd00::/8")) is None


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"allow_workspace_networks": "yes"}, "must be true, false or a list of CIDR blocks"),
        ({"allow_workspace_networks": ["10.0.0.1/8"]}, "'10.0.0.1/8' is not a CIDR block"),
        ({"egres": {}}, "unknown tools.http_request keys ['egres']"),
        ({WORKSPACE_EGRESS: {}}, "unknown tools.http_request keys ['workspace_egress']"),
    ],
)
def test_a_malformed_operator_section_fails_at_start(
    section: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_tool_settings({"tools": {"http_request": section}}, "agentmill.yaml")


def test_entry_errors_name_each_bad_entry_with_egress_policys_own_reasons() -> None:
    errors = entry_errors(
        {"hosts": ["ok.example.com", "*.", "a b"], "networks": ["10.0.0.1/8"], "ports": [0, 443]}
    )

    assert [(key, index) for key, index, _ in errors] == [
        ("hosts", 1),
        ("hosts", 2),
        ("networks", 0),
        ("ports", 0),
    ]
    assert errors[1][2].startswith("egress host 'a b' is not a host name or IP address")
    assert errors[3][2] == "egress port 0 is not a port (1-65535)"
    # Entries that pass are what from_settings accepts.
    EgressPolicy.from_settings({"hosts": ["ok.example.com"], "ports": [443]})


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://127.0.0.1:8000/v1", "127.0.0.1 is a loopback address"),
        ("http://169.254.169.254/", "169.254.169.254 is the cloud metadata address"),
        ("http://[::1]/", "::1 is a loopback address"),
        ("http://2130706433/", "'2130706433' is an IP address in an unusual form"),
        ("http://10.0.0.5:8000/v1", "10.0.0.5 is a private address"),
        ("http://localhost.test/", "localhost.test resolves to 127.0.0.1, a loopback address"),
        ("http://nowhere.test/", "could not resolve 'nowhere.test'"),
    ],
)
async def test_provider_urls_on_non_public_addresses_are_refused(url: str, message: str) -> None:
    dns = FakeDNS({"localhost.test": [["127.0.0.1"]], "api.test": [["93.184.215.14"]]})
    with pytest.raises(Refused, match=re.escape(message)):
        await check_public_url(url, resolver=dns)


async def test_a_provider_url_on_a_public_address_passes() -> None:
    dns = FakeDNS({"api.test": [["93.184.215.14", "2606:4700:4700::1111"]]})
    await check_public_url("https://api.test/v1", resolver=dns)
    await check_public_url("https://93.184.215.14/v1")
    assert dns.lookups == ["api.test"]
