"""The offline ``scripted`` provider: deterministic answers without a network.

Options (an agent's or step's ``options``):

``latency``        seconds to wait before answering (a float; default 0)
``stream_delay``   seconds between a stream's pieces (a float; default 0), to watch one arrive
``reply``          the answer, a template over ``prompt``, ``system``, ``attempt``, ``turn``
                   and ``results`` (the texts of the tool results since the model's last turn);
                   a mapping or list is sent as JSON
``replies``        a list of answers, one per model turn of the step (the last one repeats)
``fail_attempts``  the first N attempts of a step fail with ``fail_with``
``fail_with``      server_error (503) | rate_limit (429) | timeout | connection (retryable);
                   bad_request (400) | auth (401) (not retryable)
``price``          ``{input: USD, output: USD}`` per million tokens, to exercise cost accounting

A reply that is a mapping with a ``tool_calls`` key asks for tools instead of answering:
``{tool_calls: [{name: search, arguments: {q: bees}}], content: "optional text"}``; strings in
``arguments`` are templates over the same names as ``reply`` (``{q: "{{ results[0] }}"}``).

Without ``reply`` it echoes the prompt, saying plainly that no model was called; with a response
schema it answers a JSON value that satisfies the schema. Streams send the same answer in pieces
of a few words; embeddings are deterministic unit vectors derived from each input's words, so
texts sharing words are near each other.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
from collections.abc import AsyncIterator, Mapping
from decimal import Decimal
from typing import Any

from agentmill.domain.templates import TemplateError, compile_template, render_value
from agentmill.errors import RetryableError, StepFailed
from agentmill.gateway.config import ProviderConfig
from agentmill.gateway.types import (
    ChatDelta,
    ChatRequest,
    ChatResponse,
    EmbedRequest,
    EmbedResponse,
    ToolCall,
    ToolCallDelta,
    Usage,
)

_RETRYABLE = {
    "server_error": "503 Service Unavailable (scripted failure)",
    "rate_limit": "429 Too Many Requests (scripted failure)",
    "timeout": "request timed out (scripted failure)",
    "connection": "connection reset by peer (scripted failure)",
}
_TERMINAL = {
    "bad_request": "400 Bad Request (scripted failure)",
    "auth": "401 Unauthorized (scripted failure)",
}
_MILLION = Decimal(1_000_000)


def estimate_tokens(text: str) -> int:
    """About four characters a token, never zero for non-empty text."""
    return (len(text) + 3) // 4


class ScriptedProvider:
    """Answers from its options; see the module docstring."""

    # Its failures are scripted per step attempt, not outages: no circuit breaker should open.
    has_outages = False

    def __init__(self, config: ProviderConfig | str = "scripted") -> None:
        self.name = config if isinstance(config, str) else config.name

    async def chat(self, request: ChatRequest) -> ChatResponse:
        options = request.options
        latency = float(options.get("latency", 0) or 0)
        if latency > 0:
            await asyncio.sleep(latency)
        self._maybe_fail(request, options)
        prompt = next((m.content for m in reversed(request.messages) if m.role == "user"), "")
        system = next((m.content for m in request.messages if m.role == "system"), "")
        content, calls = self._answer(request, options, prompt, system)
        usage = Usage(
            input_tokens=sum(estimate_tokens(m.content) for m in request.messages),
            output_tokens=estimate_tokens(content)
            + sum(estimate_tokens(c.arguments_json) for c in calls),
        )
        price = options.get("price")
        if isinstance(price, Mapping):
            cost = (
                Decimal(str(price.get("input", 0))) * usage.input_tokens
                + Decimal(str(price.get("output", 0))) * usage.output_tokens
            ) / _MILLION
            usage = Usage(
                input_tokens=usage.input_tokens, output_tokens=usage.output_tokens, cost=cost
            )
        return ChatResponse(
            content=content,
            model=request.model,
            usage=usage,
            tool_calls=calls,
            finish_reason="tool_calls" if calls else "stop",
        )

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatDelta]:
        response = await self.chat(request)
        delay = float(request.options.get("stream_delay", 0) or 0)
        words = response.content.split(" ")
        for i in range(0, len(words), 3):
            if delay > 0 and i:
                await asyncio.sleep(delay)
            piece = " ".join(words[i : i + 3])
            yield ChatDelta(text=piece if i == 0 else " " + piece)
        for index, call in enumerate(response.tool_calls):
            arguments = call.arguments_json
            half = len(arguments) // 2  # split, as real providers do, so clients must join
            yield ChatDelta(
                tool_calls=(
                    ToolCallDelta(
                        index=index, id=call.id, name=call.name, arguments=arguments[:half]
                    ),
                )
            )
            yield ChatDelta(tool_calls=(ToolCallDelta(index=index, arguments=arguments[half:]),))
        yield ChatDelta(finish_reason=response.finish_reason, usage=response.usage)

    async def embed(self, request: EmbedRequest) -> EmbedResponse:
        dimensions = request.dimensions or 64
        vectors = tuple(_word_vector(text, dimensions) for text in request.inputs)
        tokens = sum(estimate_tokens(text) for text in request.inputs)
        return EmbedResponse(vectors=vectors, model=request.model, usage=Usage(input_tokens=tokens))

    async def aclose(self) -> None:
        return None

    @staticmethod
    def _maybe_fail(request: ChatRequest, options: Mapping[str, Any]) -> None:
        failing = int(options.get("fail_attempts", 0) or 0)
        if request.context.attempt > failing:
            return
        kind = str(options.get("fail_with", "server_error"))
        if kind in _RETRYABLE:
            retry_after = 0.0 if kind == "rate_limit" else None
            raise RetryableError(_RETRYABLE[kind], retry_after=retry_after)
        if kind in _TERMINAL:
            raise StepFailed(_TERMINAL[kind])
        raise StepFailed(
            f"unknown scripted failure {kind!r} (use one of {sorted(_RETRYABLE | _TERMINAL)})"
        )

    def _answer(
        self, request: ChatRequest, options: Mapping[str, Any], prompt: str, system: str
    ) -> tuple[str, tuple[ToolCall, ...]]:
        reply: Any = None
        if "replies" in options and isinstance(options["replies"], list) and options["replies"]:
            replies = options["replies"]
            reply = replies[min(request.context.turn, len(replies) - 1)]
        elif "reply" in options:
            reply = options["reply"]
        context = {
            "prompt": prompt,
            "system": system,
            "attempt": request.context.attempt,
            "turn": request.context.turn,
            "results": _latest_tool_results(request),
        }
        if isinstance(reply, Mapping) and "tool_calls" in reply:
            return self._tool_calls(request, reply, context)
        return self._text(request, reply, context), ()

    def _tool_calls(
        self, request: ChatRequest, reply: Mapping[str, Any], context: Mapping[str, Any]
    ) -> tuple[str, tuple[ToolCall, ...]]:
        calls = reply["tool_calls"]
        if not isinstance(calls, list) or not all(
            isinstance(c, Mapping) and isinstance(c.get("name"), str) for c in calls
        ):
            raise StepFailed("scripted tool_calls must be a list of {name, arguments} mappings")
        turn = request.context.turn
        made = tuple(
            ToolCall(
                id=str(c.get("id") or f"call_{turn}_{i}"),
                name=c["name"],
                arguments=_render(dict(c.get("arguments") or {}), context),
            )
            for i, c in enumerate(calls)
        )
        return str(reply.get("content") or ""), made

    def _text(self, request: ChatRequest, reply: Any, context: Mapping[str, Any]) -> str:
        if reply is None:
            if request.response_schema is not None:
                return json.dumps(example_for_schema(request.response_schema))
            excerpt = " ".join(str(context["prompt"]).split())
            excerpt = excerpt if len(excerpt) <= 300 else excerpt[:297] + "..."
            return f"[offline: {request.model} is scripted, no model was called] {excerpt}"
        if isinstance(reply, (dict, list)):
            return json.dumps(reply)
        text = str(reply)
        try:
            rendered = compile_template(text).render(context) if "{" in text else text
        except TemplateError as exc:
            raise StepFailed(f"scripted reply template: {exc}") from None
        return rendered if isinstance(rendered, str) else json.dumps(rendered)


def _render(arguments: dict[str, Any], context: Mapping[str, Any]) -> dict[str, Any]:
    """Scripted tool-call arguments are templates too, so a script can pass a result on."""
    try:
        rendered: dict[str, Any] = render_value(arguments, context)
    except TemplateError as exc:
        raise StepFailed(f"scripted tool call template: {exc}") from None
    return rendered


def _latest_tool_results(request: ChatRequest) -> list[str]:
    """What the tools answered to the model's last turn (empty when it called none)."""
    results: list[str] = []
    for message in reversed(request.messages):
        if message.role != "tool":
            break
        results.append(message.content)
    return results[::-1]


