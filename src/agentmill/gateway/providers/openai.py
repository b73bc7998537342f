"""OpenAI, and every server speaking its Chat Completions API (kinds ``openai`` and
``openai_compatible``: vLLM, llama.cpp, LM Studio, Groq, Together, OpenRouter, DeepSeek, ...).

The official SDK does the HTTP with its own retries off: the gateway retries and fails over.

Translation, beyond the obvious field-for-field mapping:

- ``max_tokens`` goes out as ``max_completion_tokens`` to OpenAI (reasoning models reject
  ``max_tokens``) and as ``max_tokens`` to compatible servers (not all know the newer name).
- ``response_schema`` becomes ``response_format: json_schema`` named ``output``, not strict
  (strict mode accepts only a subset of JSON Schema).
- ``tool_choice`` is sent only with tools (the API rejects it alone); a name means that tool.
- A refusal (structured outputs) comes back as the answer's text with finish reason
  ``content_filter``; tool calls that end with finish reason ``stop`` (some compatible servers
  do this) finish with ``tool_calls``.
- Usage: ``prompt_tokens`` (which includes cached tokens) and ``completion_tokens`` (which
  includes reasoning tokens); ``cached_tokens`` from ``prompt_tokens_details`` (or DeepSeek's
  ``prompt_cache_hit_tokens``), ``reasoning_tokens`` from ``completion_tokens_details``.
  A server that reports no usage gives zero tokens (a stream's last delta then has no usage).

``options`` are shared by every provider a request may fail over to, so only keys that are
OpenAI Chat Completions parameters the normalized request does not already carry (``seed``,
``reasoning_effort``, ``user``, ``logit_bias``, ``parallel_tool_calls``, ``service_tier``,
``response_format`` when there is no ``response_schema``, ...) are sent; other keys belong to
other providers and are ignored. A mapping under the provider's configured name is sent
verbatim, for a server's own parameters: ``options={"local": {"top_k": 20, "min_p": 0.05}}``.

A compatible server configured without a key gets a placeholder bearer token (the SDK requires
one), never ``OPENAI_API_KEY``, and no ``OpenAI-Organization``/``OpenAI-Project`` header from the
environment.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping
from typing import Any, Literal

import openai
from openai.types import CompletionUsage
from openai.types.chat import (
    ChatCompletion,
    ChatCompletionAssistantMessageParam,
    ChatCompletionChunk,
    ChatCompletionFunctionToolParam,
    ChatCompletionMessageFunctionToolCall,
    ChatCompletionMessageParam,
    ChatCompletionToolChoiceOptionParam,
)
from openai.types.chat.completion_create_params import CompletionCreateParamsBase
from openai.types.embedding_create_params import EmbeddingCreateParams
from openai.types.shared_params import FunctionDefinition

from agentmill.errors import ConfigError, RetryableError, StepFailed
from agentmill.gateway.config import ProviderConfig
from agentmill.gateway.providers._http import failure, is_retryable, retry_after
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
    ToolSpec,
    Usage,
    parse_arguments,
)

# What a server without keys (vLLM, llama.cpp, LM Studio) is sent as the bearer token.
NO_KEY = "no-key"

# Parameters the normalized request sets itself, or that would break it (``n`` > 1, the
# legacy ``functions``); everything else the SDK knows may come from ``options``.
_CHAT_OWN = {"messages", "model", "stream", "stream_options", "tools", "tool_choice"}
_CHAT_OWN |= {"temperature", "top_p", "max_tokens", "max_completion_tokens", "stop"}
_CHAT_OWN |= {"n", "functions", "function_call"}
_CHAT_OPTIONS = frozenset(CompletionCreateParamsBase.__annotations__) - _CHAT_OWN
_EMBED_OPTIONS = frozenset(EmbeddingCreateParams.__annotations__) - {
    "model",
    "input",
    "dimensions",
    "encoding_format",
}
_TOOL_MODES: dict[str, Literal["auto", "none", "required"]] = {
    "auto": "auto",
    "none": "none",
    "required": "required",
}
_SECRET_HEADER = re.compile(r"key|auth|token|secret", re.IGNORECASE)

_FINISH: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
}


class OpenAIProvider:
    """A provider over the OpenAI Chat Completions and Embeddings APIs."""

    def __init__(self, config: ProviderConfig) -> None:
        self.name = config.name
        self._kind = config.kind
        self._timeout = config.timeout
        if not config.api_key and config.kind == "openai":
            raise ConfigError(
                f"provider {config.name!r}: no API key (set OPENAI_API_KEY, or api_key_env)"
            )
        # Keys must never reach an error message: the upstream may quote them back. Some
        # servers take theirs in a configured header (api-key, x-api-key, Authorization).
        secrets = [config.api_key or ""]
        secrets += [v for k, v in config.headers.items() if _SECRET_HEADER.search(k)]
        self._secrets = tuple(s for s in secrets if len(s) >= 4)
        self._client = openai.AsyncOpenAI(
            api_key=config.api_key or NO_KEY,
            base_url=config.base_url,
            max_retries=0,
            timeout=config.timeout,
            default_headers=dict(config.headers),
        )
        if config.kind != "openai":
            # The SDK fills these from OPENAI_ORG_ID and OPENAI_PROJECT_ID: OpenAI account ids
            # that have no business going to another company's server.
            self._client.organization = None
            self._client.project = None

    async def chat(self, request: ChatRequest) -> ChatResponse:
        """One completion."""
        try:
            # The SDK's client, errors and response types, without its per-call walk of the
            # parameters through their type annotations: ours are plain JSON already (that walk
            # was a third of the SDK's cost per call).
            completion = await self._client.post(
                "/chat/completions", body=self._body(request), cast_to=ChatCompletion
            )
        except openai.APIError as exc:
            raise self._error(exc, request.model) from None
        return _response(request, completion)

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatDelta]:
        """A completion as deltas; the last one has the finish reason and the usage.

        OpenAI sends the finish reason in one chunk and the usage in a later chunk with no
        choices, so the finish is held back and sent with the usage when the stream ends.
        """
        finish: str | None = None
        refused = has_calls = False
        usage: Usage | None = None
        try:
            body = self._body(request)
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
            chunks = await self._client.post(
                "/chat/completions",
                body=body,
                cast_to=ChatCompletion,
                stream=True,
                stream_cls=openai.AsyncStream[ChatCompletionChunk],
            )
            async with chunks:
                async for chunk in chunks:
                    if chunk.usage is not None:
                        usage = _usage(chunk.usage)
                    if not chunk.choices:
                        continue
                    choice = chunk.choices[0]
                    delta = choice.delta
                    if choice.finish_reason is not None:
                        finish = choice.finish_reason
                    text = (delta.content or "") + (delta.refusal or "")
                    refused = refused or bool(delta.refusal)
                    calls = tuple(
                        ToolCallDelta(
                            index=piece.index if isinstance(piece.index, int) else position,
                            id=piece.id,
                            name=piece.function.name if piece.function else None,
                            arguments=(piece.function.arguments or "") if piece.function else "",
                        )
                        for position, piece in enumerate(delta.tool_calls or ())
                    )
                    has_calls = has_calls or bool(calls)
                    if text or calls:
                        yield ChatDelta(text=text, tool_calls=calls)
        except openai.APIError as exc:
            raise self._error(exc, request.model) from None
        if finish is None:
            # The body ended cleanly but the answer did not: a proxy or server gave up.
            raise RetryableError(f"{request.model}: the stream ended before the answer finished")
        yield ChatDelta(finish_reason=_finish(finish, has_calls, refused), usage=usage)

    async def embed(self, request: EmbedRequest) -> EmbedResponse:
        """Vectors for the inputs, in input order."""
        if not request.inputs:
            return EmbedResponse(vectors=(), model=request.model, usage=Usage())
        extra = {k: v for k, v in request.options.items() if k in _EMBED_OPTIONS}
        extra.update(self._own_options(request.options))
        try:
            result = await self._client.embeddings.create(
                model=request.model_name,
                input=list(request.inputs),
                dimensions=openai.omit if request.dimensions is None else request.dimensions,
                extra_body=extra or None,
            )
        except openai.APIError as exc:
            raise self._error(exc, request.model) from None
        except ValueError as exc:  # the SDK's "No embedding data received"
            raise StepFailed(f"{request.model}: {exc}") from None
        rows = sorted(result.data, key=lambda row: row.index)
        if len(rows) != len(request.inputs):
            raise StepFailed(
                f"{request.model}: asked for {len(request.inputs)} embeddings, got {len(rows)}"
            )
        tokens = result.usage.prompt_tokens if result.usage is not None else 0
        return EmbedResponse(
            vectors=tuple(tuple(row.embedding) for row in rows),
            model=request.model,
            usage=Usage(input_tokens=tokens or 0),
        )

    async def aclose(self) -> None:
        """Close the SDK client and its connections."""
        await self._client.close()

    # ------------------------------------------------------------------ requests

    def _body(self, request: ChatRequest) -> dict[str, Any]:
        """The request's JSON body: the parameters, then the options that are OpenAI's."""
        return {**self._params(request), **self._extra_chat(request)}

    def _params(self, request: ChatRequest) -> CompletionCreateParamsBase:
        params: CompletionCreateParamsBase = {
            "model": request.model_name,
            "messages": [_message(m, request.model) for m in request.messages],
        }
        if request.temperature is not None:
            params["temperature"] = request.temperature
        if request.top_p is not None:
            params["top_p"] = request.top_p
        if request.max_tokens is not None:
            if self._kind == "openai":
                params["max_completion_tokens"] = request.max_tokens
            else:
                params["max_tokens"] = request.max_tokens
        if request.stop:
            params["stop"] = list(request.stop)
        if request.tools:
            params["tools"] = [_tool(t) for t in request.tools]
            if request.tool_choice:
                params["tool_choice"] = _tool_choice(request.tool_choice)
        if request.response_schema is not None:
            params["response_format"] = {
                "type": "json_schema",
                "json_schema": {
                    "name": "output",
                    "schema": dict(request.response_schema),
                    "strict": False,
                },
            }
        return params

    def _extra_chat(self, request: ChatRequest) -> dict[str, object]:
        extra = {k: v for k, v in request.options.items() if k in _CHAT_OPTIONS}
        if request.response_schema is not None:
            extra.pop("response_format", None)
        extra.update(self._own_options(request.options))
        return extra

    def _own_options(self, options: Mapping[str, Any]) -> dict[str, object]:
        own = options.get(self.name)
        return dict(own) if isinstance(own, Mapping) else {}

    # ------------------------------------------------------------------ errors

    def _error(self, exc: openai.APIError, model: str) -> RetryableError | StepFailed:
        """The gateway's error for an SDK error (see the Provider protocol)."""
        if isinstance(exc, openai.APITimeoutError):
            return RetryableError(self._scrub(f"{model}: timed out after {self._timeout:g}s"))
        if isinstance(exc, openai.APIConnectionError):
            cause = exc.__cause__
            detail = f"{type(cause).__name__}: {cause}" if cause is not None else exc.message
            return RetryableError(self._scrub(f"{model}: connection failed: {detail}"))
        if isinstance(exc, openai.APIStatusError):
            status = exc.status_code
            wait = retry_after(exc.response.headers) if is_retryable(status) else None
            return failure(model, status, self._scrub(_upstream_message(exc)), wait)
        # An error event inside a stream that had begun with 200 OK.
        text = self._scrub(f"{model}: error in stream: {exc.message}")
        kind = exc.body.get("type") if isinstance(exc.body, Mapping) else None
        return StepFailed(text) if kind == "invalid_request_error" else RetryableError(text)

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


