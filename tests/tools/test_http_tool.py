"""The http_request tool against real servers on loopback, and every SSRF probe we know of.

The loopback servers stand in for the internet: a test allows them explicitly (by network and
port) when it wants a request to reach one, and otherwise checks that nothing reached it.
"""

from __future__ import annotations

import gzip
import json
import re
import socket
from collections.abc import AsyncIterator, Sequence
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest

from agentmill.tools.base import ToolContext, ToolResult
from agentmill.tools.http import EgressPolicy, HttpRequestTool, Refused
from agentmill.tools.http._url import parse_url
from tests.tools._http_servers import LoopbackServer, Reply, Seen, make_certificates


class FakeDNS:
    """A resolver that records each lookup and answers from a script (last answer repeats)."""

    def __init__(self, answers: dict[str, list[list[str]]]) -> None:
        self.answers = answers
        self.lookups: list[str] = []

    async def __call__(self, host: str, port: int) -> Sequence[str]:
        self.lookups.append(host)
        script = self.answers.get(host)
        if script is None:
            raise OSError(-2, "Name or service not known")
        return script[min(self.lookups.count(host), len(script)) - 1]


def egress(
    *servers: LoopbackServer,
    hosts: Sequence[str] = (),
    networks: Sequence[str] = ("127.0.0.1/32",),
    ports: Sequence[int] = (),
) -> ToolContext:
    """A context whose workspace allows ``networks`` and the servers' ports (else 80, 443)."""
    settings: dict[str, Any] = {"hosts": list(hosts), "networks": list(networks)}
    if ports or servers:
        settings["ports"] = [*ports, *(s.port for s in servers)]
    return ToolContext(workspace_id="ws", settings={"egress": settings})


async def json_reply(seen: Seen) -> Reply:
    return Reply(
        headers={
            "Content-Type": "application/json",
            "Set-Cookie": "session=secret",
            "X-RateLimit-Remaining": "41",
        },
        body=json.dumps({"ok": True, "method": seen.method}).encode(),
    )


async def echo_reply(seen: Seen) -> Reply:
    return Reply(
        headers={"Content-Type": "application/json"},
        body=json.dumps(
            {
                "method": seen.method,
                "content_type": seen.headers.get("content-type"),
                "body": seen.body.decode(),
                "authorization": seen.headers.get("authorization"),
            }
        ).encode(),
    )


def redirect_to(location: str, status: int = 302) -> Any:
    async def reply(seen: Seen) -> Reply:
        return Reply(status=status, headers={"Location": location})

    return reply


@pytest.fixture
async def server() -> AsyncIterator[LoopbackServer]:
    s = await LoopbackServer().start()
    s.routes["/json"] = json_reply
    s.routes["/echo"] = echo_reply
    yield s
    await s.stop()


@pytest.fixture
async def other() -> AsyncIterator[LoopbackServer]:
    """A second server on 127.0.0.2, a loopback address no test allows unless it says so."""
    s = await LoopbackServer("127.0.0.2").start()
    s.routes["/echo"] = echo_reply
    yield s
    await s.stop()


def ok(result: ToolResult) -> dict[str, Any]:
    assert not result.is_error, result.content
    content: dict[str, Any] = result.content
    return content


def refused(result: ToolResult) -> str:
    assert result.is_error, result.content
    assert isinstance(result.content, str)
    return result.content


# ---------------------------------------------------------------------------- normal use


async def test_get_json_from_an_allowed_server(server: LoopbackServer) -> None:
    result = await HttpRequestTool().run({"url": f"{server.origin}/json"}, egress(server))

    content = ok(result)
    assert content["status"] == 200
    assert content["body"] == {"ok": True, "method": "GET"}
    assert content["truncated"] is False
    assert content["url"] == f"{server.origin}/json"
    # A safe subset of headers: the content type and rate limits, never cookies.
    assert content["headers"]["content-type"] == "application/json"
    assert content["headers"]["x-ratelimit-remaining"] == "41"
    assert "set-cookie" not in content["headers"]
    assert [r.target for r in server.requests] == ["/json"]
    assert server.requests[0].headers["user-agent"].startswith("AgentMill")


