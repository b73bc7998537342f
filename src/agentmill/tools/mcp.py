"""MCP servers as tools, on the official ``mcp`` SDK (stdio and streamable HTTP).

A workflow declares servers under ``mcp_servers:``; an agent names ``mcp:<server>`` (every tool
the server lists) or ``mcp:<server>/<tool>``. For each agent step :func:`mcp_tools` opens one
session per server (the stdio program starts then), lists its tools, and closes them all when the
step ends, however it ends. The model sees a tool as ``<server>__<tool>``, so two servers' tools
cannot collide.

Starting a program or reaching a URL from a workflow is the operator's decision, so nothing is
allowed until ``agentmill.yaml`` says so::

    tools:
      mcp:
        commands: [npx, uvx]                  # programs a stdio server may be ("*": any)
        urls: ["https://mcp.example.com/"]    # URL prefixes a server may be at ("*": any)
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO
from urllib.parse import urlsplit

from agentmill.domain.spec import McpServerSpec
from agentmill.errors import ConfigError
from agentmill.tools.base import Tool, ToolContext, ToolResult, ToolUnavailable

# The SDK costs ~0.4 s to import: it is loaded when a step opens a session, not when the engine
# (or the CLI) imports the policy and the ref helpers.
if TYPE_CHECKING:
    import mcp_types
    from mcp import Client

MCP_PREFIX = "mcp:"
_LIST_PAGES = 100  # a server whose tool list never ends cannot hang the step
_STDERR_TAIL = 800  # characters of a failed server's stderr quoted in the error


def is_mcp_ref(name: str) -> bool:
    """Whether an agent's tool name refers to an MCP server (``mcp:<server>[/<tool>]``)."""
    return name.startswith(MCP_PREFIX)


@dataclass(frozen=True, kw_only=True)
class McpPolicy:
    """Which servers the operator lets workflows use (``tools.mcp`` in ``agentmill.yaml``)."""

    commands: frozenset[str] = frozenset()
    urls: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, value: Any) -> McpPolicy:
        """The policy from settings; ConfigError says what is wrong with them."""
        if value is None:
            return cls()
        if not isinstance(value, Mapping) or set(value) - {"commands", "urls"}:
            raise ConfigError("tools.mcp takes 'commands' and 'urls' (lists of strings)")
        commands = _strings(value.get("commands"), "commands")
        urls = _strings(value.get("urls"), "urls")
        for url in urls:
            if url != "*" and not re.match(r"^https?://[^/\s]+", url):
                raise ConfigError(f"tools.mcp.urls: {url!r} is not an http(s) URL prefix or '*'")
        return cls(commands=frozenset(commands), urls=tuple(urls))

    def check(self, name: str, spec: McpServerSpec) -> None:
        """Raise ToolUnavailable unless the operator allows this server."""
        if spec.command is not None:
            program = spec.command[0]
            if "*" not in self.commands and program not in self.commands:
                raise ToolUnavailable(
                    f"MCP server {name!r}: starting {program!r} is not allowed here "
                    "(the operator lists allowed programs under tools.mcp.commands)"
                )
        elif spec.url is not None and not any(_url_under(spec.url, p) for p in self.urls):
            raise ToolUnavailable(
                f"MCP server {name!r}: connecting to {spec.url!r} is not allowed here "
                "(the operator lists allowed URL prefixes under tools.mcp.urls)"
            )


def _strings(value: Any, key: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"tools.mcp.{key} must be a list of strings")
    return value


def _url_under(url: str, prefix: str) -> bool:
    """Same scheme, host and port as ``prefix``, and a path under its path."""
    if prefix == "*":
        return True
    have, allowed = urlsplit(url), urlsplit(prefix)
    try:
        same_origin = (have.scheme, have.hostname, have.port) == (
            allowed.scheme,
            allowed.hostname,
            allowed.port,
        )
    except ValueError:  # a port that is not a number
        return False
    path = allowed.path or "/"
    return same_origin and (have.path or "/").startswith(path) and not have.username


class McpTool:
    """One tool of an open MCP session; calls go to the server, results come back as data."""

    def __init__(
        self, *, server: str, remote: mcp_types.Tool, client: Client, call_timeout: float
    ) -> None:
        self.server = server
        self.remote_name = remote.name
        self.name = exposed_name(server, remote.name)
        self.description = remote.description or remote.title or ""
        self.parameters: Mapping[str, Any] = remote.input_schema
        self._client = client
        self._timeout = call_timeout

    async def run(self, arguments: Mapping[str, Any], context: ToolContext) -> ToolResult:
        try:
            result = await self._client.call_tool(
                self.remote_name, dict(arguments), read_timeout_seconds=self._timeout
            )
        except Exception as exc:  # the server failed or went away: the model hears about it
            return ToolResult(
                content=f"MCP server {self.server!r} failed on {self.remote_name!r}: "
                f"{_describe(exc)}",
                is_error=True,
            )
        return as_tool_result(result)


