"""MCP servers as tools: a real server on the official SDK, over stdio (started by the client)
and streamable HTTP (a process on loopback); sessions open and close with the caller."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentmill.domain.spec import McpServerSpec
from agentmill.errors import ConfigError, StepFailed
from agentmill.tools.base import Tool, ToolContext, ToolUnavailable
from agentmill.tools.mcp import McpPolicy, mcp_tools
from agentmill.tools.registry import load_tool_settings
from tests.tools._mcp_helpers import ALLOW_PYTHON, STDIO_COMMAND, http_server, is_running
from tests.waiting import until

CONTEXT = ToolContext()


def stdio(**options: Any) -> McpServerSpec:
    return McpServerSpec(command=STDIO_COMMAND, **options)


@pytest.fixture(scope="module")
def http_url() -> Iterator[str]:
    with http_server() as url:
        yield url


def by_name(tools: list[Tool]) -> dict[str, Tool]:
    return {tool.name: tool for tool in tools}


async def test_stdio_tools_are_listed_and_called_in_one_session() -> None:
    servers = {"calc": stdio(env={"GREETING": "hello"})}
    async with mcp_tools(["mcp:calc"], servers, ALLOW_PYTHON) as listed:
        tools = by_name(listed)
        assert sorted(tools) == [
            "calc__add",
            "calc__divide",
            "calc__nap",
            "calc__shout",
            "calc__whoami",
        ]
        shout = tools["calc__shout"]
        assert shout.description == "Upper-case text."
        assert shout.parameters["properties"]["text"]["description"] == "What to shout"
        assert shout.parameters["required"] == ["text"]

        added = await tools["calc__add"].run({"a": 2, "b": 3}, CONTEXT)
        assert (added.content, added.is_error) == ({"result": 5}, False)
        shouted = await shout.run({"text": "hi"}, CONTEXT)
        assert shouted.content == {"result": "HI!"}
        first = await tools["calc__whoami"].run({}, CONTEXT)
        second = await tools["calc__whoami"].run({}, CONTEXT)
        assert first.content["greeting"] == "hello"  # the spec's env reached the program
        assert first.content["pid"] == second.content["pid"]  # one process for every call
        pid = int(first.content["pid"])
        assert is_running(pid)
    assert not is_running(pid)  # closing the session stopped the server


async def test_a_tool_error_is_an_error_result_with_the_servers_message() -> None:
    async with mcp_tools(["mcp:calc/divide"], {"calc": stdio()}, ALLOW_PYTHON) as tools:
        (divide,) = tools
        result = await divide.run({"a": 1, "b": 0}, CONTEXT)
        assert result.is_error
        assert result.content == "Error executing tool divide: cannot divide by zero"
        ok = await divide.run({"a": 1, "b": 4}, CONTEXT)
        assert (ok.content, ok.is_error) == ({"result": 0.25}, False)


async def test_a_call_that_outlives_call_timeout_is_a_tool_error() -> None:
    servers = {"calc": stdio(call_timeout=0.5)}
    async with mcp_tools(["mcp:calc/nap", "mcp:calc/add"], servers, ALLOW_PYTHON) as tools:
        nap, add = sorted(tools, key=lambda t: t.name)[::-1]
        assert (nap.name, add.name) == ("calc__nap", "calc__add")
        result = await nap.run({"seconds": 30}, CONTEXT)
        assert result.is_error
        assert result.content == "MCP server 'calc' failed on 'nap': Request 'tools/call' timed out"
        after = await add.run({"a": 1, "b": 1}, CONTEXT)  # the session is still usable
        assert after.content == {"result": 2}


async def test_streamable_http_sends_the_headers_and_calls_tools(http_url: str) -> None:
    servers = {"remote": McpServerSpec(url=http_url, headers={"Authorization": "Bearer s3cret"})}
    refs = ["mcp:remote/whoami", "mcp:remote/add"]
    async with mcp_tools(refs, servers, {"urls": [http_url]}) as listed:
        tools = by_name(listed)
        assert sorted(tools) == ["remote__add", "remote__whoami"]
        who = await tools["remote__whoami"].run({}, CONTEXT)
        assert who.content["authorization"] == "Bearer s3cret"
        added = await tools["remote__add"].run({"a": 40, "b": 2}, CONTEXT)
        assert added.content == {"result": 42}


async def test_two_servers_at_once(http_url: str) -> None:
    servers = {"local": stdio(), "remote": McpServerSpec(url=http_url)}
    settings = {"commands": [sys.executable], "urls": ["*"]}
    async with mcp_tools(["mcp:local/add", "mcp:remote/shout"], servers, settings) as listed:
        tools = by_name(listed)
        assert sorted(tools) == ["local__add", "remote__shout"]
        assert (await tools["remote__shout"].run({"text": "a"}, CONTEXT)).content == {
            "result": "A!"
        }


async def test_a_program_that_does_not_exist_is_named_in_the_error() -> None:
    servers = {"ghost": McpServerSpec(command=["/nonexistent/mcp-server"])}
    with pytest.raises(
        ToolUnavailable,
        match=re.escape(
            "MCP server 'ghost' did not start: No such file or directory: '/nonexistent/mcp-server'"
        ),
    ):
        async with mcp_tools(["mcp:ghost"], servers, {"commands": ["*"]}):
            pass


async def test_a_server_that_exits_at_once_fails_with_its_stderr() -> None:
    crash = "import sys; print('missing API token', file=sys.stderr); sys.exit(3)"
    servers = {"broken": McpServerSpec(command=[sys.executable, "-c", crash])}
    with pytest.raises(ToolUnavailable) as caught:
        async with mcp_tools(["mcp:broken"], servers, ALLOW_PYTHON):
            pass
    message = str(caught.value)
    assert message.startswith("MCP server 'broken' did not start: Connection closed")
    assert message.endswith("(its stderr ends: 'missing API token')")


@pytest.mark.slow  # the SDK's server/discover probe waits 10 s before the initialize handshake
async def test_a_server_that_never_answers_times_out_on_connect() -> None:
    silent = "import sys; sys.stdin.read()"  # reads, never answers, exits at EOF
    servers = {"mute": McpServerSpec(command=[sys.executable, "-c", silent], connect_timeout=1)}
    with pytest.raises(
        ToolUnavailable,
        match=re.escape("MCP server 'mute' did not start: Request 'initialize' timed out"),
    ):
        async with mcp_tools(["mcp:mute"], servers, ALLOW_PYTHON):
            pass


async def test_an_unreachable_url_fails_naming_the_server() -> None:
    url = "http://127.0.0.1:9/mcp"  # discard port: nothing listens
    with pytest.raises(ToolUnavailable, match=r"^MCP server 'gone' did not start: "):
        async with mcp_tools(["mcp:gone"], {"gone": McpServerSpec(url=url)}, {"urls": ["*"]}):
            pass


async def test_a_tool_the_server_does_not_have_is_refused_with_the_ones_it_has() -> None:
    with pytest.raises(
        ToolUnavailable,
        match=re.escape(
            "MCP server 'calc' has no tool 'sqrt' (it has: add, divide, nap, shout, whoami)"
        ),
    ):
        async with mcp_tools(["mcp:calc/sqrt"], {"calc": stdio()}, ALLOW_PYTHON):
            pass


async def test_the_callers_exception_comes_out_unwrapped_and_the_server_stops() -> None:
    pids: list[int] = []

    async def give_up() -> None:
        async with mcp_tools(["mcp:calc/whoami"], {"calc": stdio()}, ALLOW_PYTHON) as tools:
            pids.append(int((await tools[0].run({}, CONTEXT)).content["pid"]))
            raise StepFailed("the model gave up")

    with pytest.raises(StepFailed) as caught:
        await give_up()
    assert type(caught.value) is StepFailed  # not an ExceptionGroup from the SDK's task groups
    assert str(caught.value) == "the model gave up"
    assert not is_running(pids[0])


@pytest.mark.parametrize(
    ("settings", "spec", "refused"),
    [
        (None, stdio(), f"starting {sys.executable!r} is not allowed here"),
        ({"commands": ["npx"]}, stdio(), "tools.mcp.commands"),
        ({"urls": ["http://127.0.0.1:8000/"]}, McpServerSpec(url="http://127.0.0.1:8001/mcp"), ""),
        (
            {"urls": ["https://mcp.example.com/"]},
            McpServerSpec(url="https://mcp.example.com.evil/"),
            "",
        ),
        (
            {"urls": ["https://a.example/team/"]},
            McpServerSpec(url="https://a.example/other/mcp"),
            "",
        ),
        ({"commands": ["*"]}, McpServerSpec(url="https://a.example/mcp"), "tools.mcp.urls"),
    ],
)
async def test_servers_the_operator_has_not_allowed_are_refused_before_starting(
    settings: dict[str, Any] | None, spec: McpServerSpec, refused: str
) -> None:
    with pytest.raises(ToolUnavailable, match=r"^MCP server 'x': .* not allowed here") as caught:
        async with mcp_tools(["mcp:x"], {"x": spec}, settings):
            pass
    assert refused in str(caught.value)


def test_url_prefixes_allow_their_origin_and_path() -> None:
    policy = McpPolicy.from_settings({"urls": ["https://mcp.example.com/team/"]})
    policy.check("ok", McpServerSpec(url="https://mcp.example.com/team/mcp"))
    with pytest.raises(ToolUnavailable):
        policy.check("other-port", McpServerSpec(url="https://mcp.example.com:8443/team/mcp"))
    with pytest.raises(ToolUnavailable):
        policy.check("userinfo", McpServerSpec(url="https://x@mcp.example.com/team/mcp"))


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ({"commands": "npx"}, "tools.mcp.commands must be a list of strings"),
        ({"urls": ["ftp://x"]}, "tools.mcp.urls: 'ftp://x' is not an http(s) URL prefix or '*'"),
        ({"programs": []}, "tools.mcp takes 'commands' and 'urls'"),
    ],
)
def test_bad_operator_settings_fail_at_start(tmp_path: Any, value: Any, problem: str) -> None:
    import yaml

    config = tmp_path / "agentmill.yaml"
    config.write_text(yaml.safe_dump({"tools": {"mcp": value}}))
    with pytest.raises(ConfigError, match=re.escape(problem)):
        load_tool_settings(config)


async def test_a_cancelled_step_stops_the_server(tmp_path: Path) -> None:
    """The engine enforces a step's timeout by cancelling it, mid-call here."""
    import asyncio

    pids: list[int] = []
    started = asyncio.Event()
    napping = tmp_path / "napping"

    async def step() -> None:
        async with mcp_tools(["mcp:calc"], {"calc": stdio()}, ALLOW_PYTHON) as listed:
            tools = by_name(listed)
            pids.append(int((await tools["calc__whoami"].run({}, CONTEXT)).content["pid"]))
            started.set()
            await tools["calc__nap"].run({"seconds": 60, "marker": str(napping)}, CONTEXT)

    task = asyncio.create_task(step())
    await started.wait()
    await until(napping.exists, message="the server never began its nap")  # mid-call
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not is_running(pids[0])
