"""The ``gemini`` provider: Google's Gemini API through the ``google-genai`` SDK.

On the wire (Gemini Developer API, ``v1beta``): ``POST /v1beta/models/{model}:generateContent``,
``POST …:streamGenerateContent?alt=sse`` (server-sent events, each one a whole
``GenerateContentResponse``) and ``POST …:batchEmbedContents``; the key travels in the
``x-goog-api-key`` header; errors are ``{"error": {"code", "message", "status", "details"}}``.

How the normalized format maps onto Gemini's:

- system messages become ``systemInstruction``; user and assistant messages become contents with
  the roles ``user`` and ``model``; an assistant's tool calls become ``functionCall`` parts; tool
  results become ``functionResponse`` parts named after the tool, in one ``user`` content for
  consecutive results (parallel calls), and a result that is not a JSON object is wrapped as
  ``{"result": ...}`` because Gemini only accepts objects there.
- Gemini's function calls may lack an id, so each gets ``call_<turn>_<index>`` unless Gemini gave
  one. Thinking models (Gemini 3 requires it) attach a *thought signature* to their function calls
  that must come back with them on the next turn; the normalized ``ToolCall`` has no field for it,
  so it rides inside the call's id (``<id>__ts_<base64url>``) and is restored from there. History
  without signatures (written by another provider, say) gets Google's documented placeholder,
  except on Gemini 1 and 2, as Gemini 3 would otherwise refuse the request.
- Options that are ``GenerateContentConfig`` fields (``thinking_config``, ``seed``,
  ``safety_settings``, ``cached_content``, ``top_k``, …) are passed through; the request's own
  fields win over them, and others are ignored.
- Usage: ``promptTokenCount`` (+ ``toolUsePromptTokenCount``) is input, ``candidatesTokenCount``
  + ``thoughtsTokenCount`` is output, ``thoughtsTokenCount`` is reasoning and
  ``cachedContentTokenCount`` is cached. ``batchEmbedContents`` reports no tokens (unless it sends
  ``usageMetadata``), so embedding input tokens are estimated at four characters a token.

The SDK makes one attempt per call (``HttpRetryOptions(attempts=1)``): the gateway retries and
fails over. The SDK's automatic continuation stays on: when the service ends an answer with
``finishReason: CONTINUATION`` and a ``continuationToken`` checkpoint, the SDK asks for the rest
(another request; usage adds up). It only ever resumes from a checkpoint the service issued,
never repeats a refused request, and without checkpoints a failed call is one request. It runs on an ``httpx.AsyncClient`` we own, so its transport (and therefore the
exceptions to translate) does not change when ``aiohttp`` or ``httpx2`` happen to be installed.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import re
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Mapping
from typing import Any, cast

import httpx
import pydantic
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from agentmill.errors import ConfigError, RetryableError, StepError, StepFailed
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

API_VERSION = "v1beta"
_SIGNATURE_MARK = "__ts_"
# Google's documented stand-in for a lost thought signature, exactly as it must appear on the
# wire; the SDK base64-encodes bytes, so we hold the bytes that encode to this text.
_PLACEHOLDER_SIGNATURE = base64.urlsafe_b64decode("skip_thought_signature_validator")
_FILTERED = {
    "SAFETY",
    "RECITATION",
    "PROHIBITED_CONTENT",
    "BLOCKLIST",
    "SPII",
    "IMAGE_SAFETY",
    "IMAGE_PROHIBITED_CONTENT",
    "IMAGE_RECITATION",
    "MODEL_ARMOR",
}
# What a call can fail with once it is sent: an answer with an error status, a lost or late
# answer, or an answer the SDK cannot read.
_FAILURES = (
    genai_errors.APIError,
    genai_errors.UnknownApiResponseError,
    httpx.HTTPError,
    pydantic.ValidationError,
)
# Options we set ourselves, or that would change how the SDK behaves (retries, transport).
_RESERVED_OPTIONS = {
    "http_options",
    "should_return_http_response",
    "automatic_function_calling",
    "system_instruction",
    "tools",
    "tool_config",
    "continuation_token",
}


class GeminiProvider:
    """Chat, streaming and embeddings on the Gemini API; see the module docstring."""

    def __init__(self, config: ProviderConfig) -> None:
        if not config.api_key:
            raise ConfigError(
                f"provider {config.name!r}: no API key (set GEMINI_API_KEY or GOOGLE_API_KEY)"
            )
        self.name = config.name
        self._timeout = config.timeout
        self._key = config.api_key.strip()
        self._http = httpx.AsyncClient(verify=tls_context())
        self._client = genai.Client(
            vertexai=False,
            api_key=self._key,
            http_options=types.HttpOptions(
                base_url=config.base_url or None,
                api_version=API_VERSION,
                timeout=int(config.timeout * 1000),  # milliseconds
                headers=dict(config.headers),
                retry_options=types.HttpRetryOptions(attempts=1),
                httpx_async_client=self._http,
                # The SDK also builds an idle sync client and a websocket TLS context.
                client_args={"verify": tls_context()},
                async_client_args={"ssl": tls_context()},
            ),
        )

    async def chat(self, request: ChatRequest) -> ChatResponse:
        contents, config = self._request(request)
        try:
            response = await self._client.aio.models.generate_content(
                model=request.model_name, contents=contents, config=config
            )
        except _FAILURES as exc:
            raise _translate(request.model, exc, self._timeout, self._key) from exc
        text, calls = _read_parts(_parts(response), request.context.turn, 0)
        return ChatResponse(
            content="".join(text),
            model=request.model,
            usage=_usage(response.usage_metadata),
            tool_calls=tuple(calls),
            finish_reason=_finish_reason(response, bool(calls)),
        )

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatDelta]:
        contents, config = self._request(request)
        calls = 0
        last: types.GenerateContentResponse | None = None
        finish: types.GenerateContentResponse | None = None
        try:
            # An async generator typed as an iterator: close it, and its connection, early.
            chunks = cast(
                AsyncGenerator[types.GenerateContentResponse, None],
                await self._client.aio.models.generate_content_stream(
                    model=request.model_name, contents=contents, config=config
                ),
            )
            async with contextlib.aclosing(chunks):
                async for chunk in chunks:
                    last = chunk
                    if _candidate_finish(chunk) or chunk.prompt_feedback:
                        finish = chunk
                    text, made = _read_parts(_parts(chunk), request.context.turn, calls)
                    pieces = tuple(
                        ToolCallDelta(
                            index=calls + i, id=c.id, name=c.name, arguments=c.arguments_json
                        )
                        for i, c in enumerate(made)
                    )
                    calls += len(made)
                    if text or pieces:
                        yield ChatDelta(text="".join(text), tool_calls=pieces)
        except _FAILURES as exc:
            raise _translate(request.model, exc, self._timeout, self._key) from exc
        if finish is None or last is None:
            raise RetryableError(f"{request.model}: the stream ended before it finished")
        yield ChatDelta(
            finish_reason=_finish_reason(finish, calls > 0), usage=_usage(last.usage_metadata)
        )

    async def embed(self, request: EmbedRequest) -> EmbedResponse:
        fields = types.EmbedContentConfig.model_fields
        settings = {k: v for k, v in request.options.items() if k in fields and k != "http_options"}
        if request.dimensions is not None:
            settings["output_dimensionality"] = request.dimensions
        try:
            config = types.EmbedContentConfig.model_validate(settings)
        except pydantic.ValidationError as exc:
            raise StepFailed(f"{request.model}: invalid embedding options: {exc}") from None
        try:
            response = await self._client.aio.models.embed_content(
                model=request.model_name, contents=list(request.inputs), config=config
            )
        except _FAILURES as exc:
            raise _translate(request.model, exc, self._timeout, self._key) from exc
        vectors = tuple(tuple(e.values or ()) for e in response.embeddings or ())
        if len(vectors) != len(request.inputs):
            raise StepFailed(
                f"{request.model}: {len(vectors)} embeddings for {len(request.inputs)} inputs"
            )
        meta = response.usage_metadata
        tokens = meta.prompt_token_count if meta and meta.prompt_token_count else None
        if tokens is None:
            tokens = sum((len(text) + 3) // 4 for text in request.inputs)
        return EmbedResponse(vectors=vectors, model=request.model, usage=Usage(input_tokens=tokens))

    async def aclose(self) -> None:
        await self._client.aio.aclose()
        self._client.close()
        await self._http.aclose()

    # ------------------------------------------------------------------ requests

    def _request(
        self, request: ChatRequest
    ) -> tuple[list[types.Content], types.GenerateContentConfig]:
        settings: dict[str, Any] = {
            k: v
            for k, v in request.options.items()
            if k in types.GenerateContentConfig.model_fields and k not in _RESERVED_OPTIONS
        }
        system = "\n\n".join(m.content for m in request.messages if m.role == "system")
        if system:
            settings["system_instruction"] = system
        explicit = {
            "temperature": request.temperature,
            "top_p": request.top_p,
            "max_output_tokens": request.max_tokens,
            "stop_sequences": list(request.stop) or None,
        }
        settings.update({k: v for k, v in explicit.items() if v is not None})
        if request.response_schema is not None:
            settings["response_mime_type"] = "application/json"
            settings["response_json_schema"] = dict(request.response_schema)
            settings.pop("response_schema", None)
        if request.tools:
            settings["tools"] = [
                types.Tool(
                    function_declarations=[
                        types.FunctionDeclaration(
                            name=tool.name,
                            description=tool.description or None,
                            parameters_json_schema=dict(tool.parameters),
                        )
                        for tool in request.tools
                    ]
                )
            ]
            settings["tool_config"] = _tool_config(request.tool_choice)
        try:
            config = types.GenerateContentConfig.model_validate(settings)
        except pydantic.ValidationError as exc:
            raise StepFailed(f"{request.model}: invalid options: {exc}") from None
        contents = _contents(request.messages, request.model, _needs_signatures(request))
        return contents, config


def _tool_config(choice: str | None) -> types.ToolConfig:
    if choice is None or choice == "auto":
        mode, names = types.FunctionCallingConfigMode.AUTO, None
    elif choice == "none":
        mode, names = types.FunctionCallingConfigMode.NONE, None
    elif choice == "required":
        mode, names = types.FunctionCallingConfigMode.ANY, None
    else:
        mode, names = types.FunctionCallingConfigMode.ANY, [choice]
    return types.ToolConfig(
        function_calling_config=types.FunctionCallingConfig(mode=mode, allowed_function_names=names)
    )


def _needs_signatures(request: ChatRequest) -> bool:
    """Gemini 3 refuses function calls in history that lost their signature. Only Gemini 1 and
    2 are known not to, so aliases (``gemini-flash-latest``) count as needing them."""
    return not re.match(r"(?:models/)?gemini-[12]\.", request.model_name)


def _contents(
    messages: Iterable[Message], model: str, needs_signatures: bool
) -> list[types.Content]:
    contents: list[types.Content] = []
    names: dict[str, str] = {}  # tool call id -> tool name, for results that lack a name
    for message in messages:
        if message.role == "system":
            continue
        if message.role == "user":
            contents.append(types.Content(role="user", parts=[types.Part(text=message.content)]))
        elif message.role == "assistant":
            parts = [types.Part(text=message.content)] if message.content else []
            for i, call in enumerate(message.tool_calls):
                names[call.id] = call.name
                call_id, signature = _split_call_id(call.id)
                if signature is None and i == 0 and needs_signatures:
                    signature = _PLACEHOLDER_SIGNATURE
                parts.append(
                    types.Part(
                        function_call=types.FunctionCall(
                            # Ids we made up stay here; Gemini only knows its own.
                            id=None if call_id.startswith("call_") else call_id,
                            name=call.name,
                            args=dict(call.arguments),
                        ),
                        thought_signature=signature,
                    )
                )
            if parts:
                contents.append(types.Content(role="model", parts=parts))
        else:
            part = _function_response(message, names, model)
            previous = contents[-1] if contents else None
            if previous is not None and previous.parts and previous.parts[-1].function_response:
                previous.parts.append(part)  # results of parallel calls travel together
            else:
                contents.append(types.Content(role="user", parts=[part]))
    return contents


def _function_response(message: Message, names: Mapping[str, str], model: str) -> types.Part:
    name = message.name or names.get(message.tool_call_id or "")
    if not name:
        raise StepFailed(
            f"{model}: tool result {message.tool_call_id!r} has no tool name "
            "(Gemini matches results to calls by name)"
        )
    try:
        value: Any = json.loads(message.content)
    except ValueError:
        value = message.content
    call_id = _split_call_id(message.tool_call_id or "")[0]
    return types.Part(
        function_response=types.FunctionResponse(
            id=call_id if call_id and not call_id.startswith("call_") else None,
            name=name,
            response=value if isinstance(value, dict) else {"result": value},
        )
    )


# ------------------------------------------------------------------ responses


def _parts(response: types.GenerateContentResponse) -> list[types.Part]:
    if not response.candidates or response.candidates[0].content is None:
        return []
    return list(response.candidates[0].content.parts or [])


def _read_parts(parts: list[types.Part], turn: int, start: int) -> tuple[list[str], list[ToolCall]]:
    """Answer text and function calls; thought parts are reasoning, not answer."""
    text: list[str] = []
    calls: list[ToolCall] = []
    for part in parts:
        if part.function_call is not None:
            call = part.function_call
            base = call.id or f"call_{turn}_{start + len(calls)}"
            calls.append(
                ToolCall(
                    id=_call_id(base, part.thought_signature),
                    name=call.name or "",
                    arguments=dict(call.args or {}),
                )
            )
        elif part.text and not part.thought:
            text.append(part.text)
    return text, calls


def _candidate_finish(response: types.GenerateContentResponse) -> str | None:
    if not response.candidates or response.candidates[0].finish_reason is None:
        return None
    return str(response.candidates[0].finish_reason.value)


def _finish_reason(response: types.GenerateContentResponse, has_calls: bool) -> FinishReason:
    reason = _candidate_finish(response)
    if reason is None and response.prompt_feedback and response.prompt_feedback.block_reason:
        return "content_filter"  # the prompt itself was blocked: no candidates at all
    if reason == "MAX_TOKENS":
        return "length"
    if reason in _FILTERED:
        return "content_filter"
    return "tool_calls" if has_calls else "stop"


def _usage(meta: types.GenerateContentResponseUsageMetadata | None) -> Usage:
    if meta is None:
        return Usage()
    thoughts = meta.thoughts_token_count or 0
    return Usage(
        input_tokens=(meta.prompt_token_count or 0) + (meta.tool_use_prompt_token_count or 0),
        output_tokens=(meta.candidates_token_count or 0) + thoughts,
        cached_tokens=meta.cached_content_token_count or 0,
        reasoning_tokens=thoughts,
    )


def _call_id(base: str, signature: bytes | None) -> str:
    if not signature:
        return base
    return base + _SIGNATURE_MARK + base64.urlsafe_b64encode(signature).decode().rstrip("=")


def _split_call_id(call_id: str) -> tuple[str, bytes | None]:
    base, mark, encoded = call_id.partition(_SIGNATURE_MARK)
    if not mark:
        return call_id, None
    try:
        return base, base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
    except (binascii.Error, ValueError):
        return call_id, None


# ------------------------------------------------------------------ failures


def _translate(model: str, exc: Exception, timeout: float, key: str) -> StepError:
    """The gateway's error for a failed call, quoting Gemini's own message (never the key)."""
    if isinstance(exc, genai_errors.APIError):
        status = exc.code if isinstance(exc.code, int) else None
        upstream = exc.message or exc.status or json.dumps(exc.details)
        wait = retry_after(getattr(exc.response, "headers", None))
        if wait is None:
            wait = _retry_delay(exc.details)
        return failure(model, status, upstream.replace(key, "***"), wait)
    detail = (str(exc) or type(exc).__name__).replace(key, "***")
    if isinstance(exc, httpx.TimeoutException):
        return RetryableError(f"{model}: no answer within {timeout:g}s ({type(exc).__name__})")
    if isinstance(exc, httpx.UnsupportedProtocol):
        return StepFailed(f"{model}: {detail}")
    if isinstance(exc, httpx.HTTPError):
        return RetryableError(f"{model}: connection failed: {detail}")
    return RetryableError(f"{model}: unreadable answer: {detail}")


def _retry_delay(details: Any) -> float | None:
    """The ``RetryInfo.retryDelay`` (``"24s"``) Google puts in a 429's details."""
    error = details.get("error", details) if isinstance(details, dict) else None
    found = error.get("details") if isinstance(error, dict) else None
    for detail in found if isinstance(found, list) else []:
        delay = detail.get("retryDelay") if isinstance(detail, dict) else None
        if isinstance(delay, str) and re.fullmatch(r"\d+(\.\d+)?s", delay):
            return float(delay[:-1])
    return None