async def test_post_sends_a_json_body_and_a_text_body(server: LoopbackServer) -> None:
    tool = HttpRequestTool()
    as_json = await tool.run(
        {"url": f"{server.origin}/echo", "method": "POST", "body": {"a": [1, 2]}},
        egress(server),
    )
    as_text = await tool.run(
        {
            "url": f"{server.origin}/echo",
            "method": "put",
            "body": "plain words",
            "headers": {"Authorization": "Bearer t0ken"},
        },
        egress(server),
    )

    assert ok(as_json)["body"] == {
        "method": "POST",
        "content_type": "application/json",
        "body": '{"a": [1, 2]}',
        "authorization": None,
    }
    assert ok(as_text)["body"] == {
        "method": "PUT",
        "content_type": "text/plain; charset=utf-8",
        "body": "plain words",
        "authorization": "Bearer t0ken",
    }


async def test_head_has_no_body_and_text_stays_text(server: LoopbackServer) -> None:
    async def text(seen: Seen) -> Reply:
        return Reply(headers={"Content-Type": "text/html; charset=utf-8"}, body=b"<p>hi</p>")

    server.routes["/page"] = text
    tool = HttpRequestTool()
    head = ok(await tool.run({"url": f"{server.origin}/page", "method": "HEAD"}, egress(server)))
    get = ok(await tool.run({"url": f"{server.origin}/page"}, egress(server)))

    assert (head["status"], head["body"]) == (200, "")
    assert get["body"] == "<p>hi</p>"
    assert [r.method for r in server.requests] == ["HEAD", "GET"]


async def test_the_size_cap_truncates_an_endless_body(server: LoopbackServer) -> None:
    async def endless() -> AsyncIterator[bytes]:
        while True:
            yield b"x" * 4096

    async def stream(seen: Seen) -> Reply:
        return Reply(headers={"Content-Type": "text/plain"}, chunks=endless())

    server.routes["/endless"] = stream
    result = await HttpRequestTool(max_response_bytes=10_000).run(
        {"url": f"{server.origin}/endless"}, egress(server)
    )

    content = ok(result)
    assert content["truncated"] is True
    assert content["body"] == "x" * 10_000
    assert result.size == 10_000


async def test_the_size_cap_holds_for_a_compressed_body(server: LoopbackServer) -> None:
    bomb = gzip.compress(b"\0" * 20_000_000)  # about 20 KB that inflate to 20 MB

    async def compressed(seen: Seen) -> Reply:
        assert seen.headers["accept-encoding"] == "gzip, deflate"
        return Reply(headers={"Content-Encoding": "gzip"}, body=bomb)

    async def small(seen: Seen) -> Reply:
        return Reply(
            headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
            body=gzip.compress(b'{"zipped": true}'),
        )

    server.routes["/bomb"] = compressed
    server.routes["/small"] = small
    tool = HttpRequestTool(max_response_bytes=50_000)
    bombed = ok(await tool.run({"url": f"{server.origin}/bomb"}, egress(server)))
    zipped = ok(await tool.run({"url": f"{server.origin}/small"}, egress(server)))

    assert bombed["truncated"] is True
    assert bombed["body"] == "\0" * 50_000
    assert zipped == {**zipped, "body": {"zipped": True}, "truncated": False}


async def test_a_slow_server_is_cut_off_at_the_timeout(server: LoopbackServer) -> None:
    async def slow(seen: Seen) -> Reply:
        return Reply(delay=60, body=b"too late")

    server.routes["/slow"] = slow
    result = await HttpRequestTool().run(
        {"url": f"{server.origin}/slow", "timeout": 0.3}, egress(server)
    )

    assert refused(result) == f"timed out after 0.3 s ({server.origin}/slow)"
    assert len(server.requests) == 1  # it was sent, then abandoned


