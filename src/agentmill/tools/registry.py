"""Which tools exist: built-in ones by name, custom ones by import path, others registered;
and the operator's settings for each (from ``agentmill.yaml``'s ``tools:`` section)::

    tools:
      http_request:
        egress: {hosts: [api.github.com, "*.wikipedia.org"], ports: [443]}
      mcp:                                  # MCP servers workflows may use (tools.mcp)
        commands: [npx, uvx]
        urls: ["https://mcp.example.com/"]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from agentmill.errors import ConfigError
from agentmill.tools.base import Tool
from agentmill.tools.function import load_function_tool
from agentmill.tools.http import EgressPolicy, HttpRequestTool
from agentmill.tools.mcp import McpPolicy

# Built-in tools, created on first use (a tool may need a probe, e.g. the sandbox).
BUILTINS: dict[str, Callable[[], Tool]] = {"http_request": HttpRequestTool}


class ToolRegistry:
    def __init__(
        self, tools: Iterable[Tool] = (), *, settings: Mapping[str, Mapping[str, Any]] | None = None
    ) -> None:
        self._tools: dict[str, Tool] = {}
        self.settings = dict(settings or {})
        for tool in tools:
            self.register(tool)

    def settings_for(self, tool: str) -> Mapping[str, Any]:
        return self.settings.get(tool, {})

    def register(self, tool: Tool) -> None:
        self._tools[tool.name] = tool

    def resolve(self, name: str) -> Tool:
        """The tool an agent names; ConfigError when there is none."""
        tool = self._tools.get(name)
        if tool is not None:
            return tool
        if name in BUILTINS:
            tool = self._tools[name] = BUILTINS[name]()
            return tool
        if ":" in name:
            tool = load_function_tool(name)
            self._tools[name] = tool
            return tool
        known = ", ".join(sorted({*self._tools, *BUILTINS})) or "none"
        raise ConfigError(f"unknown tool {name!r} (available: {known}; or package.module:function)")


def load_tool_settings(path: Path | None) -> dict[str, Mapping[str, Any]]:
    """The ``tools:`` section of ``path`` (default ``agentmill.yaml`` here, if any), checked."""
    if path is None:
        path = Path("agentmill.yaml")
        if not path.exists():
            return {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    section = data.get("tools") or {} if isinstance(data, Mapping) else {}
    if not isinstance(section, Mapping) or not all(
        isinstance(v, Mapping) for v in section.values()
    ):
        raise ConfigError(f"{path}: tools must map each tool's name to its settings")
    if "http_request" in section:
        EgressPolicy.from_settings(section["http_request"].get("egress"))  # fail at start
    if "mcp" in section:
        McpPolicy.from_settings(section["mcp"])
    return {str(name): dict(value) for name, value in section.items()}
