"""What a model call used and cost, and who made it for what: the gateway produces these,
accounting (the store) persists them, budgets and limits are keyed on them."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal


@dataclass(frozen=True, kw_only=True)
class Usage:
    """Tokens and money of one call or many; usages add up (``usage += call.usage``).

    ``input_tokens`` counts every input token, including those read from or written to a prompt
    cache (``cached_tokens``, ``cache_write_tokens`` say how many of them); ``output_tokens``
    counts every output token, including ``reasoning_tokens``. ``cost`` is what the provider
    charges, ``price`` what the workspace is charged (cost plus its markup), both in USD.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    cost: Decimal = Decimal(0)
    price: Decimal = Decimal(0)

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cached_tokens=self.cached_tokens + other.cached_tokens,
            cache_write_tokens=self.cache_write_tokens + other.cache_write_tokens,
            reasoning_tokens=self.reasoning_tokens + other.reasoning_tokens,
            cost=self.cost + other.cost,
            price=self.price + other.price,
        )

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True, kw_only=True)
class CallContext:
    """Who makes a call and for what; budgets, limits and accounting are keyed on it."""

    workspace_id: str | None = None
    user_id: str | None = None
    api_key_id: str | None = None
    run_id: str | None = None
    step_id: str | None = None
    step_key: str | None = None
    agent: str | None = None
    attempt: int = 1
    turn: int = 0


@dataclass(frozen=True, kw_only=True)
class CallReport:
    """One request to a provider, as accounting records it: every attempt, failed or not."""

    context: CallContext
    model: str  # provider/model
    usage: Usage
    latency_ms: float
    error: str | None = None
    status: int | None = None  # the provider's HTTP status when it answered with an error

    @property
    def provider(self) -> str:
        return self.model.split("/", 1)[0]

    @property
    def outcome(self) -> str:
        return "error" if self.error is not None else "ok"
