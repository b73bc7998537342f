"""The Anthropic provider: Claude through the Messages API (``POST /v1/messages``).

It uses the official SDK with the SDK's retries off (the gateway retries and fails over).

The request's translation is in :mod:`._anthropic_request` (system prompt, tool use and
results, the default ``max_tokens``, structured outputs, options passed through).

Usage: Anthropic's ``input_tokens`` excludes prompt-cache reads and writes; here
``input_tokens`` includes them, with ``cached_tokens`` (reads) and ``cache_write_tokens``
(writes) saying how many. ``reasoning_tokens`` are the thinking tokens Anthropic reports.
Thinking blocks are not part of the answer's text.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator

import httpx2
from anthropic import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AsyncAnthropic,
)
from anthropic.types import (
    InputJSONDelta,
    MessageDeltaUsage,
    RawContentBlockDeltaEvent,
    RawContentBlockStartEvent,
    RawMessageDeltaEvent,
    RawMessageStartEvent,
    RawMessageStopEvent,
    RawMessageStreamEvent,
    TextBlock,
    TextDelta,
    ToolUseBlock,
)
from anthropic.types import Usage as AnthropicUsage

from agentmill.errors import RetryableError, StepError, StepFailed
from agentmill.gateway.config import ProviderConfig
from agentmill.gateway.providers._anthropic_request import (
    DEFAULT_MAX_TOKENS,
    PASSED_OPTIONS,
    messages_params,
)
from agentmill.gateway.providers._http import failure, is_retryable, retry_after
from agentmill.gateway.types import (
    ChatDelta,
    ChatRequest,
    ChatResponse,
    EmbedRequest,
    EmbedResponse,
    FinishReason,
    ToolCall,
    ToolCallDelta,
    Usage,
)

__all__ = ["DEFAULT_MAX_TOKENS", "PASSED_OPTIONS", "AnthropicProvider"]

_FINISH: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",  # a server tool paused the turn; the text so far is the answer
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

# The HTTP status each error type of Anthropic's error shape stands for; an ``error`` event in a
# stream arrives on a 200 response, so its type is all there is to classify it by.
_ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


class AnthropicProvider:
    """Claude models through Anthropic's Messages API; see the module docstring."""

    def __init__(self, config: ProviderConfig) -> None:
        self.name = config.name
        self._timeout = config.timeout
        # Without a key the SDK looks for other credentials (ANTHROPIC_AUTH_TOKEN, profiles,
        # workload identity federation), which deployments may rely on.
        self._client = AsyncAnthropic(
            api_key=config.api_key,
            base_url=config.base_url,
            max_retries=0,
            timeout=config.timeout,
            default_headers=dict(config.headers),
        )

    async def chat(self, request: ChatRequest) -> ChatResponse:
        started = time.perf_counter()
        try:
            message = await self._client.messages.create(**messages_params(request))
        except APIError as exc:
            raise self._error(request, exc) from exc
        content = "".join(block.text for block in message.content if isinstance(block, TextBlock))
        calls = tuple(
            ToolCall(id=block.id, name=block.name, arguments=dict(block.input))
            for block in message.content
            if isinstance(block, ToolUseBlock)
        )
        return ChatResponse(
            content=content,
            model=request.model,
            usage=_usage(message.usage),
            tool_calls=calls,
            finish_reason=_finish(message.stop_reason),
            latency_ms=(time.perf_counter() - started) * 1000,
        )

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatDelta]:
        try:
            events = await self._client.messages.create(**messages_params(request), stream=True)
        except APIError as exc:
            raise self._error(request, exc) from exc
        fold = _StreamFold()
        try:
            async with events:
                async for event in events:
                    for delta in fold.deltas(event):
                        yield delta
                    if fold.finished:
                        return
        except APIConnectionError as exc:  # anthropic >= 2.17 wraps a cut body's error too
            if isinstance(exc, APITimeoutError) or not isinstance(
                exc.__cause__, httpx2.TransportError
            ):
                raise self._error(request, exc) from exc
            raise self._transport_error(request, exc.__cause__) from exc
        except APIError as exc:
            raise self._error(request, exc) from exc
        except httpx2.TransportError as exc:  # older SDKs wrap these only before the body
            raise self._transport_error(request, exc) from exc
        raise RetryableError(f"{request.model}: the stream ended before message_stop")

    async def embed(self, request: EmbedRequest) -> EmbedResponse:
        raise StepFailed(
            f"{request.model}: Anthropic has no embeddings API; use an embedding model of "
            "another provider (for example openai/text-embedding-3-small)"
        )

    async def aclose(self) -> None:
        await self._client.close()

    # ------------------------------------------------------------------ errors

    def _error(self, request: ChatRequest, exc: APIError) -> StepError:
        if isinstance(exc, APITimeoutError):
            return RetryableError(f"{request.model}: timed out after {self._timeout:g}s")
        if isinstance(exc, APIConnectionError):
            cause = exc.__cause__
            detail = f": {cause}" if cause is not None and str(cause) else ""
            return RetryableError(f"{request.model}: connection failed{detail}")
        if not isinstance(exc, APIStatusError):
            return StepFailed(f"{request.model}: {exc.message}")
        message = exc.api_message or (exc.body if isinstance(exc.body, str) else "") or "no message"
        message = message if len(message) <= 500 else message[:497] + "..."  # e.g. a proxy's HTML
        if exc.status_code < 400:  # an ``error`` event in a stream
            kind = exc.type or "error"
            status = _ERROR_STATUS.get(kind)
            text = f"{request.model}: error in stream: {kind}: {message}"
            if is_retryable(status):
                return RetryableError(text, status=status)
            return StepFailed(text, status=status)
        status = exc.status_code
        wait = retry_after(exc.response.headers) if is_retryable(status) else None
        return failure(request.model, status, message, wait)

    def _transport_error(self, request: ChatRequest, exc: httpx2.TransportError) -> RetryableError:
        if isinstance(exc, httpx2.TimeoutException):
            return RetryableError(f"{request.model}: stream timed out after {self._timeout:g}s")
        return RetryableError(
            f"{request.model}: connection lost mid-stream: {exc or type(exc).__name__}"
        )