async def test_redirects_are_followed_and_post_becomes_get_on_303(
    server: LoopbackServer,
) -> None:
    server.routes["/start"] = redirect_to("/middle", status=303)
    server.routes["/middle"] = redirect_to(f"{server.origin}/echo", status=307)
    result = await HttpRequestTool().run(
        {"url": f"{server.origin}/start", "method": "POST", "body": "x"}, egress(server)
    )

    content = ok(result)
    assert content["url"] == f"{server.origin}/echo"
    assert content["body"]["method"] == "GET"
    assert [(r.method, r.target) for r in server.requests] == [
        ("POST", "/start"),
        ("GET", "/middle"),
        ("GET", "/echo"),
    ]


async def test_credentials_do_not_follow_a_redirect_to_another_origin(
    server: LoopbackServer, other: LoopbackServer
) -> None:
    server.routes["/away"] = redirect_to(f"{other.origin}/echo", status=307)
    context = egress(server, other, networks=["127.0.0.1/32", "127.0.0.2/32"])
    result = await HttpRequestTool().run(
        {
            "url": f"{server.origin}/away",
            "method": "POST",
            "body": "payload",
            "headers": {"Authorization": "Bearer t0ken", "X-Api-Key": "k"},
        },
        context,
    )

    assert ok(result)["body"]["body"] == "payload"  # 307 keeps the method and body
    assert server.requests[0].headers["authorization"] == "Bearer t0ken"
    assert "authorization" not in other.requests[0].headers
    assert "x-api-key" not in other.requests[0].headers


async def test_too_many_redirects_stop(server: LoopbackServer) -> None:
    server.routes["/loop"] = redirect_to("/loop")
    result = await HttpRequestTool(max_redirects=3).run(
        {"url": f"{server.origin}/loop"}, egress(server)
    )

    assert refused(result) == "stopped after 3 redirects; the last one pointed to '/loop'"
    assert len(server.requests) == 4


# ---------------------------------------------------------------------------- SSRF probes

PROBES = [
    ("http://127.0.0.1:{port}/json", "refused: 127.0.0.1 is a loopback address"),
    ("http://[::1]:{port}/json", "refused: ::1 is a loopback address"),
    (
        "http://169.254.169.254/latest/meta-data/",
        "refused: 169.254.169.254 is the cloud metadata address",
    ),
    ("http://10.0.0.1/", "refused: 10.0.0.1 is a private address"),
    ("http://192.168.1.1/", "refused: 192.168.1.1 is a private address"),
    ("http://172.16.0.1/", "refused: 172.16.0.1 is a private address"),
    ("http://169.254.1.1/", "refused: 169.254.1.1 is a link-local address"),
    ("http://100.64.0.1/", "refused: 100.64.0.1 is a carrier-grade NAT (shared) address"),
    ("http://0.0.0.0:{port}/", "refused: 0.0.0.0 is an unspecified ('this network') address"),
    ("http://224.0.0.1/", "refused: 224.0.0.1 is a multicast address"),
    ("http://240.0.0.1/", "refused: 240.0.0.1 is a reserved address"),
    ("http://[::]:{port}/", "refused: :: is the unspecified address"),
    ("http://[fe80::1]/", "refused: fe80::1 is a link-local address"),
    ("http://[fd00::1]/", "refused: fd00::1 is a unique local (private) address"),
    ("http://[ff02::1]/", "refused: ff02::1 is a multicast address"),
    (
        "http://[::ffff:127.0.0.1]:{port}/",
        "refused: ::ffff:7f00:1 is an IPv4-mapped address (of 127.0.0.1)",
    ),
    (
        "http://[64:ff9b::a00:1]/",  # NAT64 of 10.0.0.1
        "refused: 64:ff9b::a00:1 is an address that embeds 10.0.0.1, a private address",
    ),
    (
        "http://[2002:7f00:1::]/",  # 6to4 of 127.0.0.1
        "refused: 2002:7f00:1:: is an address that embeds 127.0.0.1, a loopback address",
    ),
    ("http://[2001:0:4136:e378::1]/", "refused: 2001:0:4136:e378::1 is a Teredo address"),
]
ODD_URLS = [
    ("http://2130706433:{port}/", "'2130706433' is an IP address in an unusual form"),
    ("http://0x7f000001:{port}/", "'0x7f000001' is an IP address in an unusual form"),
    ("http://0177.0.0.1:{port}/", "'0177.0.0.1' is an IP address in an unusual form"),
    ("http://127.1:{port}/", "'127.1' is an IP address in an unusual form"),
    ("http://0x7f.0.0.1:{port}/", "'0x7f.0.0.1' is an IP address in an unusual form"),
    ("http://allowed.test@127.0.0.1:{port}/", "URLs with user info ('user@host') are refused"),
    ("http://allowed.test:x@127.0.0.1:{port}/", "URLs with user info ('user@host') are refused"),
    ("http://[fe80::1%25eth0]/", "IPv6 zone ids are refused ('fe80::1%25eth0')"),
    ("http://127.0.0.1%2e:{port}/", "percent-encoded hosts are refused"),
    ("http://127.0.0.1\\@allowed.test/", "the URL contains '\\\\'"),
    ("file:///etc/passwd", "only http and https URLs are allowed, not 'file'"),
    ("gopher://127.0.0.1:{port}/", "only http and https URLs are allowed, not 'gopher'"),
    ("http:/127.0.0.1/", "has no '//' after the scheme"),
]


