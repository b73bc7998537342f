"""The OpenAI-compatible gateway endpoints: ``/v1/chat/completions``, ``/v1/embeddings`` and
``/v1/models`` (DESIGN decision 5).

Any program that speaks the OpenAI API uses AgentMill's gateway by pointing its SDK at
``http://host:port/v1`` with an AgentMill API key: the call goes through the same gateway as
the engine's (budgets, limits, failover, accounting), on behalf of the key's workspace. Model
names are AgentMill's ``provider/model``. Errors come in OpenAI's shape
(``api/openai_errors.py``).

The routes stay out of AgentMill's OpenAPI document: their contract is OpenAI's API reference
and their clients are OpenAI SDKs, not ``agentmill.client``.
"""

from __future__ import annotations

import base64
import json
import secrets
import struct
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import structlog
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response, StreamingResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.types import Receive, Scope, Send

from agentmill.api import sse
from agentmill.api.deps import DbDep, SettingsDep, authenticate
from agentmill.api.errors import unexpected_error
from agentmill.api.openai_errors import InvalidParam, error_for, validation_error
from agentmill.api.openai_schemas import (
    ChatCompletionRequest,
    EmbeddingRequest,
    chat_request,
    embed_request,
)
from agentmill.api.security import api_key_prefix
from agentmill.api.sse import sse_message
from agentmill.domain.permissions import Permission, allows
from agentmill.errors import AgentMillError, NotAuthenticated, PermissionDenied
from agentmill.gateway import CallContext, ChatDelta, ChatResponse, Gateway, Usage


class _Route(APIRoute):
    """Answers a bug with the 500 itself instead of letting the exception escape the app:
    uvicorn drops the connection of a request whose exception escaped, and an SDK reusing that
    pooled connection for its next request would fail with a connection error."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                return await handle(request)
            except (AgentMillError, HTTPException, RequestValidationError):
                raise  # answered by the app's handlers (api/errors.py)
            except Exception:
                return unexpected_error(request)

        return guarded


router = APIRouter(prefix="/v1", tags=["openai"], include_in_schema=False, route_class=_Route)
log = structlog.get_logger("agentmill.api")

_STARTED = int(time.time())  # "created" of every model: when this server began serving it
_Body = TypeVar("_Body", bound=BaseModel)


async def _caller(request: Request, db: DbDep, settings: SettingsDep) -> CallContext:
    """The API key's workspace, key and creator, once the key may call models."""
    scheme, _, secret = request.headers.get("authorization", "").partition(" ")
    secret = secret.strip()
    if scheme.lower() != "bearer" or not secret:
        raise NotAuthenticated("missing API key: send 'Authorization: Bearer <AgentMill API key>'")
    if api_key_prefix(secret) is None:  # a login token, or not ours at all
        raise NotAuthenticated(
            "expected an AgentMill API key (am_...): the /v1 endpoints take no login tokens "
            "or other keys; create one with POST /api/v1/api-keys"
        )
    principal = await authenticate(db, settings, secret)
    role = principal.key_role
    if role is None or not allows(role, Permission.MODEL_CALL):
        shown = role.value if role else "none"
        raise PermissionDenied(
            f"API key role {shown!r} may not {Permission.MODEL_CALL.value!r}; "
            "use a key with role member or above"
        )
    return CallContext(
        workspace_id=principal.key_workspace_id,
        api_key_id=principal.key_id,
        user_id=principal.user_id,
    )


CallerDep = Annotated[CallContext, Depends(_caller)]


def _gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


def _parse(model: type[_Body], body: bytes) -> _Body:
    """The body read straight from its JSON bytes (no FastAPI body parameter: one parse, and
    the errors come out in OpenAI's shape)."""
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        error = validation_error(exc.errors(include_url=False))
        raise InvalidParam(error.message, param=error.param, code=error.code) from None


def _json(body: dict[str, Any]) -> Response:
    return Response(
        json.dumps(body, separators=(",", ":"), ensure_ascii=False), media_type="application/json"
    )


@router.post("/chat/completions")
async def chat_completions(request: Request, caller: CallerDep) -> Response:
    """Create a chat completion, streamed as server-sent events when ``stream`` is true."""
    body = _parse(ChatCompletionRequest, await request.body())
    chat = chat_request(body, caller)
    gateway = _gateway(request)
    completion = _Completion(id=f"chatcmpl-{secrets.token_hex(12)}", created=int(time.time()))
    if not body.stream:
        return _json(completion.body(await gateway.chat(chat)))
    deltas = gateway.stream(chat)
    # The first piece is awaited here, so a failure before any output (an unknown model, a
    # budget, an upstream error after failover) is an ordinary HTTP error the SDK raises.
    first = await anext(deltas, None)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    events = _events(completion, chat.model, first, deltas, include_usage=include_usage)
    return _EventStream(events)


