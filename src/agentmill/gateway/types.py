"""The gateway's normalized call format, the same for every provider.

Messages, tool definitions, tool calls and their results, streaming deltas, stop reasons and
usage look the same whichever provider answers, so an agent's tool loop (and the OpenAI-compatible
endpoints) work unchanged on all of them. Each provider module translates to and from its wire
format and nothing else does.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from agentmill.domain.usage import CallContext as CallContext
from agentmill.domain.usage import CallReport as CallReport
from agentmill.domain.usage import Usage as Usage

Role = Literal["system", "user", "assistant", "tool"]
# Why a model stopped, normalized: "stop" (it answered), "length" (max_tokens), "tool_calls"
# (it wants tools run), "content_filter" (the provider withheld the answer).
FinishReason = Literal["stop", "length", "tool_calls", "content_filter"]


@dataclass(frozen=True, kw_only=True)
class ToolSpec:
    """A tool the model may call: its name, what it does, and a JSON Schema for its arguments."""

    name: str
    description: str = ""
    parameters: Mapping[str, Any] = field(
        default_factory=lambda: {"type": "object", "properties": {}}
    )


@dataclass(frozen=True, kw_only=True)
class ToolCall:
    """A call the model asked for; ``arguments`` is the parsed JSON object."""

    id: str
    name: str
    arguments: Mapping[str, Any]

    @property
    def arguments_json(self) -> str:
        return json.dumps(self.arguments, separators=(",", ":"))


@dataclass(frozen=True, kw_only=True)
class Message:
    """One turn of a conversation.

    An assistant message may carry ``tool_calls``; each result goes back as a ``tool`` message
    with the call's ``tool_call_id`` and the tool's ``name`` (Gemini needs the name, not the id).
    """

    role: Role
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None


@dataclass(frozen=True, kw_only=True)
class ChatRequest:
    model: str  # provider/model
    messages: tuple[Message, ...]
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    tools: tuple[ToolSpec, ...] = ()
    # "auto" (default when tools are given), "none", "required", or the name of one tool.
    tool_choice: str | None = None
    response_schema: Mapping[str, Any] | None = None
    # Models tried in order when this one fails with a retryable error (provider/model names).
    fallbacks: tuple[str, ...] = ()
    # Tries per model before failing over; None: the gateway's default. Steps use 1, because
    # the engine retries them durably, with backoff, without holding a worker slot.
    tries_per_model: int | None = None
    # Provider-specific extras, passed through (and the scripted provider's script).
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
    model: str  # provider/model that answered (after failover, not necessarily the one asked)
    usage: Usage
    tool_calls: tuple[ToolCall, ...] = ()
    finish_reason: FinishReason = "stop"
    latency_ms: float = 0.0
    # Things the caller should know, e.g. a budget passed its soft limit with this call.
    notices: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class ToolCallDelta:
    """A piece of a streamed tool call. The first piece of call ``index`` carries its ``id`` and
    ``name``; ``arguments`` pieces concatenate to the call's JSON arguments."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(frozen=True, kw_only=True)
class ChatDelta:
    """One streamed piece of an answer. The last delta of a stream has ``finish_reason`` and,
    where the provider reports it, ``usage``. The gateway's delta with the priced usage also
    says which ``model`` answered (after failover) and carries the call's ``notices``."""

    text: str = ""
    tool_calls: tuple[ToolCallDelta, ...] = ()
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    model: str | None = None
    notices: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class EmbedRequest:
    model: str  # provider/model
    inputs: tuple[str, ...]
    dimensions: int | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    context: CallContext = field(default_factory=CallContext)

    @property
    def provider(self) -> str:
        return self.model.split("/", 1)[0]

    @property
    def model_name(self) -> str:
        return self.model.split("/", 1)[1]


@dataclass(frozen=True, kw_only=True)
class EmbedResponse:
    vectors: tuple[tuple[float, ...], ...]  # one per input, in order
    model: str
    usage: Usage
    latency_ms: float = 0.0


class Provider(Protocol):
    """A model provider, translating the normalized format to one wire protocol.

    Failures raise ``RetryableError(retry_after=..., status=...)`` when trying again may work
    (timeouts, lost connections, 408, 409, 429, 5xx; ``retry_after`` from a ``Retry-After``
    header) and ``StepFailed(status=...)`` when it cannot (400, 401, 403, 404, 422).
    Providers do not retry: the gateway does, and fails over. Usage carries tokens only; the
    gateway prices it. A provider may set ``has_outages = False`` when its failures say nothing
    of its health (the scripted one): its circuit breaker then never opens.
    """

    name: str  # the configured name: the "provider" in "provider/model"

    async def chat(self, request: ChatRequest) -> ChatResponse: ...

    def stream(self, request: ChatRequest) -> AsyncIterator[ChatDelta]: ...

    async def embed(self, request: EmbedRequest) -> EmbedResponse: ...

    async def aclose(self) -> None: ...


class StreamCollector:
    """Folds a stream of deltas into the response a non-streaming call would have given."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.text: list[str] = []
        self.calls: dict[int, dict[str, Any]] = {}
        self.finish_reason: FinishReason = "stop"
        self.usage = Usage()

    def add(self, delta: ChatDelta) -> None:
        if delta.text:
            self.text.append(delta.text)
        for piece in delta.tool_calls:
            call = self.calls.setdefault(piece.index, {"id": "", "name": "", "arguments": []})
            if piece.id:
                call["id"] = piece.id
            if piece.name:
                call["name"] = piece.name
            call["arguments"].append(piece.arguments)
        if delta.finish_reason is not None:
            self.finish_reason = delta.finish_reason
        if delta.usage is not None:
            self.usage = delta.usage

    def response(self, latency_ms: float = 0.0) -> ChatResponse:
        calls = tuple(
            ToolCall(
                id=call["id"],
                name=call["name"],
                arguments=parse_arguments("".join(call["arguments"]), call["name"]),
            )
            for _, call in sorted(self.calls.items())
        )
        return ChatResponse(
            content="".join(self.text),
            model=self.model,
            usage=self.usage,
            tool_calls=calls,
            finish_reason=self.finish_reason,
            latency_ms=latency_ms,
        )


def parse_arguments(text: str, tool: str) -> dict[str, Any]:
    """A tool call's JSON arguments as a dict; invalid JSON is kept under ``"_raw"`` so the
    tool loop can send the model a precise error rather than crash."""
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return {"_raw": text}
    return value if isinstance(value, dict) else {"_raw": text}
