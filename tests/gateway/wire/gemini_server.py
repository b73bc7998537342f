"""A local Gemini API (Developer API, ``v1beta``) speaking the wire protocol ``google-genai`` uses.

``POST /{version}/models/{model}:generateContent`` answers one ``GenerateContentResponse``;
``:streamGenerateContent?alt=sse`` answers server-sent events, one ``GenerateContentResponse``
per event (text in pieces, each function call whole in its own event, ``usageMetadata`` as a
running total on every event, ``finishReason`` on the last); ``:batchEmbedContents`` and
``:embedContent`` answer deterministic vectors. The key must come in ``x-goog-api-key`` (or
``?key=``). Errors have Google's shape ``{"error": {"code", "message", "status", "details"}}``.

Like the real service it refuses requests it would refuse: unknown fields, roles other than
``user``/``model``, empty parts, a ``functionResponse`` without a name or with a response that
is not an object, and, for ``gemini-3*`` models, function calls in history whose first part lost
the thought signature the service issued (``skip_thought_signature_validator`` is accepted, as
Google documents). Proto JSON accepts field names in lowerCamelCase and snake_case, so does this
fake; :meth:`FakeGemini.bodies` gives the bodies with every field name in lowerCamelCase.

Tests queue replies (:meth:`FakeGemini.reply`, :meth:`FakeGemini.error`); without one, a chat
answers ``echo: <the last user text>``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from tests.gateway.wire._harness import WireRequest, WireResponse, WireServer, sse

_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_PATH = re.compile(
    r"^/(v1|v1beta|v1alpha)/models/([^/:]+):"
    r"(generateContent|streamGenerateContent|embedContent|batchEmbedContents)$"
)
_REQUEST_FIELDS = {
    "contents",
    "systemInstruction",
    "tools",
    "toolConfig",
    "generationConfig",
    "safetySettings",
    "cachedContent",
    "serviceTier",
    "store",
}
_GENERATION_FIELDS = {
    "stopSequences",
    "responseMimeType",
    "responseSchema",
    "responseJsonSchema",
    "responseModalities",
    "candidateCount",
    "maxOutputTokens",
    "temperature",
    "topP",
    "topK",
    "seed",
    "presencePenalty",
    "frequencyPenalty",
    "responseLogprobs",
    "logprobs",
    "enableEnhancedCivicAnswers",
    "speechConfig",
    "thinkingConfig",
    "imageConfig",
    "mediaResolution",
}
# Values that are the caller's own JSON: their keys are data, never renamed.
_OPAQUE = {"args", "response", "parametersJsonSchema", "responseJsonSchema", "responseSchema"}
PLACEHOLDER_SIGNATURE = "skip_thought_signature_validator"


def error_body(status: int, message: str, details: list[Any] | None = None) -> dict[str, Any]:
    """Google's error shape."""
    error: dict[str, Any] = {
        "code": status,
        "message": message,
        "status": _STATUS.get(status, "UNKNOWN"),
    }
    if details:
        error["details"] = details
    return {"error": error}


@dataclass
class Reply:
    """One model answer. ``calls`` are ``{"name", "args"}`` (optionally ``"id"``)."""

    text: str = ""
    calls: list[dict[str, Any]] = field(default_factory=list)
    thoughts: str = ""
    finish_reason: str = "STOP"  # "" sends none, as a stream cut short cleanly would
    usage: dict[str, int] | None = None  # usageMetadata as sent; computed when None
    block_reason: str | None = None  # the prompt is blocked: no candidates, promptFeedback


@dataclass
class ErrorReply:
    status: int
    message: str
    details: list[Any] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    mid_stream: bool = False  # streams: send one piece of text, then the error as an event


