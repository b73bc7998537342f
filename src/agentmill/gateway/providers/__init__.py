"""Providers, one module per wire protocol, built from a :class:`ProviderConfig`.

A new provider is a module with a class taking the config, implementing
:class:`agentmill.gateway.types.Provider`, and one line in ``_CLASSES``. Modules are imported on
first use, so an SDK is loaded only when a provider of its kind is configured.
"""

from __future__ import annotations

import importlib
from typing import Any, cast

from agentmill.gateway.config import ProviderConfig
from agentmill.gateway.types import Provider

_CLASSES = {
    "openai": "agentmill.gateway.providers.openai:OpenAIProvider",
    "openai_compatible": "agentmill.gateway.providers.openai:OpenAIProvider",
    "anthropic": "agentmill.gateway.providers.anthropic:AnthropicProvider",
    "gemini": "agentmill.gateway.providers.gemini:GeminiProvider",
    "ollama": "agentmill.gateway.providers.ollama:OllamaProvider",
    "scripted": "agentmill.gateway.providers.scripted:ScriptedProvider",
}


def build_provider(config: ProviderConfig) -> Provider:
    """The provider a config describes (its SDK client is created, not yet connected)."""
    module_name, _, class_name = _CLASSES[config.kind].partition(":")
    cls: Any = getattr(importlib.import_module(module_name), class_name)
    return cast(Provider, cls(config))