class _StreamFold:
    """Turns the Messages API's stream events into normalized deltas."""

    def __init__(self) -> None:
        self.usage: AnthropicUsage | None = None  # from message_start, updated by message_delta
        self.finish: FinishReason = "stop"
        self.tool_index: dict[int, int] = {}  # content block index -> tool call index
        self.finished = False

    def deltas(self, event: RawMessageStreamEvent) -> Iterator[ChatDelta]:
        if isinstance(event, RawMessageStartEvent):
            self.usage = event.message.usage
        elif isinstance(event, RawContentBlockStartEvent):
            block = event.content_block
            if isinstance(block, ToolUseBlock):
                # Tool calls are numbered among themselves, not among all content blocks.
                index = self.tool_index[event.index] = len(self.tool_index)
                yield ChatDelta(
                    tool_calls=(ToolCallDelta(index=index, id=block.id, name=block.name),)
                )
            elif isinstance(block, TextBlock) and block.text:
                yield ChatDelta(text=block.text)
        elif isinstance(event, RawContentBlockDeltaEvent):
            delta = event.delta
            if isinstance(delta, TextDelta) and delta.text:
                yield ChatDelta(text=delta.text)
            elif isinstance(delta, InputJSONDelta) and delta.partial_json:
                # Server tools (web search, code execution) stream their input too; they run
                # at Anthropic, so they are not calls for the caller to make.
                call = self.tool_index.get(event.index)
                if call is not None:
                    piece = ToolCallDelta(index=call, arguments=delta.partial_json)
                    yield ChatDelta(tool_calls=(piece,))
        elif isinstance(event, RawMessageDeltaEvent):
            self.finish = _finish(event.delta.stop_reason)
            self.usage = _merge_usage(self.usage, event.usage)
        elif isinstance(event, RawMessageStopEvent):
            self.finished = True
            yield ChatDelta(finish_reason=self.finish, usage=_usage(self.usage))


# ---------------------------------------------------------------------- the answer


def _finish(stop_reason: str | None) -> FinishReason:
    return _FINISH.get(stop_reason or "end_turn", "stop")


def _usage(usage: AnthropicUsage | None) -> Usage:
    """Normalized usage from Anthropic's: its ``input_tokens`` leave out the cache's tokens."""
    if usage is None:
        return Usage()
    cache_read = usage.cache_read_input_tokens or 0
    cache_write = usage.cache_creation_input_tokens or 0
    details = usage.output_tokens_details
    return Usage(
        input_tokens=usage.input_tokens + cache_read + cache_write,
        output_tokens=usage.output_tokens,
        cached_tokens=cache_read,
        cache_write_tokens=cache_write,
        reasoning_tokens=details.thinking_tokens if details is not None else 0,
    )


def _merge_usage(start: AnthropicUsage | None, delta: MessageDeltaUsage) -> AnthropicUsage:
    """message_start's usage updated by a message_delta's counts (which are cumulative)."""
    if start is None:
        start = AnthropicUsage(input_tokens=0, output_tokens=0)
    fields = (
        "input_tokens",
        "output_tokens",
        "cache_read_input_tokens",
        "cache_creation_input_tokens",
        "output_tokens_details",
    )
    updates = {name: getattr(delta, name) for name in fields if getattr(delta, name) is not None}
    return start.model_copy(update=updates)
