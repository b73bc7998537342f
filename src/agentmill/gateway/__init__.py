"""The LLM gateway: one call interface over every provider.

This first version routes ``provider/model`` names to registered providers and times each call.
Budgets, rate limits, breakers and failover build on :meth:`Gateway.chat` later.
"""

from __future__ import annotations

import time
from dataclasses import replace

from agentmill.errors import ConfigError, StepFailed
from agentmill.gateway.providers.scripted import ScriptedProvider
from agentmill.gateway.types import (
    CallContext,
    ChatRequest,
    ChatResponse,
    Message,
    Provider,
    ToolCall,
    Usage,
)

__all__ = [
    "CallContext",
    "ChatRequest",
    "ChatResponse",
    "Gateway",
    "Message",
    "Provider",
    "ToolCall",
    "Usage",
]


class Gateway:
    """Routes each call to its provider by the ``provider/`` prefix of the model name."""

    def __init__(self, providers: list[Provider] | None = None) -> None:
        self._providers: dict[str, Provider] = {}
        for provider in providers if providers is not None else [ScriptedProvider()]:
            self.register(provider)

    def register(self, provider: Provider) -> None:
        self._providers[provider.name] = provider

    def provider(self, name: str) -> Provider:
        try:
            return self._providers[name]
        except KeyError:
            known = ", ".join(sorted(self._providers)) or "none"
            raise ConfigError(f"unknown provider {name!r} (configured: {known})") from None

    async def chat(self, request: ChatRequest) -> ChatResponse:
        try:
            provider = self.provider(request.provider)
        except ConfigError as exc:
            raise StepFailed(str(exc)) from None
        started = time.perf_counter()
        response = await provider.chat(request)
        return replace(response, latency_ms=(time.perf_counter() - started) * 1000)