@pytest.mark.parametrize(("url", "message"), PROBES)
async def test_non_public_addresses_are_refused(
    server: LoopbackServer, url: str, message: str
) -> None:
    # Any host name and the server's port are allowed: only the address rules stand in the way.
    dns = FakeDNS({})
    context = egress(server, hosts=["*"], networks=[], ports=[80])
    result = await HttpRequestTool(resolver=dns).run({"url": url.format(port=server.port)}, context)

    assert refused(result) == message
    assert server.requests == []
    assert dns.lookups == []


@pytest.mark.parametrize(("url", "message"), ODD_URLS)
async def test_odd_urls_are_refused(server: LoopbackServer, url: str, message: str) -> None:
    dns = FakeDNS({})
    context = egress(server, hosts=["*"], networks=["127.0.0.0/8"], ports=[80])
    result = await HttpRequestTool(resolver=dns).run({"url": url.format(port=server.port)}, context)

    assert refused(result).startswith("refused: ")
    assert message in refused(result)
    assert server.requests == []
    assert dns.lookups == []


async def test_a_host_name_that_resolves_to_loopback_is_refused(server: LoopbackServer) -> None:
    # The system resolver, for real: localhost is allowed by name but not by address.
    context = egress(server, hosts=["localhost"], networks=[])
    result = await HttpRequestTool().run({"url": f"http://localhost:{server.port}/json"}, context)

    assert re.fullmatch(
        r"refused: localhost resolves to (127\.0\.0\.1|::1), a loopback address", refused(result)
    )
    assert server.requests == []


async def test_one_private_address_among_public_ones_refuses_the_host() -> None:
    dns = FakeDNS({"mixed.test": [["93.184.215.14", "10.1.2.3"]]})
    result = await HttpRequestTool(resolver=dns).run(
        {"url": "http://mixed.test/"}, egress(hosts=["mixed.test"], networks=[])
    )

    assert refused(result) == "refused: mixed.test resolves to 10.1.2.3, a private address"


async def test_a_host_outside_the_allowlist_is_not_even_resolved() -> None:
    dns = FakeDNS({"evil.test": [["93.184.215.14"]]})
    tool = HttpRequestTool(resolver=dns)
    listed = egress(hosts=["api.test", "*.example.test"], networks=[])

    not_listed = await tool.run({"url": "http://evil.test/"}, listed)
    parent = await tool.run({"url": "http://example.test/"}, listed)
    no_settings = await tool.run({"url": "http://evil.test/"}, ToolContext())

    assert refused(not_listed) == "refused: 'evil.test' is not in this workspace's egress allowlist"
    assert refused(parent) == "refused: 'example.test' is not in this workspace's egress allowlist"
    assert refused(no_settings) == (
        "refused: 'evil.test' is not in this workspace's egress allowlist"
    )
    assert dns.lookups == []


async def test_a_port_outside_the_allowlist_is_refused(server: LoopbackServer) -> None:
    context = egress(networks=["127.0.0.1/32"])  # the server's port is not 80 or 443
    result = await HttpRequestTool().run({"url": f"{server.origin}/json"}, context)

    assert refused(result) == f"refused: port {server.port} is not allowed (allowed ports: 80, 443)"
    assert server.requests == []


