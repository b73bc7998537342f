"""``mcp_servers:`` in a workflow and ``mcp:<server>[/<tool>]`` in agents' tools."""

from __future__ import annotations

import textwrap

import pytest

from agentmill.domain.validation import load_workflow_text
from agentmill.errors import SpecError


def problems(servers: str, tools: str = "[]") -> list[tuple[str, str]]:
    text = textwrap.dedent(
        f"""
        name: mcp
        mcp_servers: {servers}
        agents:
          helper: {{model: scripted/x, tools: {tools}}}
        steps:
          - {{id: a, agent: helper, prompt: go}}
        """
    )
    with pytest.raises(SpecError) as caught:
        load_workflow_text(text)
    return [(p.path, p.message) for p in caught.value.problems]


def test_a_valid_spec_keeps_both_kinds_of_server() -> None:
    spec = load_workflow_text(
        """
        name: mcp
        mcp_servers:
          files: {command: [npx, -y, server-files], env: {ROOT: /data}}
          github: {url: "https://mcp.example.com/mcp", headers: {Authorization: Bearer x}}
        agents:
          helper: {model: scripted/x, tools: ["mcp:files", "mcp:github/search", http_request]}
        steps:
          - {id: a, agent: helper, prompt: go}
        """
    )
    files, github = spec.mcp_servers["files"], spec.mcp_servers["github"]
    assert (files.command, files.env, files.url) == (
        ["npx", "-y", "server-files"],
        {"ROOT": "/data"},
        None,
    )
    assert (github.url, github.headers["Authorization"]) == (
        "https://mcp.example.com/mcp",
        "Bearer x",
    )
    assert (github.connect_timeout, github.call_timeout) == (30, 120)


@pytest.mark.parametrize(
    ("servers", "expected"),
    [
        ("{s: {}}", "give 'command' (a program to start, stdio) or 'url' (streamable HTTP)"),
        ("{s: {command: [x], url: 'http://h/mcp'}}", "give either 'command' or 'url', not both"),
        ("{s: {command: [x], headers: {A: b}}}", "'headers' apply to a 'url' server only"),
        ("{s: {url: 'http://h/mcp', env: {A: b}}}", "'env' applies to a 'command' server only"),
        ("{s: {command: []}}", "List should have at least 1 item after validation, not 0"),
        (
            "{s: {url: 'file:///etc/passwd'}}",
            "url 'file:///etc/passwd' must be an http:// or https:// address",
        ),
    ],
)
def test_a_server_needs_exactly_one_transport(servers: str, expected: str) -> None:
    ((path, message),) = problems(servers)
    assert path.startswith("mcp_servers.s")
    assert message == expected


def test_unknown_keys_and_bad_names_are_located() -> None:
    assert problems("{s: {comand: [x]}}") == [
        ("mcp_servers.s.comand", "unknown key 'comand' (did you mean 'command'?)"),
    ]
    ((path, message),) = problems("{'has space': {command: [x]}}")
    assert path == "mcp_servers.has space"
    assert message.startswith("MCP server name 'has space' must start with a letter")


def test_agents_may_only_name_declared_servers() -> None:
    found = problems("{files: {command: [x]}}", '["mcp:file", "mcp:files/", "mcp:files/a/b"]')
    assert found == [
        (
            "agents.helper.tools",
            "tool 'mcp:file': MCP server 'file' is not declared under 'mcp_servers' "
            "(did you mean 'files'?)",
        ),
        (
            "agents.helper.tools",
            "tool 'mcp:files/': write mcp:files for all the server's tools or "
            "mcp:files/<tool> for one",
        ),
        (
            "agents.helper.tools",
            "tool 'mcp:files/a/b': write mcp:files for all the server's tools or "
            "mcp:files/<tool> for one",
        ),
    ]
