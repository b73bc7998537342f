"""Which tools exist: built-in ones by name, custom ones by import path, others registered;
and the operator's settings for each (from ``agentmill.yaml``'s ``tools:`` section)::

    tools:
      http_request:                 # the default; a workspace may set its own (tools.http)
        egress: {hosts: [api.github.com, "*.wikipedia.org"], ports: [443]}
        allow_workspace_networks: false   # or true, or CIDR blocks workspaces may open
      notify:                       # webhooks of human steps (default: any public host)
        egress: {hosts: [hooks.example.com]}
      memory:                       # memory_store and memory_search share one section
        embedding_model: scripted/embed
      mcp:                                  # MCP servers workflows may use (tools.mcp)
        commands: [npx, uvx]
        urls: ["https://mcp.example.com/"]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from agentmill.config import get_settings, read_config_file
from agentmill.errors import ConfigError
from agentmill.tools.artifacts import ArtifactListTool, ArtifactReadTool, ArtifactWriteTool
from agentmill.tools.base import Tool
from agentmill.tools.function import load_function_tool
from agentmill.tools.http import WORKSPACE_EGRESS, EgressPolicy, HttpRequestTool, OperatorEgress
from agentmill.tools.mcp import McpPolicy
from agentmill.tools.memory import SETTINGS_SECTION, MemorySearchTool, MemoryStoreTool

if TYPE_CHECKING:  # the sandbox is imported when a workflow first uses `python`
    from agentmill.tools.sandbox import PythonTool

_PYTHON: PythonTool | None = None


def python_tool() -> PythonTool:
    """The process's one sandboxed ``python`` tool: its startup probe runs once."""
    global _PYTHON
    if _PYTHON is None:
        from agentmill.tools.sandbox import PythonTool

        settings = get_settings()
        _PYTHON = PythonTool(
            allow_unsandboxed=settings.sandbox == "rlimit-only",
            max_calls=settings.sandbox_max_calls,
            cgroup_parent=settings.sandbox_cgroup,
        )
    return _PYTHON


# Built-in tools, created on first use (a tool may need a probe, e.g. the sandbox).
BUILTINS: dict[str, Callable[[], Tool]] = {
    "python": python_tool,
    "http_request": HttpRequestTool,
    "memory_store": MemoryStoreTool,
    "memory_search": MemorySearchTool,
    "artifact_write": ArtifactWriteTool,
    "artifact_read": ArtifactReadTool,
    "artifact_list": ArtifactListTool,
}

# Tools that read a shared settings section rather than one of their own name.
_SECTIONS = {"memory_store": SETTINGS_SECTION, "memory_search": SETTINGS_SECTION}


class EgressSource(Protocol):
    """Where a workspace's own egress policy is kept (the database, behind a short cache)."""

    async def egress(self, workspace_id: str) -> Mapping[str, Any] | None: ...


class ToolRegistry:
    def __init__(
        self,
        tools: Iterable[Tool] = (),
        *,
        settings: Mapping[str, Mapping[str, Any]] | None = None,
        workspace_egress: EgressSource | None = None,
    ) -> None:
        self._tools: dict[str, Tool] = {}
        self.settings = dict(settings or {})
        # Set by the engine; without it every workspace gets the operator's default policy.
        self.workspace_egress = workspace_egress
        for tool in tools:
            self.register(tool)

    def settings_for(self, tool: str) -> Mapping[str, Any]:
        """The operator's settings for ``tool``."""
        return self.settings.get(_SECTIONS.get(tool, tool), {})

    async def settings_for_call(self, tool: str, workspace_id: str | None) -> Mapping[str, Any]:
        """What one call of ``tool`` from ``workspace_id`` reads: the operator's settings, and
        for ``http_request`` the workspace's own egress policy when it set one."""
        settings = self.settings_for(tool)
        if tool != HttpRequestTool.name or workspace_id is None or self.workspace_egress is None:
            return settings
        own = await self.workspace_egress.egress(workspace_id)
        return settings if own is None else {**settings, WORKSPACE_EGRESS: own}

    def set_default(self, section: str, key: str, value: Any) -> None:
        """Use ``value`` for ``key`` in ``section`` unless the operator's file sets it (how
        ``AGENTMILL_EMBEDDING_MODEL`` reaches the memory tools)."""
        if value is not None and key not in self.settings.get(section, {}):
            self.settings[section] = {**self.settings.get(section, {}), key: value}

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
    return parse_tool_settings(*read_config_file(path))


def parse_tool_settings(data: Mapping[str, Any], path: str) -> dict[str, Mapping[str, Any]]:
    """The ``tools:`` section of a configuration file's mapping, checked."""
    section = data.get("tools") or {}
    if not isinstance(section, Mapping) or not all(
        isinstance(v, Mapping) for v in section.values()
    ):
        raise ConfigError(f"{path}: tools must map each tool's name to its settings")
    if "http_request" in section:
        OperatorEgress.from_settings(section["http_request"])  # fail at start, not per call
    if "notify" in section:  # the webhooks of human steps
        EgressPolicy.from_settings(section["notify"].get("egress"))
    model = section.get(SETTINGS_SECTION, {}).get("embedding_model")
    if model is not None and (not isinstance(model, str) or "/" not in model):
        raise ConfigError(
            f"{path}: tools.memory.embedding_model must be a provider/model name, not {model!r}"
        )
    if "mcp" in section:
        McpPolicy.from_settings(section["mcp"])
    return {str(name): dict(value) for name, value in section.items()}