def example_for_schema(schema: Mapping[str, Any], name: str = "item") -> Any:
    """A deterministic value that satisfies common JSON Schemas (used for offline demos)."""
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            return example_for_schema(schema[key][0], name)
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        props = schema.get("properties", {})
        return {key: example_for_schema(sub, key) for key, sub in props.items()}
    if kind == "array":
        low = int(schema.get("minItems", 0))
        high = int(schema.get("maxItems", max(low, 3)))
        count = min(max(low, 3), high)
        items = schema.get("items", {"type": "string"})
        singular = name[:-1] if name.endswith("s") else name
        if items.get("type", "string") == "string" and "enum" not in items:
            return [f"{singular} {i + 1}" for i in range(count)]
        return [example_for_schema(items, singular) for _ in range(count)]
    if kind in ("integer", "number"):
        value: float = 1
        if "minimum" in schema:
            value = schema["minimum"]
        if "exclusiveMinimum" in schema:
            value = schema["exclusiveMinimum"] + 1
        if "maximum" in schema:
            value = min(value, schema["maximum"])
        return int(value) if kind == "integer" else float(value)
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    text = f"{name} (scripted)".ljust(int(schema.get("minLength", 0)), ".")
    return text[: int(schema["maxLength"])] if "maxLength" in schema else text


def _word_vector(text: str, dimensions: int) -> tuple[float, ...]:
    """Each word adds a fixed pseudo-random direction; the sum is normalized to length 1."""
    vector = [0.0] * dimensions
    for word in text.lower().split():
        digest = hashlib.shake_256(word.strip(".,;:!?\"'()").encode()).digest(dimensions)
        for i, byte in enumerate(digest):
            vector[i] += (byte - 127.5) / 127.5
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return tuple(v / norm for v in vector)