def exposed_name(server: str, tool: str) -> str:
    """The name the model sees: ``<server>__<tool>``, in the characters every provider takes."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", f"{server}__{tool}")[:64]


def as_tool_result(result: mcp_types.CallToolResult) -> ToolResult:
    """Structured content when the server gave it (and succeeded), else the content as text."""
    if result.structured_content is not None and not result.is_error:
        return ToolResult(content=result.structured_content)
    text = "\n".join(_part_text(part) for part in result.content)
    return ToolResult(content=text, is_error=result.is_error)


def _part_text(part: mcp_types.ContentBlock) -> str:
    import mcp_types

    if isinstance(part, mcp_types.TextContent):
        return part.text
    if isinstance(part, mcp_types.ImageContent | mcp_types.AudioContent):
        return f"[{part.type}: {part.mime_type}, {len(part.data)} base64 characters]"
    if isinstance(part, mcp_types.ResourceLink):
        return f"[resource: {part.uri}]"
    resource = part.resource
    if isinstance(resource, mcp_types.TextResourceContents):
        return resource.text
    return f"[resource: {resource.uri}, {resource.mime_type or 'binary'}]"


def _refs(names: Iterable[str]) -> dict[str, set[str] | None]:
    """Server -> the tools wanted from it (None: all), in the order the agent names them."""
    wanted: dict[str, set[str] | None] = {}
    for ref in names:
        server, _, tool = ref.removeprefix(MCP_PREFIX).partition("/")
        if not tool:
            wanted[server] = None
        elif server not in wanted:
            wanted[server] = {tool}
        elif (chosen := wanted[server]) is not None:
            chosen.add(tool)
    return wanted


@asynccontextmanager
async def mcp_tools(
    refs: Sequence[str],
    servers: Mapping[str, McpServerSpec],
    settings: Mapping[str, Any] | None = None,
) -> AsyncIterator[list[Tool]]:
    """Open a session to each server ``refs`` name and yield their tools; close on exit.

    Raises ToolUnavailable, naming the server, when one is not allowed, does not start or
    answer in time, or lacks a tool named in ``refs``.
    """
    policy = McpPolicy.from_settings(settings)
    async with AsyncExitStack() as stack:
        tools: list[Tool] = []
        for server, wanted in _refs(refs).items():
            spec = servers.get(server)
            if spec is None:
                raise ToolUnavailable(f"MCP server {server!r} is not declared in mcp_servers")
            policy.check(server, spec)
            client = await stack.enter_async_context(_session(server, spec))
            listed = await _list_tools(server, client)
            if wanted is not None:
                missing = sorted(wanted - {t.name for t in listed})
                if missing:
                    have = ", ".join(sorted(t.name for t in listed)) or "none"
                    raise ToolUnavailable(
                        f"MCP server {server!r} has no tool {missing[0]!r} (it has: {have})"
                    )
            tools.extend(
                McpTool(server=server, remote=t, client=client, call_timeout=spec.call_timeout)
                for t in listed
                if wanted is None or t.name in wanted
            )
        yield tools


async def _list_tools(server: str, client: Client) -> list[mcp_types.Tool]:
    tools: list[mcp_types.Tool] = []
    cursor: str | None = None
    try:
        for _ in range(_LIST_PAGES):
            page = await client.list_tools(cursor=cursor)
            tools.extend(page.tools)
            cursor = page.next_cursor
            if cursor is None:
                break
    except Exception as exc:
        raise ToolUnavailable(
            f"MCP server {server!r} did not list its tools: {_describe(exc)}"
        ) from None
    return tools


@asynccontextmanager
async def _session(name: str, spec: McpServerSpec) -> AsyncIterator[Client]:
    """One connected, initialized client. The SDK's task groups wrap whatever the step raises
    while the session is open in ExceptionGroups; they are unwrapped here so the engine sees
    the step's own exception (StepFailed, cancellation) as if no session were involved."""
    import mcp_types
    from mcp import Client

    with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as errlog:
        async with AsyncExitStack() as stack:
            client = Client(
                await _transport(stack, spec, errlog),
                # The handshake and listing must answer within connect_timeout; each call has
                # its own (call_timeout).
                read_timeout_seconds=spec.connect_timeout,
                client_info=mcp_types.Implementation(name="agentmill", version="0.1"),
                cache=None,  # a session lives for one step; nothing to reuse
            )
            try:
                await client.__aenter__()
            except Exception as exc:
                raise ToolUnavailable(
                    f"MCP server {name!r} did not start: {_describe(exc)}{_tail(errlog)}"
                ) from None
            try:
                yield client
            except BaseException as exc:
                try:
                    await client.__aexit__(type(exc), exc, exc.__traceback__)
                except BaseExceptionGroup as group:
                    raise _single(group, exc) from None
                raise
            await client.__aexit__(None, None, None)


async def _transport(stack: AsyncExitStack, spec: McpServerSpec, errlog: TextIO) -> Any:
    if spec.command is not None:
        from mcp.client.stdio import StdioServerParameters, stdio_client

        program, *args = spec.command
        params = StdioServerParameters(command=program, args=args, env=dict(spec.env) or None)
        return stdio_client(params, errlog=errlog)
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    assert spec.url is not None
    http = await stack.enter_async_context(
        httpx2.AsyncClient(
            headers=spec.headers,
            # Reads wait for the slowest call; the SDK enforces each request's own timeout.
            timeout=httpx2.Timeout(spec.connect_timeout, read=spec.call_timeout + 5),
        )
    )
    return streamable_http_client(spec.url, http_client=http)


def _single(group: BaseExceptionGroup[BaseException], original: BaseException) -> BaseException:
    """The step's own exception out of the SDK's group, or the group when something else failed."""
    leaves = list(_leaves(group))
    if all(leaf is original for leaf in leaves):
        return original
    return group


def _leaves(error: BaseException) -> Iterable[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            yield from _leaves(inner)
    else:
        yield error


def _describe(error: BaseException) -> str:
    """A one-line account of what went wrong, without the SDK's exception groups."""
    parts = []
    for leaf in _leaves(error):
        text = str(leaf) or type(leaf).__name__
        if isinstance(leaf, OSError) and leaf.filename:
            text = f"{leaf.strerror}: {leaf.filename!r}"
        parts.append(text)
    return "; ".join(dict.fromkeys(parts)) or type(error).__name__


def _tail(errlog: TextIO) -> str:
    errlog.seek(0)
    text = errlog.read().strip()
    if not text:
        return ""
    return f" (its stderr ends: {text[-_STDERR_TAIL:]!r})"
