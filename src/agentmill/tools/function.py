"""Custom tools: a Python function registered by import path, its schema from its type hints.

``tools: [mypackage.tools:lookup_order]`` in a workflow makes ``lookup_order`` a tool. Its
parameters (with their types, defaults and ``Annotated[..., Field(description=...)]``) become
the JSON Schema the model sees; its docstring's first paragraph the description. It may be
``async``; a plain function runs in a thread so it cannot stall the worker. Its return value,
if JSON-serializable, is the result the model gets; an exception becomes a tool error.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from agentmill.errors import ConfigError
from agentmill.tools.base import ToolContext, ToolResult


class FunctionTool:
    def __init__(self, fn: Callable[..., Any], name: str | None = None) -> None:
        self.fn = fn
        self.name = name or fn.__name__
        doc = inspect.getdoc(fn) or ""
        self.description = doc.split("\n\n", 1)[0].replace("\n", " ")
        self._model = _arguments_model(fn)
        schema = self._model.model_json_schema()
        schema.pop("title", None)
        self.parameters: Mapping[str, Any] = schema

    async def run(self, arguments: Mapping[str, Any], context: ToolContext) -> ToolResult:
        try:
            parsed = self._model.model_validate(dict(arguments))
        except ValidationError as exc:
            return ToolResult(content=f"invalid arguments: {exc}", is_error=True)
        kwargs = {name: getattr(parsed, name) for name in type(parsed).model_fields}
        if inspect.iscoroutinefunction(self.fn):
            value = await self.fn(**kwargs)
        else:
            value = await asyncio.to_thread(self.fn, **kwargs)
        return ToolResult(content=value)


def _arguments_model(fn: Callable[..., Any]) -> type[BaseModel]:
    fields: dict[str, Any] = {}
    hints = inspect.get_annotations(fn, eval_str=True)
    for name, parameter in inspect.signature(fn).parameters.items():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            raise ConfigError(f"tool {fn.__name__!r}: *args and **kwargs cannot be described")
        annotation = hints.get(name, Any)
        default = ... if parameter.default is parameter.empty else parameter.default
        fields[name] = (annotation, default)
    return create_model(f"{fn.__name__}_arguments", __config__=ConfigDict(extra="forbid"), **fields)


def load_function_tool(path: str) -> FunctionTool:
    """``package.module:function`` as a tool; ConfigError says what is wrong with the path."""
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise ConfigError(f"custom tool {path!r}: write it as package.module:function")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"custom tool {path!r}: cannot import {module_name!r}: {exc}") from None
    fn = getattr(module, attribute, None)
    if not callable(fn):
        raise ConfigError(f"custom tool {path!r}: {module_name} has no function {attribute!r}")
    return FunctionTool(fn, name=attribute)
