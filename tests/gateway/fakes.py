"""In-process providers for testing the gateway's own logic (the wire fakes test providers)."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from decimal import Decimal

from agentmill.errors import RetryableError, StepFailed
from agentmill.gateway.budgets import Budget, BudgetPeriod, BudgetScope
from agentmill.gateway.config import GatewayConfig, ModelConfig, ModelPrice, ProviderConfig
from agentmill.gateway.types import (
    ChatDelta,
    ChatRequest,
    ChatResponse,
    EmbedRequest,
    EmbedResponse,
    Usage,
)


class Flaky:
    """Answers after ``delay`` seconds with ``output_tokens`` of output, unless told to fail:
    ``failures`` holds exceptions to raise, one per call, before it starts answering."""

    def __init__(self, name: str, *, output_tokens: int = 100, delay: float = 0.0) -> None:
        self.name = name
        self.output_tokens = output_tokens
        self.delay = delay
        self.failures: deque[Exception] = deque()
        self.calls = 0

    def fail(self, exc: Exception, times: int = 1) -> None:
        self.failures.extend(exc for _ in range(times))

    async def chat(self, request: ChatRequest) -> ChatResponse:
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.failures:
            raise self.failures.popleft()
        return ChatResponse(
            content=f"{self.name} answers",
            model=request.model,
            usage=Usage(input_tokens=10, output_tokens=self.output_tokens),
        )

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatDelta]:
        response = await self.chat(request)
        for word in response.content.split(" "):
            yield ChatDelta(text=word + " ")
        yield ChatDelta(finish_reason="stop", usage=response.usage)

    async def embed(self, request: EmbedRequest) -> EmbedResponse:
        raise StepFailed(f"{self.name} has no embeddings")

    async def aclose(self) -> None:
        return None


def server_error(name: str = "primary", retry_after: float | None = None) -> RetryableError:
    return RetryableError(f"{name}: 503 Service Unavailable", retry_after=retry_after, status=503)


def bad_request(name: str = "primary") -> StepFailed:
    return StepFailed(f"{name}: 400 Bad Request: messages is empty", status=400)


# One million output tokens cost 10 USD: a 100-token answer costs 0.001 USD.
PRICE = ModelPrice(input=Decimal(0), output=Decimal(10))


def priced_config(*names: str) -> GatewayConfig:
    """A configuration pricing ``name/m`` for each name (the fakes are registered by name)."""
    return GatewayConfig(
        providers={},
        models={f"{n}/m": ModelConfig(name=f"{n}/m", price=PRICE) for n in names},
    )


def workspace_budget(limit: str, *, scope: BudgetScope = BudgetScope.WORKSPACE) -> Budget:
    return Budget(
        id=f"b_{scope}",
        workspace_id="ws_1",
        scope=scope,
        subject_id=None,
        period=BudgetPeriod.MONTHLY,
        limit=Decimal(limit),
    )


SCRIPTED = ProviderConfig(name="scripted", kind="scripted")


class Overrunning:
    """A provider that ignores ``max_tokens``: it answers ``extra`` output tokens more than
    asked, and reports ``input_tokens`` of input (as much as it likes)."""

    def __init__(self, name: str, *, extra: int, input_tokens: int = 1, delay: float = 0) -> None:
        self.name = name
        self.extra = extra
        self.input_tokens = input_tokens
        self.delay = delay
        self.calls = 0

    async def chat(self, request: ChatRequest) -> ChatResponse:
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        return ChatResponse(
            content="more than asked",
            model=request.model,
            usage=Usage(
                input_tokens=self.input_tokens,
                output_tokens=(request.max_tokens or 0) + self.extra,
            ),
        )

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatDelta]:
        response = await self.chat(request)
        yield ChatDelta(text=response.content)
        yield ChatDelta(finish_reason="length", usage=response.usage)

    async def embed(self, request: EmbedRequest) -> EmbedResponse:
        raise StepFailed(f"{self.name} has no embeddings")

    async def aclose(self) -> None:
        return None


# Input priced too (1 USD per million input tokens, 10 per million output): a reservation that
# left input out would be below what a call can cost.
PRICED_INPUT = ModelPrice(input=Decimal(1), output=Decimal(10))


def input_priced_config(*names: str) -> GatewayConfig:
    return GatewayConfig(
        providers={},
        models={f"{n}/m": ModelConfig(name=f"{n}/m", price=PRICED_INPUT) for n in names},
    )
