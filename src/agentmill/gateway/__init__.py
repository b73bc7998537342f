"""The LLM gateway: one call interface over every provider.

:class:`Gateway` is the only entry point: the engine calls it in-process and the OpenAI-compatible
``/v1`` endpoints call it for HTTP clients. It routes ``provider/model`` names to providers and,
around every call, enforces rate limits and budgets, retries and fails over, keeps each
provider's circuit breaker, and prices and records usage.
"""

from __future__ import annotations

from agentmill.gateway.gateway import Gateway
from agentmill.gateway.types import (
    CallContext,
    ChatDelta,
    ChatRequest,
    ChatResponse,
    EmbedRequest,
    EmbedResponse,
    Message,
    Provider,
    ToolCall,
    ToolCallDelta,
    ToolSpec,
    Usage,
)

__all__ = [
    "CallContext",
    "ChatDelta",
    "ChatRequest",
    "ChatResponse",
    "EmbedRequest",
    "EmbedResponse",
    "Gateway",
    "Message",
    "Provider",
    "ToolCall",
    "ToolCallDelta",
    "ToolSpec",
    "Usage",
]
