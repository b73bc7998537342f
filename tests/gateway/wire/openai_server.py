"""A fake OpenAI server speaking the Chat Completions, Embeddings and Models wire protocol.

It answers what the official SDK sends, in OpenAI's exact shapes, so a provider that works against
it works against api.openai.com and the OpenAI-compatible servers (vLLM, llama.cpp, Groq, ...):

``POST /v1/chat/completions``
    JSON, or with ``"stream": true`` server-sent events: ``data: {chunk}`` lines of
    ``chat.completion.chunk`` objects (a first chunk with the role, text pieces, tool calls whose
    first piece has ``id``/``name`` and whose ``arguments`` arrive split over several chunks, one
    call after another with distinct ``index`` values, a chunk with ``finish_reason``), then, when
    ``stream_options.include_usage`` is set, a chunk with empty ``choices`` and the usage (every
    earlier chunk carries ``"usage": null``), then ``data: [DONE]``.
``POST /v1/embeddings``
    deterministic vectors (see :func:`embedding_for`), as float lists or, when
    ``encoding_format`` is ``base64`` (the SDK's default), little-endian float32 in base64.
``GET /v1/models``
    the models in :attr:`OpenAIFake.models`.

Errors use OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``. With an API key
configured, requests without ``Authorization: Bearer <key>`` get 401 (the message quotes the key
it was given, as some compatible servers do, so providers must keep keys out of their errors).
The fake also rejects the requests the real API rejects and a translation bug would produce: tool
results that answer no call, calls left without results, ``tool_choice`` without ``tools``,
``stream_options`` without ``stream``.

Replies come from :attr:`OpenAIFake.replies` (a queue of :class:`Reply`, one per completion);
when it is empty the answer echoes the last user message. Faults (error statuses, dropped
connections, slow answers, streams cut short) and the recorded requests are on
:attr:`OpenAIFake.server` (a :class:`WireServer`). Nothing sleeps, so it also serves as a fast
upstream for gateway benchmarks::

    with openai_server(api_key="sk-test") as fake:
        fake.reply("Paris.", prompt_tokens=20, cached_tokens=8)
        fake.reply(tool_calls=[("get_weather", {"city": "Paris"})])
        provider = OpenAIProvider(ProviderConfig(name="openai", kind="openai",
                                                 base_url=fake.base_url, api_key="sk-test"))
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import struct
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from tests.gateway.wire._harness import WireRequest, WireResponse, WireServer

_ERROR_TYPES = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "model_not_found"),
    408: ("timeout", None),
    409: ("invalid_request_error", "conflict"),
    422: ("invalid_request_error", None),
    429: ("requests", "rate_limit_exceeded"),
}


def openai_error(status: int, message: str, *, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error body for ``status``."""
    kind, code = _ERROR_TYPES.get(status, ("server_error", None) if status >= 500 else ("", None))
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def estimate_tokens(text: str) -> int:
    """About four characters a token, never zero for non-empty text."""
    return (len(text) + 3) // 4


def embedding_for(text: str, dimensions: int) -> list[float]:
    """The fake's vector for ``text``: a unit vector from its hash, rounded to float32 so the
    float and base64 encodings give exactly the same numbers."""
    digest = hashlib.shake_256(text.encode()).digest(dimensions * 2)
    raw = [
        int.from_bytes(digest[i * 2 : i * 2 + 2], "little") / 32767.5 - 1.0
        for i in range(dimensions)
    ]
    norm = math.sqrt(sum(v * v for v in raw)) or 1.0
    packed = struct.pack(f"<{dimensions}f", *(v / norm for v in raw))
    return list(struct.unpack(f"<{dimensions}f", packed))


@dataclass
class Reply:
    """One scripted completion. Token counts left ``None`` are estimated from the texts."""

    content: str = ""
    # (name, arguments) pairs, or (id, name, arguments) to choose the call id.
    tool_calls: list[tuple[Any, ...]] = field(default_factory=list)
    finish_reason: str | None = None  # default: "tool_calls" with calls, else "stop"
    refusal: str | None = None  # a structured-outputs refusal instead of content
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    usage: bool = True  # False: report no usage at all, as some compatible servers do
    # Streams only: after the text, send this error event mid-stream instead of finishing,
    # or (stream_cut) end the body cleanly with no finish chunk, usage or [DONE].
    stream_error: str | None = None
    stream_cut: bool = False