@pytest.mark.parametrize(
    ("location", "message"),
    [
        ("http://127.0.0.2:{other}/echo", "127.0.0.2 is a loopback address"),
        ("http://169.254.169.254/latest/", "169.254.169.254 is the cloud metadata address"),
        ("http://internal.test:{other}/", "internal.test resolves to 10.0.0.1, a private address"),
        ("http://2130706433:{other}/", "'2130706433' is an IP address in an unusual form"),
    ],
)
async def test_a_redirect_from_an_allowed_host_to_a_forbidden_one_is_refused(
    server: LoopbackServer, other: LoopbackServer, location: str, message: str
) -> None:
    server.routes["/hop"] = redirect_to(location.format(other=other.port))
    dns = FakeDNS({"internal.test": [["10.0.0.1"]]})
    context = egress(server, other, hosts=["*"], networks=["127.0.0.1/32"], ports=[80])
    result = await HttpRequestTool(resolver=dns).run({"url": f"{server.origin}/hop"}, context)

    assert refused(result).startswith("refused: ")
    assert message in refused(result)
    assert str(server.port) in refused(result)  # it names the hop that redirected
    assert [r.target for r in server.requests] == ["/hop"]
    assert other.requests == []


# ---------------------------------------------------------------------------- DNS rebinding


@pytest.fixture
async def twins() -> AsyncIterator[tuple[LoopbackServer, LoopbackServer]]:
    """Two servers on the same port: 127.0.0.1 (allowed) and 127.0.0.2 (never allowed)."""
    first = await LoopbackServer("127.0.0.1").start()
    second = await LoopbackServer("127.0.0.2").start(first.port)
    for s in (first, second):
        s.routes["/json"] = json_reply
        s.routes["/again"] = redirect_to("/json")
    yield first, second
    for s in (first, second):
        await s.stop()


async def test_dns_that_changes_after_the_check_is_not_asked_again(
    twins: tuple[LoopbackServer, LoopbackServer],
) -> None:
    checked, rebound = twins
    # The first answer passes the check; any later lookup would send the request elsewhere.
    dns = FakeDNS({"rebind.test": [["127.0.0.1"], ["127.0.0.2"]]})
    context = egress(checked, hosts=["rebind.test"], networks=["127.0.0.1/32"])
    result = await HttpRequestTool(resolver=dns).run(
        {"url": f"http://rebind.test:{checked.port}/json"}, context
    )

    assert ok(result)["body"] == {"ok": True, "method": "GET"}
    assert dns.lookups == ["rebind.test"]
    assert [(r.peer, r.headers["host"]) for r in checked.requests] == [
        ("127.0.0.1", f"rebind.test:{checked.port}")
    ]
    assert rebound.requests == []


async def test_a_redirect_is_resolved_and_checked_again(
    twins: tuple[LoopbackServer, LoopbackServer],
) -> None:
    checked, rebound = twins
    dns = FakeDNS({"rebind.test": [["127.0.0.1"], ["127.0.0.2"]]})
    context = egress(checked, hosts=["rebind.test"], networks=["127.0.0.1/32"])
    result = await HttpRequestTool(resolver=dns).run(
        {"url": f"http://rebind.test:{checked.port}/again"}, context
    )

    assert refused(result) == (
        "refused: rebind.test resolves to 127.0.0.2, a loopback address "
        f"(redirected from http://rebind.test:{checked.port}/again)"
    )
    assert dns.lookups == ["rebind.test", "rebind.test"]
    assert [r.target for r in checked.requests] == ["/again"]
    assert rebound.requests == []


# ---------------------------------------------------------------------------- TLS


