"""The ``ollama`` provider: a local (or remote) Ollama server through the ``ollama`` SDK.

On the wire: ``POST /api/chat`` answers one JSON object, or with ``"stream": true`` one JSON
object a line (NDJSON) whose last line has ``"done": true``, ``done_reason`` and the counts;
``POST /api/embed`` embeds a batch. Errors are ``{"error": "..."}`` with an HTTP status, or the
same object as a line in the middle of a stream.

How the normalized format maps onto Ollama's:

- messages keep their roles; an assistant's tool calls go back as ``tool_calls`` with arguments
  as objects; a tool result is a ``tool`` message with ``tool_name``.
- tools are ``{"type": "function", "function": {name, description, parameters}}``. The SDK
  models ``parameters`` after the server's own type, which keeps each property's ``type``,
  ``description``, ``enum`` and ``items`` only: deeper JSON Schema does not reach the model.
- ``response_schema`` is ``format``; temperature, top_p, max_tokens and stop go in ``options``
  (``num_predict`` for max_tokens), along with any option that is an Ollama model option
  (``num_ctx``, ``seed``, ``top_k``, …); ``think`` and ``keep_alive`` are passed through too.
- Ollama sends each tool call whole and without an id: each gets ``call_<turn>_<index>``.
- usage is ``prompt_eval_count`` in and ``eval_count`` out (thinking included; Ollama does not
  count it apart). A ``done_reason`` of ``length`` is ``length``; any other is ``stop``, or
  ``tool_calls`` when the model called tools.

The SDK never retries. Its ``ResponseError`` carries no headers, so an httpx response hook keeps
the headers of failed answers for the call that made them, for ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Iterable
from typing import Any, cast

import httpx
import ollama
import pydantic

from agentmill.errors import RetryableError, StepError, StepFailed
from agentmill.gateway.config import ProviderConfig
from agentmill.gateway.providers._http import failure, retry_after, tls_context
from agentmill.gateway.types import (
    ChatDelta,
    ChatRequest,
    ChatResponse,
    EmbedRequest,
    EmbedResponse,
    FinishReason,
    Message,
    ToolCall,
    ToolCallDelta,
    Usage,
)

DEFAULT_HOST = "http://127.0.0.1:11434"
_REQUEST_OPTIONS = ("think", "keep_alive")
_MODEL_OPTIONS = set(ollama.Options.model_fields)
_FAILURES = (ollama.ResponseError, httpx.HTTPError, ConnectionError, ValueError)


class OllamaProvider:
    """Chat, streaming and embeddings on an Ollama server; see the module docstring."""

    def __init__(self, config: ProviderConfig) -> None:
        self.name = config.name
        self._timeout = config.timeout
        headers = dict(config.headers)
        if config.api_key:  # Ollama's cloud, or a proxy in front of a server
            headers.setdefault("authorization", f"Bearer {config.api_key}")
        self._key = config.api_key
        # Headers of the last failed answer, per task (a task makes one call at a time).
        self._failed: weakref.WeakKeyDictionary[asyncio.Task[Any], httpx.Headers] = (
            weakref.WeakKeyDictionary()
        )
        self._client = ollama.AsyncClient(
            host=config.base_url or DEFAULT_HOST,
            timeout=config.timeout,
            headers=headers,
            event_hooks={"response": [self._keep_failed_headers]},
            verify=tls_context(),
        )

    async def chat(self, request: ChatRequest) -> ChatResponse:
        arguments = _arguments(request)
        try:
            response = await self._client.chat(request.model_name, stream=False, **arguments)
        except _FAILURES as exc:
            raise self._translate(request.model, exc) from exc
        message = response.message
        calls = _calls(message.tool_calls or (), request.context.turn, 0)
        return ChatResponse(
            content=message.content or "",
            model=request.model,
            usage=_usage(response),
            tool_calls=calls,
            finish_reason=_finish_reason(response.done_reason, bool(calls)),
        )

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatDelta]:
        arguments = _arguments(request)
        calls = 0
        final: ollama.ChatResponse | None = None
        try:
            # An async generator typed as an iterator: close it, and its connection, early.
            chunks = cast(
                AsyncGenerator[ollama.ChatResponse, None],
                await self._client.chat(request.model_name, stream=True, **arguments),
            )
            async with contextlib.aclosing(chunks):
                async for chunk in chunks:
                    made = _calls(chunk.message.tool_calls or (), request.context.turn, calls)
                    pieces = tuple(
                        ToolCallDelta(
                            index=calls + i,
                            id=call.id,
                            name=call.name,
                            arguments=call.arguments_json,
                        )
                        for i, call in enumerate(made)
                    )
                    calls += len(made)
                    if chunk.message.content or pieces:
                        yield ChatDelta(text=chunk.message.content or "", tool_calls=pieces)
                    if chunk.done:
                        final = chunk
        except _FAILURES as exc:
            raise self._translate(request.model, exc) from exc
        if final is None:
            raise RetryableError(f"{request.model}: the stream ended before it was done")
        yield ChatDelta(
            finish_reason=_finish_reason(final.done_reason, calls > 0), usage=_usage(final)
        )

    async def embed(self, request: EmbedRequest) -> EmbedResponse:
        options = {k: v for k, v in request.options.items() if k in _MODEL_OPTIONS}
        try:
            response = await self._client.embed(
                request.model_name,
                input=list(request.inputs),
                dimensions=request.dimensions,
                truncate=request.options.get("truncate"),
                keep_alive=request.options.get("keep_alive"),
                options=options or None,
            )
        except _FAILURES as exc:
            raise self._translate(request.model, exc) from exc
        vectors = tuple(tuple(vector) for vector in response.embeddings)
        if len(vectors) != len(request.inputs):
            raise StepFailed(
                f"{request.model}: {len(vectors)} embeddings for {len(request.inputs)} inputs"
            )
        usage = Usage(input_tokens=response.prompt_eval_count or 0)
        return EmbedResponse(vectors=vectors, model=request.model, usage=usage)

    async def aclose(self) -> None:
        await self._client.close()  # type: ignore[no-untyped-call]  # the SDK leaves it untyped

    # ------------------------------------------------------------------ failures

    async def _keep_failed_headers(self, response: httpx.Response) -> None:
        task = asyncio.current_task()
        if response.status_code >= 400 and task is not None:
            self._failed[task] = response.headers

    def _translate(self, model: str, exc: Exception) -> StepError:
        """The gateway's error for a failed call, quoting Ollama's own message."""
        task = asyncio.current_task()
        headers = self._failed.pop(task, None) if task is not None else None
        if isinstance(exc, ollama.ResponseError):
            upstream = self._redact(str(exc.error))
            if exc.status_code < 0:  # an error line after the stream had started
                return RetryableError(f"{model}: the stream failed: {upstream}")
            return failure(model, exc.status_code, upstream, retry_after(headers))
        detail = self._redact(str(exc) or type(exc).__name__)
        if isinstance(exc, httpx.TimeoutException):
            return RetryableError(
                f"{model}: no answer within {self._timeout:g}s ({type(exc).__name__})"
            )
        if isinstance(exc, httpx.UnsupportedProtocol):
            return StepFailed(f"{model}: {detail}")
        if isinstance(exc, (httpx.TransportError, ConnectionError)):
            return RetryableError(f"{model}: connection failed: {detail}")
        if isinstance(exc, httpx.HTTPError):
            return StepFailed(f"{model}: {detail}")
        return RetryableError(f"{model}: unreadable answer: {detail}")

    def _redact(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text


def _arguments(request: ChatRequest) -> dict[str, Any]:
    options = {k: v for k, v in request.options.items() if k in _MODEL_OPTIONS}
    explicit = {
        "temperature": request.temperature,
        "top_p": request.top_p,
        "num_predict": request.max_tokens,
        "stop": list(request.stop) or None,
    }
    options.update({k: v for k, v in explicit.items() if v is not None})
    arguments: dict[str, Any] = {
        k: request.options[k] for k in _REQUEST_OPTIONS if k in request.options
    }
    arguments["messages"] = _messages(request.messages)
    arguments["options"] = options or None
    if request.response_schema is not None:
        arguments["format"] = dict(request.response_schema)
    elif request.options.get("format") is not None:
        arguments["format"] = request.options["format"]
    # Ollama has no tool_choice: "none" offers no tools, a tool's name offers only that one,
    # and "required" cannot be enforced.
    offered = [
        t for t in request.tools if request.tool_choice in (None, "auto", "required", t.name)
    ]
    try:
        arguments["tools"] = [
            ollama.Tool.model_validate(
                {
                    "type": "function",
                    "function": {
                        "name": tool.name,
                        "description": tool.description,
                        "parameters": dict(tool.parameters),
                    },
                }
            )
            for tool in offered
        ] or None
    except pydantic.ValidationError as exc:
        raise StepFailed(f"{request.model}: a tool Ollama cannot take: {exc}") from None
    return arguments


def _messages(messages: Iterable[Message]) -> list[dict[str, Any]]:
    names: dict[str, str] = {}  # tool call id -> tool name, for results that lack a name
    wire: list[dict[str, Any]] = []
    for message in messages:
        item: dict[str, Any] = {"role": message.role, "content": message.content}
        if message.tool_calls:
            item["tool_calls"] = [
                {"function": {"name": call.name, "arguments": dict(call.arguments)}}
                for call in message.tool_calls
            ]
            names.update((call.id, call.name) for call in message.tool_calls)
        if message.role == "tool":
            name = message.name or names.get(message.tool_call_id or "")
            if name:
                item["tool_name"] = name
        wire.append(item)
    return wire


def _calls(calls: Iterable[ollama.Message.ToolCall], turn: int, start: int) -> tuple[ToolCall, ...]:
    return tuple(
        ToolCall(
            id=f"call_{turn}_{start + i}",
            name=call.function.name,
            arguments=dict(call.function.arguments),
        )
        for i, call in enumerate(calls)
    )


def _usage(response: ollama.ChatResponse) -> Usage:
    return Usage(
        input_tokens=response.prompt_eval_count or 0, output_tokens=response.eval_count or 0
    )


def _finish_reason(done_reason: str | None, has_calls: bool) -> FinishReason:
    if done_reason == "length":
        return "length"
    return "tool_calls" if has_calls else "stop"