# ---------------------------------------------------------------------- translation


def _message(message: Message, model: str) -> ChatCompletionMessageParam:
    if message.role == "system":
        return {"role": "system", "content": message.content}
    if message.role == "user":
        return {"role": "user", "content": message.content}
    if message.role == "tool":
        if not message.tool_call_id:
            raise StepFailed(f"{model}: a tool result message has no tool_call_id")
        return {"role": "tool", "content": message.content, "tool_call_id": message.tool_call_id}
    assistant: ChatCompletionAssistantMessageParam = {"role": "assistant"}
    # With tool calls and no text, content is null (as the API itself returns it).
    assistant["content"] = message.content if message.content or not message.tool_calls else None
    if message.tool_calls:
        assistant["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": _arguments_text(call)},
            }
            for call in message.tool_calls
        ]
    return assistant


def _arguments_text(call: ToolCall) -> str:
    # Arguments that were not valid JSON are kept as {"_raw": text}: send back what the model
    # wrote, so its own history is not rewritten.
    raw = call.arguments.get("_raw")
    if set(call.arguments) == {"_raw"} and isinstance(raw, str):
        return raw
    return call.arguments_json


def _tool(tool: ToolSpec) -> ChatCompletionFunctionToolParam:
    function: FunctionDefinition = {"name": tool.name, "parameters": dict(tool.parameters)}
    if tool.description:
        function["description"] = tool.description
    return {"type": "function", "function": function}