async def test_tls_verifies_the_host_name_while_connecting_to_the_checked_address(
    tmp_path: Path,
) -> None:
    certs = make_certificates(tmp_path, ["pinned.test"])
    server = await LoopbackServer(tls=certs.server).start()
    server.routes["/json"] = json_reply
    try:
        dns = FakeDNS({"pinned.test": [["127.0.0.1"]], "other.test": [["127.0.0.1"]]})
        tool = HttpRequestTool(resolver=dns, ssl_context=certs.client)
        context = egress(server, hosts=["pinned.test", "other.test"])

        good = await tool.run({"url": f"https://pinned.test:{server.port}/json"}, context)
        wrong_name = await tool.run({"url": f"https://other.test:{server.port}/json"}, context)
    finally:
        await server.stop()

    assert ok(good)["body"] == {"ok": True, "method": "GET"}
    assert server.requests[0].headers["host"] == f"pinned.test:{server.port}"
    message = refused(wrong_name)
    assert message.startswith(f"request to https://other.test:{server.port}/json failed: ")
    assert "certificate verify failed" in message
    assert len(server.requests) == 1


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"url": "http://a.test/", "method": "TRACE"}, "method must be one of"),
        ({"url": "http://a.test/", "body": "x"}, "a GET request cannot have a body"),
        ({"url": "http://a.test/", "headers": {"Host": "b.test"}}, "the Host header is set by"),
        ({"url": "http://a.test/", "headers": {"X": "a\r\nB: c"}}, "must be a string on one"),
        ({"url": "http://a.test/", "timeout": 0}, "timeout must be a positive number"),
        ({"url": 7}, "url must be a string"),
    ],
)
async def test_invalid_arguments_are_error_results(arguments: dict[str, Any], message: str) -> None:
    dns = FakeDNS({"a.test": [["93.184.215.14"]]})
    result = await HttpRequestTool(resolver=dns).run(arguments, egress(hosts=["a.test"]))

    assert refused(result).startswith("invalid arguments: ")
    assert message in refused(result)
    assert dns.lookups == []


async def test_malformed_egress_settings_are_reported() -> None:
    context = ToolContext(settings={"egress": {"networks": ["10.0.0.1/8"]}})
    result = await HttpRequestTool().run({"url": "http://a.test/"}, context)

    assert refused(result).startswith(
        "this workspace's egress settings are invalid: egress network '10.0.0.1/8' is not a CIDR"
    )


async def test_an_unknown_host_is_a_resolution_error() -> None:
    dns = FakeDNS({})
    result = await HttpRequestTool(resolver=dns).run(
        {"url": "https://nowhere.test/"}, egress(hosts=["nowhere.test"])
    )

    assert refused(result) == "could not resolve 'nowhere.test': Name or service not known"


async def test_a_closed_port_is_a_connection_error() -> None:
    with socket.socket() as probe:  # a port nothing listens on once this closes
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = await HttpRequestTool().run(
        {"url": f"http://127.0.0.1:{port}/"}, egress(networks=["127.0.0.1/32"], ports=[port])
    )

    assert refused(result) == (
        f"request to http://127.0.0.1:{port}/ failed: "
        f"ConnectError: [Errno 111] Connect call failed ('127.0.0.1', {port})"
    )


def test_host_patterns_are_normalised_like_urls() -> None:
    policy = EgressPolicy.from_settings(
        {"hosts": ["API.Example.TEST.", "*.bücher.test", "[2001:DB8::1]"], "ports": [443]}
    )

    assert policy.hosts == {"api.example.test", "*.xn--bcher-kva.test", "2001:db8::1"}
    assert policy.ports == {443}


@pytest.mark.parametrize(
    "address",
    [
        "93.184.215.14",
        "8.8.8.8",
        "2606:4700:4700::1111",
        "2002:5db8:d70e::",  # 6to4 of 93.184.215.14
        "64:ff9b::5db8:d70e",  # NAT64 of 93.184.215.14
    ],
)
def test_public_unicast_addresses_pass_the_check(address: str) -> None:
    # The probes above prove refusals; this proves the check is not simply "refuse everything".
    policy = EgressPolicy.from_settings({"hosts": ["api.test"]})
    target = parse_url("https://api.test/")

    policy.check_address(target, ip_address(address))  # does not raise
    with pytest.raises(Refused, match=re.escape("api.test resolves to 10.9.8.7, a private")):
        policy.check_address(target, ip_address("10.9.8.7"))