class FakeGemini:
    """The fake service; ``with gemini_server(key) as server: server.url``."""

    def __init__(self, api_key: str) -> None:
        self.api_key = api_key
        self.replies: deque[Reply | ErrorReply] = deque()
        self.signatures: set[str] = {PLACEHOLDER_SIGNATURE}
        self.wire = WireServer(self._handle, error_body)

    # ------------------------------------------------------------------ test controls

    @property
    def url(self) -> str:
        return self.wire.url

    @property
    def requests(self) -> list[WireRequest]:
        return self.wire.requests

    def reply(self, text: str = "", **kwargs: Any) -> None:
        """Queue the answer to the next chat request (see :class:`Reply`)."""
        self.replies.append(Reply(text=text, **kwargs))

    def error(self, status: int, message: str, **kwargs: Any) -> None:
        """Queue an error answer to the next request (see :class:`ErrorReply`)."""
        self.replies.append(ErrorReply(status=status, message=message, **kwargs))

    def bodies(self) -> list[dict[str, Any]]:
        """Every request body so far, field names in lowerCamelCase."""
        return [camel(r.json()) for r in self.requests]

    # ------------------------------------------------------------------ the service

    async def _handle(self, request: WireRequest) -> WireResponse:
        key = request.headers.get("x-goog-api-key") or request.query.get("key")
        if not key:
            return _error(
                403,
                "Method doesn't allow unregistered callers (callers without established "
                "identity). Please use API Key or other form of API consumer identity to call "
                "this API.",
            )
        if key != self.api_key:
            return _error(400, "API key not valid. Please pass a valid API key.")
        match = _PATH.match(request.path)
        if request.method != "POST" or match is None:
            return _error(404, f"Method not found: {request.method} {request.path}")
        _, model, method = match.groups()
        try:
            body = camel(request.json())
        except ValueError:
            return _error(400, "Invalid JSON payload received.")
        queued = self.replies.popleft() if self.replies else None
        if isinstance(queued, ErrorReply) and not (queued.mid_stream and "stream" in method):
            return _error(queued.status, queued.message, queued.details, queued.headers)
        if method in ("embedContent", "batchEmbedContents"):
            return _embed(model, method, body)
        problem = self._invalid(model, body)
        if problem:
            return _error(400, problem)
        reply = queued if isinstance(queued, Reply) else Reply(text=_echo(body))
        chunks = self._chunks(model, body, reply)
        if method == "generateContent":
            return WireResponse(body=_merge(chunks))
        if isinstance(queued, ErrorReply):  # a failure after the stream started
            events: list[Any] = [chunks[0], error_body(queued.status, queued.message)]
        else:
            events = chunks
        if request.query.get("alt") != "sse":
            return WireResponse(body=events)  # without alt=sse: one JSON array
        return WireResponse(
            headers={"content-type": "text/event-stream"},
            stream=sse([(None, event) for event in events]),
        )

    def _invalid(self, model: str, body: dict[str, Any]) -> str | None:
        unknown = set(body) - _REQUEST_FIELDS
        unknown |= {f"generation_config.{k}" for k in body.get("generationConfig", {})} - {
            f"generation_config.{k}" for k in _GENERATION_FIELDS
        }
        if unknown:
            return f'Invalid JSON payload received. Unknown name "{sorted(unknown)[0]}"'
        generation = re.match(r"gemini-(\d+)", model)
        needs_signatures = bool(generation and int(generation.group(1)) >= 3)
        for i, content in enumerate(body.get("contents") or []):
            if content.get("role") not in ("user", "model"):
                return "Please use a valid role: user, model."
            parts = content.get("parts") or []
            if not parts:
                return f"contents[{i}].parts must not be empty."
            for part in parts:
                response = part.get("functionResponse")
                if response is not None and not response.get("name"):
                    return f"contents[{i}]: functionResponse.name is required."
                if response is not None and not isinstance(response.get("response"), dict):
                    return f"contents[{i}]: functionResponse.response must be an object."
            calls = [p for p in parts if "functionCall" in p]
            if calls and needs_signatures:
                signature = calls[0].get("thoughtSignature")
                if signature is None:
                    name = calls[0]["functionCall"].get("name")
                    return (
                        f"Function call `{name}` in the {i}. content block is missing a "
                        "`thought_signature`."
                    )
                if signature not in self.signatures:
                    return f"Corrupted thought signature in the {i}. content block."
        return None

    def _chunks(self, model: str, body: dict[str, Any], reply: Reply) -> list[dict[str, Any]]:
        """The answer as stream events; a non-streamed answer is their merge."""
        prompt = _words(json.dumps([body.get("contents"), body.get("systemInstruction")]))
        if reply.block_reason:
            return [
                {
                    "promptFeedback": {"blockReason": reply.block_reason},
                    "usageMetadata": {"promptTokenCount": prompt, "totalTokenCount": prompt},
                    "modelVersion": model,
                }
            ]
        pieces: list[dict[str, Any]] = []
        if reply.thoughts:
            pieces.append({"text": reply.thoughts, "thought": True})
        words = reply.text.split(" ") if reply.text else []
        pieces += [
            {"text": " ".join(words[i : i + 2]) + (" " if i + 2 < len(words) else "")}
            for i in range(0, len(words), 2)
        ]
        for n, call in enumerate(reply.calls):
            part: dict[str, Any] = {"functionCall": dict(call)}
            if n == 0 and re.match(r"gemini-[3-9]", model):
                signature = base64.b64encode(f"sig/{len(self.signatures)}".encode()).decode()
                self.signatures.add(signature)
                part["thoughtSignature"] = signature
            pieces.append(part)
        if not pieces:
            pieces.append({"text": ""})
        chunks = []
        answered = thought = 0
        for i, piece in enumerate(pieces):
            if piece.get("thought"):
                thought += _words(piece["text"])
            else:
                answered += _words(
                    json.dumps(piece["functionCall"]) if "functionCall" in piece else piece["text"]
                )
            usage = (
                reply.usage
                if reply.usage is not None and i == len(pieces) - 1
                else {
                    "promptTokenCount": prompt,
                    "candidatesTokenCount": answered,
                    "totalTokenCount": prompt + answered + thought,
                    **({"thoughtsTokenCount": thought} if thought else {}),
                }
            )
            candidate: dict[str, Any] = {
                "content": {"role": "model", "parts": [piece]},
                "index": 0,
            }
            if i == len(pieces) - 1 and reply.finish_reason:
                candidate["finishReason"] = reply.finish_reason
            chunks.append(
                {
                    "candidates": [candidate],
                    "usageMetadata": usage,
                    "modelVersion": model,
                    "responseId": f"resp-{len(self.requests)}",
                }
            )
        return chunks