def _tool_choice(choice: str) -> ChatCompletionToolChoiceOptionParam:
    mode = _TOOL_MODES.get(choice)
    return mode if mode is not None else {"type": "function", "function": {"name": choice}}


def _response(request: ChatRequest, completion: ChatCompletion) -> ChatResponse:
    if not completion.choices:
        raise RetryableError(f"{request.model}: the answer had no choices")
    choice = completion.choices[0]
    message = choice.message
    calls = tuple(
        ToolCall(
            id=call.id,
            name=call.function.name,
            arguments=parse_arguments(call.function.arguments, call.function.name),
        )
        for call in message.tool_calls or ()
        if isinstance(call, ChatCompletionMessageFunctionToolCall)
    )
    refused = bool(message.refusal)
    return ChatResponse(
        content=message.refusal or "" if refused else message.content or "",
        model=request.model,
        usage=_usage(completion.usage),
        tool_calls=calls,
        finish_reason=_finish(choice.finish_reason, bool(calls), refused),
    )


def _finish(reason: str | None, has_calls: bool, refused: bool) -> FinishReason:
    if refused:
        return "content_filter"
    finish = _FINISH.get(reason or "", "stop")
    return "tool_calls" if has_calls and finish == "stop" else finish


def _usage(usage: CompletionUsage | None) -> Usage:
    if usage is None:
        return Usage()
    # Lenient servers leave out fields the SDK's types call required (the SDK does not
    # validate, so they read as None): count what is there.
    prompt_details = usage.prompt_tokens_details
    completion_details = usage.completion_tokens_details
    cached = _count(prompt_details.cached_tokens if prompt_details else None)
    if not cached:  # DeepSeek reports cache hits at the top level
        cached = _count((usage.model_extra or {}).get("prompt_cache_hit_tokens"))
    return Usage(
        input_tokens=_count(usage.prompt_tokens),
        output_tokens=_count(usage.completion_tokens),
        cached_tokens=cached,
        cache_write_tokens=_count(prompt_details.cache_write_tokens if prompt_details else None),
        reasoning_tokens=_count(
            completion_details.reasoning_tokens if completion_details else None
        ),
    )


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _upstream_message(exc: openai.APIStatusError) -> str:
    """The upstream's own words: OpenAI's ``error.message``, a FastAPI-style ``detail``, or the
    start of a body that is not JSON."""
    body = exc.body
    if isinstance(body, Mapping):
        for key in ("message", "detail", "error"):
            value = body.get(key)
            if isinstance(value, str) and value:
                return value
    if isinstance(body, str) and body.strip():
        text = " ".join(body.split())
        return text if len(text) <= 300 else text[:297] + "..."
    return exc.message
