"""The gateway: routes each call to its provider by the ``provider/`` prefix of the model name.

(Work in progress: rate limits, budgets, failover, breakers and pricing wrap these calls next;
the public methods keep their signatures.)
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import replace

from agentmill.errors import UnknownModel
from agentmill.gateway.providers.scripted import ScriptedProvider
from agentmill.gateway.types import (
    ChatDelta,
    ChatRequest,
    ChatResponse,
    EmbedRequest,
    EmbedResponse,
    Provider,
)


class Gateway:
    """One call interface over every configured provider."""

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
            raise UnknownModel(f"unknown provider {name!r} (configured: {known})") from None

    def _route(self, model: str) -> Provider:
        if "/" not in model:
            raise UnknownModel(f"model {model!r}: model names are provider/model")
        return self.provider(model.split("/", 1)[0])

    async def chat(self, request: ChatRequest) -> ChatResponse:
        """One completion; raises RetryableError, StepFailed, BudgetExceeded or UnknownModel."""
        provider = self._route(request.model)
        started = time.perf_counter()
        response = await provider.chat(request)
        return replace(response, latency_ms=(time.perf_counter() - started) * 1000)

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatDelta]:
        """A completion as deltas; the last one has the finish reason and the usage."""
        provider = self._route(request.model)
        async for delta in provider.stream(request):
            yield delta

    async def embed(self, request: EmbedRequest) -> EmbedResponse:
        provider = self._route(request.model)
        started = time.perf_counter()
        response = await provider.embed(request)
        return replace(response, latency_ms=(time.perf_counter() - started) * 1000)

    def model_names(self) -> list[str]:
        """Models named in configuration, for ``GET /v1/models``."""
        return []

    async def aclose(self) -> None:
        for provider in self._providers.values():
            await provider.aclose()
