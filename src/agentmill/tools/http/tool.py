"""The ``http_request`` tool: HTTP for agents, through the workspace's egress policy.

Each hop (the first request and every redirect) goes the same way:

1. parse the URL strictly (``_url``) and check its host and port against the allowlist, before
   any DNS lookup, so a refused name is never even resolved;
2. resolve the host once and check every address it has (``_addresses``);
3. connect only to those addresses (``_transport``), with TLS verifying the host name.

Redirects are followed here, not by httpx, so each one passes through the same three steps.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import httpx

from agentmill.errors import ConfigError
from agentmill.tools.base import ToolContext, ToolResult
from agentmill.tools.http._addresses import IPAddress, parse_address
from agentmill.tools.http._body import read_capped, render_body
from agentmill.tools.http._errors import Refused, RequestFailed
from agentmill.tools.http._operator import call_policy
from agentmill.tools.http._policy import EgressPolicy
from agentmill.tools.http._request import METHODS, Call, InvalidArguments, parse_call
from agentmill.tools.http._transport import PinnedBackend, PinnedTransport
from agentmill.tools.http._url import Target, parse_url

Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
"""Resolves ``(host, port)`` to IP address strings; the default asks the system once."""

_REDIRECTS = {301, 302, 303, 307, 308}
# Headers that say nothing secret; the rest (Authorization, API keys, cookies) stay with the
# origin the model sent them to and are dropped when a redirect leaves it.
_KEPT_ACROSS_ORIGINS = {"accept", "accept-language", "content-type", "user-agent"}
_SHOWN_HEADERS = {
    "age",
    "cache-control",
    "content-disposition",
    "content-language",
    "content-length",
    "content-type",
    "date",
    "etag",
    "expires",
    "last-modified",
    "link",
    "location",
    "retry-after",
    "www-authenticate",
    "x-request-id",
}
_SHOWN_PREFIXES = ("ratelimit-", "x-ratelimit-")
_USER_AGENT = "AgentMill-http_request/0.1"


async def system_resolver(host: str, port: int) -> list[str]:
    """One ``getaddrinfo`` call (in the loop's executor) for ``host``."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    return [str(info[4][0]) for info in infos]


class HttpRequestTool:
    """Make HTTP requests to the hosts a workspace allows, and nowhere else.

    ``resolver`` and ``ssl_context`` are for tests and unusual deployments; the defaults are
    the system resolver and certifi's CA bundle.
    """

    name = "http_request"

    def __init__(
        self,
        *,
        resolver: Resolver | None = None,
        ssl_context: ssl.SSLContext | None = None,
        max_redirects: int = 5,
        max_response_bytes: int = 256 * 1024,
        max_request_bytes: int = 1024 * 1024,
        default_timeout: float = 30.0,
        max_timeout: float = 120.0,
    ) -> None:
        self._resolver = resolver or system_resolver
        self._ssl_context = ssl_context or httpx.create_ssl_context()
        self.max_redirects = max_redirects
        self.max_response_bytes = max_response_bytes
        self.max_request_bytes = max_request_bytes
        self.default_timeout = default_timeout
        self.max_timeout = max_timeout
        self.description = (
            "Send an HTTP request and get back {status, url, headers, body, truncated}. The "
            "body is parsed JSON when the response is JSON, otherwise text, cut at "
            f"{max_response_bytes} bytes. Only hosts in the workspace's egress allowlist are "
            "reachable; private, loopback and other internal addresses are refused. Redirects "
            f"are followed (at most {max_redirects}). A string body is sent as text, any other "
            "JSON value as application/json."
        )
        self.parameters: Mapping[str, Any] = {
            "type": "object",
            "properties": {
                "url": {"type": "string", "description": "An absolute http:// or https:// URL."},
                "method": {"type": "string", "enum": list(METHODS), "default": "GET"},
                "headers": {"type": "object", "additionalProperties": {"type": "string"}},
                "body": {"description": "A string sent as is, or a JSON value sent as JSON."},
                "timeout": {
                    "type": "number",
                    "exclusiveMinimum": 0,
                    "maximum": max_timeout,
                    "description": f"Seconds for the whole call (default {default_timeout:g}).",
                },
            },
            "required": ["url"],
            "additionalProperties": False,
        }

    async def run(self, arguments: Mapping[str, Any], context: ToolContext) -> ToolResult:
        """Make the request; every failure is an error result, never an exception."""
        try:
            policy = call_policy(context.settings)
            call = parse_call(
                arguments,
                default_timeout=self.default_timeout,
                max_timeout=self.max_timeout,
                max_body=self.max_request_bytes,
            )
        except ConfigError as exc:
            return _error(f"this workspace's egress settings are invalid: {exc}")
        except InvalidArguments as exc:
            return _error(f"invalid arguments: {exc}")
        try:
            async with asyncio.timeout(call.timeout):
                return await self._fetch(call, policy)
        except Refused as exc:
            return _error(f"refused: {exc}")
        except RequestFailed as exc:
            return _error(str(exc))
        except (TimeoutError, httpx.TimeoutException):
            return _error(f"timed out after {call.timeout:g} s ({call.url})")

    async def _fetch(self, call: Call, policy: EgressPolicy) -> ToolResult:
        target = parse_url(call.url)
        method, headers, body = call.method, call.headers, call.body
        came_from: Target | None = None
        for hop in range(self.max_redirects + 1):
            try:
                policy.check_target(target)
                addresses = await self._resolve(target, policy)
            except Refused as exc:
                if came_from is None:
                    raise
                raise Refused(f"{exc} (redirected from {came_from})") from None
            async with self._exchange(target, addresses, method, headers, body) as response:
                location = response.headers.get("location")
                if response.status_code not in _REDIRECTS or location is None:
                    return await self._result(target, method, response)
                if hop == self.max_redirects:
                    break
                came_from, target = target, _redirect_target(target, location)
                method, headers, body = _redirected(
                    response.status_code, method, headers, body, came_from, target
                )
        raise RequestFailed(
            f"stopped after {self.max_redirects} redirects; the last one pointed to {location!r}"
        )

    async def _resolve(self, target: Target, policy: EgressPolicy) -> list[IPAddress]:
        """The target's addresses, looked up once, each one checked."""
        if target.ip is not None:
            addresses = [target.ip]
        else:
            try:
                found = await self._resolver(target.host, target.port)
            except OSError as exc:
                reason = exc.strerror or str(exc)
                raise RequestFailed(f"could not resolve {target.host!r}: {reason}") from None
            try:
                addresses = list(dict.fromkeys(parse_address(a) for a in found))
            except ValueError as exc:
                raise RequestFailed(f"resolving {target.host!r} gave {exc}") from None
            if not addresses:
                raise RequestFailed(f"{target.host!r} resolves to no address")
        for address in addresses:
            policy.check_address(target, address)
        return addresses

    @asynccontextmanager
    async def _exchange(
        self,
        target: Target,
        addresses: list[IPAddress],
        method: str,
        headers: dict[str, str],
        body: bytes | None,
    ) -> AsyncIterator[httpx.Response]:
        """One request to one checked origin; the response streams until the block ends."""
        transport = PinnedTransport(
            PinnedBackend(target.host, target.port, addresses), self._ssl_context
        )
        sent = {"user-agent": _USER_AGENT, "accept": "*/*", **headers}
        # Only encodings _body can inflate within the size cap.
        sent["accept-encoding"] = "gzip, deflate"
        try:
            async with httpx.AsyncClient(
                transport=transport, trust_env=False, follow_redirects=False, timeout=None
            ) as client:
                request = client.build_request(method, target.url, headers=sent, content=body)
                response = await client.send(request, stream=True)
                try:
                    yield response
                finally:
                    await response.aclose()
        except httpx.TimeoutException:
            raise
        except httpx.TransportError as exc:
            raise RequestFailed(f"request to {target} failed: {_describe(exc)}") from None

    async def _result(self, target: Target, method: str, response: httpx.Response) -> ToolResult:
        if method == "HEAD" or response.status_code in (204, 304):
            data, truncated = b"", False
        else:
            data, truncated = await read_capped(
                response.aiter_raw(),
                response.headers.get("content-encoding", ""),
                self.max_response_bytes,
            )
        content_type = response.headers.get("content-type", "")
        return ToolResult(
            content={
                "status": response.status_code,
                "url": str(target),
                "headers": {
                    name: value
                    for name, value in response.headers.items()
                    if name in _SHOWN_HEADERS or name.startswith(_SHOWN_PREFIXES)
                },
                "body": render_body(data, content_type, truncated=truncated),
                "truncated": truncated,
            },
            size=len(data),
        )


def _redirect_target(current: Target, location: str) -> Target:
    try:
        joined = str(current.url.join(location))
    except httpx.InvalidURL as exc:
        raise Refused(f"redirect from {current} to {location!r}: {exc}") from None
    try:
        return parse_url(joined)
    except Refused as exc:
        raise Refused(f"redirect from {current} to {location!r}: {exc}") from None


def _redirected(
    status: int,
    method: str,
    headers: dict[str, str],
    body: bytes | None,
    source: Target,
    target: Target,
) -> tuple[str, dict[str, str], bytes | None]:
    """The next hop's request, as browsers (and httpx) do it."""
    if (status == 303 and method != "HEAD") or (status in (301, 302) and method == "POST"):
        method, body = "GET", None
        headers = {k: v for k, v in headers.items() if k != "content-type"}
    if target.origin != source.origin:
        headers = {k: v for k, v in headers.items() if k in _KEPT_ACROSS_ORIGINS}
    return method, headers, body


def _describe(exc: httpx.TransportError) -> str:
    """The error's type and its root cause's text (httpx and httpcore wrap the OSError)."""
    root: BaseException = exc
    for _ in range(8):  # a bounded walk: chains are short, and never trust them to end
        inner = root.__cause__ or root.__context__
        if inner is None:
            break
        root = inner
    detail = str(root).strip() or str(exc).strip()
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__


def _error(message: str) -> ToolResult:
    return ToolResult(content=message, is_error=True)
