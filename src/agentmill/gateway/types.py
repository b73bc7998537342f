"""The gateway's normalized call format: requests, responses and usage, the same for every provider."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal, Protocol

Role = Literal["system", "user", "assistant", "tool"]


@dataclass(frozen=True, kw_only=True)
class Usage:
    """Tokens and money; usages add up (``usage += call.usage``) from call to step to run."""

    input_tokens: int = 0
    output_tokens: int = 0
    cost: Decimal = Decimal(0)

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cost=self.cost + other.cost,
        )

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True, kw_only=True)
class ToolCall:
    id: str
    name: str
    arguments: Mapping[str, Any]


@dataclass(frozen=True, kw_only=True)
class Message:
    role: Role
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None


@dataclass(frozen=True, kw_only=True)
class CallContext:
    """Where a call comes from; providers may use it (the scripted one does), gateways log it."""

    run_id: str | None = None
    step_key: str | None = None
    attempt: int = 1
    turn: int = 0


@dataclass(frozen=True, kw_only=True)
class ChatRequest:
    model: str  # provider/model
    messages: tuple[Message, ...]
    temperature: float | None = None
    max_tokens: int | None = None
    response_schema: Mapping[str, Any] | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    context: CallContext = field(default_factory=CallContext)

    @property
    def provider(self) -> str:
        return self.model.split("/", 1)[0]

    @property
    def model_name(self) -> str:
        return self.model.split("/", 1)[1]


@dataclass(frozen=True, kw_only=True)
class ChatResponse:
    content: str
    model: str
    usage: Usage
    tool_calls: tuple[ToolCall, ...] = ()
    finish_reason: str = "stop"
    latency_ms: float = 0.0


class Provider(Protocol):
    """A model provider. Raise ``RetryableError`` for transient failures, ``StepFailed`` otherwise."""

    name: str

    async def chat(self, request: ChatRequest) -> ChatResponse: ...
