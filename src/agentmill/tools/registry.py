"""Which tools exist: built-in ones by name, custom ones by import path, others registered."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from agentmill.errors import ConfigError
from agentmill.tools.base import Tool
from agentmill.tools.function import load_function_tool

# Built-in tools, created on first use (a tool may need a probe, e.g. the sandbox).
BUILTINS: dict[str, Callable[[], Tool]] = {}


class ToolRegistry:
    def __init__(self, tools: Iterable[Tool] = ()) -> None:
        self._tools: dict[str, Tool] = {}
        for tool in tools:
            self.register(tool)

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