@contextmanager
def gemini_server(api_key: str = "test-gemini-key") -> Iterator[FakeGemini]:
    """A running fake Gemini API that accepts ``api_key``."""
    fake = FakeGemini(api_key)
    with fake.wire:
        yield fake


def camel(value: Any, key: str = "") -> Any:
    """Field names in lowerCamelCase, as proto JSON parsers read snake_case too."""
    if key in _OPAQUE:
        return value
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            name = re.sub(r"_([a-z0-9])", lambda m: m.group(1).upper(), k)
            out[name] = camel(v, name)
        return out
    if isinstance(value, list):
        return [camel(v, key) for v in value]
    return value


def _merge(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """The non-streamed answer: the events' parts joined, the last event's metadata."""
    last = dict(chunks[-1])
    if "candidates" not in last:
        return last
    parts: list[dict[str, Any]] = []
    for chunk in chunks:
        for part in chunk["candidates"][0]["content"]["parts"]:
            if (
                "text" in part
                and parts
                and "text" in parts[-1]
                and bool(part.get("thought")) == bool(parts[-1].get("thought"))
            ):
                parts[-1] = {**parts[-1], "text": parts[-1]["text"] + part["text"]}
            else:
                parts.append(part)
    candidate = dict(last["candidates"][0])
    candidate["content"] = {"role": "model", "parts": parts}
    last["candidates"] = [candidate]
    return last


def _echo(body: dict[str, Any]) -> str:
    for content in reversed(body.get("contents") or []):
        if content.get("role") != "user":
            continue
        texts = [p["text"] for p in content.get("parts", []) if "text" in p]
        results = [
            p["functionResponse"] for p in content.get("parts", []) if "functionResponse" in p
        ]
        return "echo: " + (" ".join(texts) if texts else json.dumps(results))
    return "echo:"


def _embed(model: str, method: str, body: dict[str, Any]) -> WireResponse:
    requests = body.get("requests", []) if method == "batchEmbedContents" else [body]
    vectors = []
    for item in requests:
        if method == "batchEmbedContents" and item.get("model") != f"models/{model}":
            return _error(400, f"requests[].model must be models/{model}, not {item.get('model')}")
        text = " ".join(p.get("text", "") for p in item.get("content", {}).get("parts", []))
        vectors.append({"values": vector(text, int(item.get("outputDimensionality") or 8))})
    if method == "embedContent":
        return WireResponse(body={"embedding": vectors[0]})
    return WireResponse(body={"embeddings": vectors})


def vector(text: str, dimensions: int) -> list[float]:
    """The fake's embedding of ``text``: deterministic, a different one for each text."""
    digest = hashlib.shake_256(text.encode()).digest(dimensions)
    return [round(b / 255, 4) for b in digest]


def _words(text: str) -> int:
    return len(text.split())


def _error(
    status: int,
    message: str,
    details: list[Any] | None = None,
    headers: dict[str, str] | None = None,
) -> WireResponse:
    return WireResponse(
        status=status, body=error_body(status, message, details), headers=headers or {}
    )