class OpenAIFake:
    """The fake's state: the reply queue, the models it lists, and its :class:`WireServer`."""

    def __init__(self, api_key: str | None = None) -> None:
        self.api_key = api_key
        self.replies: deque[Reply] = deque()
        self.models: list[str] = ["gpt-4o-mini", "gpt-4o", "text-embedding-3-small"]
        self.default_dimensions = 16  # real models have 1536 or more; small keeps tests fast
        self.reverse_embeddings = False  # answer embeddings out of order (``index`` still right)
        # Real OpenAI answers with a dated snapshot of the model asked for.
        self.model_suffix = "-2024-07-18"
        self.server = WireServer(self._handle, openai_error)
        self._ids = 0

    # ------------------------------------------------------------------ for tests

    def reply(self, content: str = "", **kwargs: Any) -> Reply:
        """Queue a reply for the next completion; see :class:`Reply` for the fields."""
        reply = Reply(content=content, **kwargs)
        self.replies.append(reply)
        return reply

    @property
    def base_url(self) -> str:
        """The ``base_url`` to configure a provider or SDK client with (ends in ``/v1``)."""
        return self.server.url + "/v1"

    @property
    def chat_bodies(self) -> list[Any]:
        """The JSON bodies of every chat completion request received, in order."""
        return [r.json() for r in self.server.requests if r.path == "/v1/chat/completions"]

    def __enter__(self) -> OpenAIFake:
        self.server.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.__exit__(*exc)

    # ------------------------------------------------------------------ HTTP

    async def _handle(self, request: WireRequest) -> WireResponse:
        if self.api_key is not None:
            given = request.headers.get("authorization", "")
            if not given.startswith("Bearer ") or given.removeprefix("Bearer ") == "":
                return _fail(
                    401,
                    "You didn't provide an API key. You need to provide your API key in an "
                    "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                )
            if given.removeprefix("Bearer ") != self.api_key:
                key = given.removeprefix("Bearer ")
                return _fail(401, f"Incorrect API key provided: {key}.")
        route = (request.method, request.path)
        if route == ("POST", "/v1/chat/completions"):
            return self._chat(request.json())
        if route == ("POST", "/v1/embeddings"):
            return self._embeddings(request.json())
        if route == ("GET", "/v1/models"):
            created = 1_700_000_000
            data = [
                {"id": m, "object": "model", "created": created, "owned_by": "openai"}
                for m in self.models
            ]
            return WireResponse(body={"object": "list", "data": data})
        return _fail(404, f"Invalid URL ({request.method} {request.path})")

    def _chat(self, body: Any) -> WireResponse:
        problem = _check_chat(body)
        if problem is not None:
            return _fail(400, problem[0], param=problem[1])
        reply = self.replies.popleft() if self.replies else _echo(body["messages"])
        self._ids += 1
        head = {
            "id": f"chatcmpl-fake{self._ids}",
            "created": int(time.time()),
            "model": body["model"] + self.model_suffix,
            "service_tier": "default",
            "system_fingerprint": "fp_fake",
        }
        calls = [_call(i, self._ids, c) for i, c in enumerate(reply.tool_calls)]
        finish = reply.finish_reason or ("tool_calls" if calls else "stop")
        usage = _usage(body, reply, calls) if reply.usage else None
        if body.get("stream"):
            with_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return WireResponse(
                headers={"content-type": "text/event-stream; charset=utf-8"},
                stream=_chunks(
                    head, reply, calls, finish, usage if with_usage else None, with_usage
                ),
            )
        message: dict[str, Any] = {
            "role": "assistant",
            "content": None if calls and not reply.content else reply.content,
            "refusal": reply.refusal,
            "annotations": [],
        }
        if reply.refusal is not None:
            message["content"] = None
        if calls:
            message["tool_calls"] = calls
        return WireResponse(
            body={
                **head,
                "object": "chat.completion",
                "choices": [
                    {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
                ],
                "usage": usage,
            }
        )

    def _embeddings(self, body: Any) -> WireResponse:
        if not isinstance(body, Mapping) or "model" not in body or "input" not in body:
            return _fail(400, "you must provide a model and an input parameter")
        inputs = body["input"]
        texts = [inputs] if isinstance(inputs, str) else list(inputs)
        if not texts or any(not isinstance(t, str) or not t for t in texts):
            return _fail(
                400, "'input' must be a non-empty string or array of strings", param="input"
            )
        dimensions = body.get("dimensions") or self.default_dimensions
        encoding = body.get("encoding_format", "float")
        data = []
        for index, text in enumerate(texts):
            vector = embedding_for(text, dimensions)
            encoded: Any = vector
            if encoding == "base64":
                encoded = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": encoded})
        if self.reverse_embeddings:
            data.reverse()
        tokens = sum(estimate_tokens(t) for t in texts)
        return WireResponse(
            body={
                "object": "list",
                "data": data,
                "model": body["model"],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )


def openai_server(api_key: str | None = None) -> OpenAIFake:
    """A fake OpenAI server (not started: use it as a context manager)."""
    return OpenAIFake(api_key)


# ---------------------------------------------------------------------- helpers


def _fail(status: int, message: str, *, param: str | None = None) -> WireResponse:
    return WireResponse(status=status, body=openai_error(status, message, param=param))


def _text(content: Any) -> str:
    """A message's text: a string, or the text parts of a content array."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, Mapping))
    return ""


def _echo(messages: list[Any]) -> Reply:
    last = next((m for m in reversed(messages) if m.get("role") == "user"), None)
    return Reply(content=_text(last.get("content")) if last else "")


def _check_chat(body: Any) -> tuple[str, str | None] | None:
    """The 400 the real API would answer for this body, as (message, param), or None."""
    if not isinstance(body, Mapping) or not body.get("model"):
        return "you must provide a model parameter", None
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "[] is too short - 'messages'", "messages"
    if body.get("tool_choice") is not None and not body.get("tools"):
        return (
            "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are "
            "specified.",
            "tool_choice",
        )
    if body.get("stream_options") is not None and not body.get("stream"):
        return "The 'stream_options' parameter is only allowed when 'stream' is enabled.", None
    pending: list[str] = []  # call ids of the last assistant turn still waiting for results
    for i, message in enumerate(messages):
        role = message.get("role")
        if role not in ("system", "developer", "user", "assistant", "tool"):
            return (
                f"Invalid value: '{role}'. Supported values are: 'system', ...",
                f"messages[{i}].role",
            )
        if role == "tool":
            call_id = message.get("tool_call_id")
            if call_id not in pending:
                return (
                    "Invalid parameter: messages with role 'tool' must be a response to a "
                    "preceeding message with 'tool_calls'.",
                    f"messages.[{i}].role",
                )
            pending.remove(call_id)
            continue
        if pending:
            return (
                "An assistant message with 'tool_calls' must be followed by tool messages "
                "responding to each 'tool_call_id'. The following tool_call_ids did not have "
                f"response messages: {', '.join(pending)}",
                "messages",
            )
        if role == "assistant":
            calls = message.get("tool_calls") or []
            pending = [c["id"] for c in calls]
            for c in calls:
                function = c.get("function") or {}
                if c.get("type") != "function" or not isinstance(function.get("arguments"), str):
                    return "Missing required parameter: 'tool_calls[0].function'.", "messages"
            if message.get("content") is None and not calls:
                return "Missing required parameter: 'content'.", f"messages[{i}].content"
    return None


def _call(index: int, completion: int, spec: tuple[Any, ...]) -> dict[str, Any]:
    if len(spec) == 3:
        call_id, name, arguments = spec
    else:
        (name, arguments), call_id = spec, f"call_fake{completion}_{index}"
    text = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": text}}


def _usage(body: Mapping[str, Any], reply: Reply, calls: list[dict[str, Any]]) -> dict[str, Any]:
    prompt = reply.prompt_tokens
    if prompt is None:
        prompt = sum(estimate_tokens(_text(m.get("content"))) for m in body["messages"])
    completion = reply.completion_tokens
    if completion is None:
        produced = reply.content + (reply.refusal or "")
        produced += "".join(c["function"]["arguments"] for c in calls)
        completion = estimate_tokens(produced) + reply.reasoning_tokens
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": reply.cached_tokens, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": reply.reasoning_tokens,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _pieces(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def _chunks(
    head: dict[str, Any],
    reply: Reply,
    calls: list[dict[str, Any]],
    finish: str,
    usage: dict[str, Any] | None,
    with_usage: bool,
) -> AsyncIterator[bytes]:
    """The SSE body of a streamed completion, one event per network chunk."""
    base = {**head, "object": "chat.completion.chunk"}

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        data = {
            **base,
            "choices": [
                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            ],
        }
        if with_usage:
            data["usage"] = None
        return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"

    async def generate() -> AsyncIterator[bytes]:
        yield chunk({"role": "assistant", "content": "", "refusal": None})
        for piece in _pieces(reply.content, 12):
            yield chunk({"content": piece})
        if reply.refusal is not None:
            for piece in _pieces(reply.refusal, 12):
                yield chunk({"refusal": piece})
        if reply.stream_error is not None:
            error = openai_error(500, reply.stream_error)
            yield b"data: " + json.dumps(error).encode() + b"\n\n"
            return
        if reply.stream_cut:
            return
        for index, call in enumerate(calls):
            function = call["function"]
            first = {
                "index": index,
                "id": call["id"],
                "type": "function",
                "function": {"name": function["name"], "arguments": ""},
            }
            yield chunk({"tool_calls": [first]})
            # Arguments arrive in several small pieces, as the real API streams them.
            for piece in _pieces(function["arguments"], 7):
                yield chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
        yield chunk({}, finish)
        if usage is not None:
            data = {**base, "choices": [], "usage": usage}
            yield b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"
        yield b"data: [DONE]\n\n"

    return generate()