@router.post("/embeddings")
async def embeddings(request: Request, caller: CallerDep) -> Response:
    """Embed one text or a list of texts."""
    body = _parse(EmbeddingRequest, await request.body())
    result = await _gateway(request).embed(embed_request(body, caller))
    base64_format = body.encoding_format == "base64"
    return _json(
        {
            "object": "list",
            "data": [
                {
                    "object": "embedding",
                    "index": i,
                    "embedding": _base64(vector) if base64_format else list(vector),
                }
                for i, vector in enumerate(result.vectors)
            ],
            "model": result.model,
            "usage": {
                "prompt_tokens": result.usage.input_tokens,
                "total_tokens": result.usage.total_tokens,
            },
        }
    )


@router.get("/models")
async def models(request: Request, _: CallerDep) -> Response:
    """The models configured on this gateway, by their ``provider/model`` names."""
    names = _gateway(request).model_names()
    data = [
        {"id": name, "object": "model", "created": _STARTED, "owned_by": name.split("/", 1)[0]}
        for name in names
    ]
    return _json({"object": "list", "data": data})


def _base64(vector: tuple[float, ...]) -> str:
    """As OpenAI encodes it: little-endian float32, base64."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


@dataclass(frozen=True, kw_only=True)
class _Completion:
    """One completion's identity, the same in every chunk of its stream."""

    id: str
    created: int

    def body(self, response: ChatResponse) -> dict[str, Any]:
        message: dict[str, Any] = {
            "role": "assistant",
            # OpenAI sends null content with tool calls and no text.
            "content": response.content if response.content or not response.tool_calls else None,
            "refusal": None,
        }
        if response.tool_calls:
            message["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments_json},
                }
                for call in response.tool_calls
            ]
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": response.model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": response.finish_reason,
                }
            ],
            "usage": _usage(response.usage),
        }

    def chunk(
        self,
        model: str,
        delta: dict[str, Any] | None,
        *,
        finish_reason: str | None = None,
        usage: Usage | None = None,
        include_usage: bool = False,
    ) -> bytes:
        """One ``data:`` event; ``delta`` None is the usage chunk (no choices)."""
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": model,
            "choices": []
            if delta is None
            else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }
        if include_usage:  # as OpenAI: null on every chunk but the last, which has no choices
            chunk["usage"] = _usage(usage) if usage is not None else None
        return _event(chunk)


def _usage(usage: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {
            "cached_tokens": usage.cached_tokens,
            "cache_write_tokens": usage.cache_write_tokens,
        },
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }


def _event(data: dict[str, Any]) -> bytes:
    return sse_message(json.dumps(data, separators=(",", ":"), ensure_ascii=False))


def _delta(delta: ChatDelta) -> dict[str, Any] | None:
    """OpenAI's ``delta`` for one piece of an answer, or None if it carries neither text nor
    tool calls."""
    out: dict[str, Any] = {}
    if delta.text:
        out["content"] = delta.text
    if delta.tool_calls:
        calls: list[dict[str, Any]] = []
        for piece in delta.tool_calls:
            call: dict[str, Any] = {"index": piece.index}
            if piece.id is not None:  # the first piece of a call names it
                call["id"] = piece.id
                call["type"] = "function"
            function: dict[str, Any] = {} if piece.name is None else {"name": piece.name}
            function["arguments"] = piece.arguments
            call["function"] = function
            calls.append(call)
        out["tool_calls"] = calls
    return out or None


async def _events(
    completion: _Completion,
    model: str,
    first: ChatDelta | None,
    deltas: AsyncIterator[ChatDelta],
    *,
    include_usage: bool,
) -> AsyncGenerator[bytes]:
    """The stream's ``data:`` events: the role, the pieces, the finish reason, the usage when
    asked for, then ``[DONE]``. A failure after the first event can no longer change the
    status, so it is sent as an ``error`` event (OpenAI's SDKs raise it) and the stream ends."""

    def chunk(delta: dict[str, Any] | None, **kwargs: Any) -> bytes:
        return completion.chunk(model, delta, include_usage=include_usage, **kwargs)

    finish_reason: str | None = None
    usage = Usage()
    try:
        yield chunk({"role": "assistant", "content": ""})
        delta = first
        while delta is not None:
            piece = _delta(delta)
            if piece is not None:
                yield chunk(piece)
            if delta.usage is not None:
                usage = delta.usage
            finish_reason = delta.finish_reason or finish_reason
            delta = await anext(deltas, None)
        yield chunk({}, finish_reason=finish_reason or "stop")
        if include_usage:
            yield chunk(None, usage=usage)
        yield sse_message("[DONE]")
    except Exception as exc:
        if not isinstance(exc, AgentMillError):
            log.exception("chat completion stream failed", model=model)
        yield _event({"error": error_for(exc).body()["error"]})
    finally:
        # Stops the upstream call at once when the client has gone (or anything ended us).
        if isinstance(deltas, AsyncGenerator):
            await deltas.aclose()


class _EventStream(StreamingResponse):
    """Server-sent events whose generator is closed as soon as the response ends.

    Starlette stops iterating when the client disconnects but leaves a suspended generator to
    the garbage collector; closing it here ends the upstream call (and settles its budget
    reservation) right away."""

    media_type = sse.MEDIA_TYPE

    def __init__(self, events: AsyncGenerator[bytes]) -> None:
        super().__init__(events, headers=sse.HEADERS)
        self._events = events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._events.aclose()
