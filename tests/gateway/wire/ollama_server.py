"""A local Ollama server speaking the wire protocol the ``ollama`` SDK uses.

``POST /api/chat`` answers one JSON object, or, unless the body says ``"stream": false`` (the
server streams by default), newline-delimited JSON: text in pieces, each tool call whole in its
own line, then a last line with ``"done": true``, ``done_reason`` and the token counts.
``POST /api/embed`` answers deterministic vectors; ``GET /api/tags`` lists the models.
Errors are ``{"error": "..."}``; an unknown model is a 404 as on a server that never pulled it.

Tests queue replies (:meth:`FakeOllama.reply`, :meth:`FakeOllama.error`); without one, a chat
answers ``echo: <the last message's content>``.
"""

from __future__ import annotations

import hashlib
import json
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from tests.gateway.wire._harness import WireRequest, WireResponse, WireServer, ndjson

MODELS = ("llama3.2:latest", "qwen3:8b", "nomic-embed-text:latest")
_CREATED = "2026-01-02T03:04:05.678901Z"
_ROLES = {"system", "user", "assistant", "tool"}


def error_body(status: int, message: str) -> dict[str, Any]:
    """Ollama's error shape."""
    return {"error": message}


@dataclass
class Reply:
    """One model answer. ``calls`` are ``{"name", "arguments"}`` with arguments as objects."""

    text: str = ""
    calls: list[dict[str, Any]] = field(default_factory=list)
    thinking: str = ""
    done_reason: str = "stop"
    prompt_eval_count: int | None = None  # computed when None
    eval_count: int | None = None
    unfinished: bool = False  # streams: end without the "done" line


@dataclass
class ErrorReply:
    status: int
    message: str
    headers: dict[str, str] = field(default_factory=dict)
    mid_stream: bool = False  # streams: send one piece of text, then the error as a line


class FakeOllama:
    """The fake server; ``with ollama_server() as server: server.url``."""

    def __init__(self, models: tuple[str, ...] = MODELS) -> None:
        self.models = models
        self.replies: deque[Reply | ErrorReply] = deque()
        self.wire = WireServer(self._handle, error_body)

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

    def bodies(self) -> list[Any]:
        return [r.json() for r in self.requests]

    # ------------------------------------------------------------------ the server

    async def _handle(self, request: WireRequest) -> WireResponse:
        route = (request.method, request.path)
        if route == ("GET", "/api/tags"):
            return WireResponse(body={"models": [_listing(name) for name in self.models]})
        if route not in (("POST", "/api/chat"), ("POST", "/api/embed")):
            return WireResponse(status=404, body="404 page not found")
        try:
            body = request.json()
        except ValueError as exc:
            return _error(400, f"invalid character in JSON: {exc}")
        model = str(body.get("model") or "")
        if not model:
            return _error(400, "model is required")
        if (model if ":" in model else f"{model}:latest") not in self.models:
            return _error(404, f'model "{model}" not found, try pulling it first')
        queued = self.replies.popleft() if self.replies else None
        streaming = request.path == "/api/chat" and body.get("stream", True)
        if isinstance(queued, ErrorReply) and not (queued.mid_stream and streaming):
            return _error(queued.status, queued.message, queued.headers)
        if request.path == "/api/embed":
            return _embed(model, body)
        problem = _invalid(body)
        if problem:
            return _error(400, problem)
        reply = queued if isinstance(queued, Reply) else Reply(text=_echo(body))
        lines = _lines(model, body, reply)
        if not streaming:
            return WireResponse(body=_merge(lines))
        if isinstance(queued, ErrorReply):
            lines = [lines[0], {"error": queued.message}]
        elif reply.unfinished:
            lines = lines[:-1]
        return WireResponse(headers={"content-type": "application/x-ndjson"}, stream=ndjson(lines))


@contextmanager
def ollama_server(models: tuple[str, ...] = MODELS) -> Iterator[FakeOllama]:
    """A running fake Ollama server that has pulled ``models``."""
    fake = FakeOllama(models)
    with fake.wire:
        yield fake


def _invalid(body: dict[str, Any]) -> str | None:
    for message in body.get("messages") or []:
        if message.get("role") not in _ROLES:
            return f"invalid role {message.get('role')!r}"
        for call in message.get("tool_calls") or []:
            if not isinstance(call.get("function", {}).get("arguments"), dict):
                return "json: cannot unmarshal string into Go struct field of type api.ToolCallFunctionArguments"
    fmt = body.get("format")
    if fmt is not None and fmt not in ("", "json") and not isinstance(fmt, dict):
        return f"invalid format: {fmt!r}"
    return None


def _lines(model: str, body: dict[str, Any], reply: Reply) -> list[dict[str, Any]]:
    """The answer as stream lines; a non-streamed answer is their merge."""
    head = {"model": model, "created_at": _CREATED}
    messages: list[dict[str, Any]] = []
    if reply.thinking:
        messages.append({"role": "assistant", "content": "", "thinking": reply.thinking})
    words = reply.text.split(" ") if reply.text else []
    messages += [
        {
            "role": "assistant",
            "content": " ".join(words[i : i + 2]) + (" " if i + 2 < len(words) else ""),
        }
        for i in range(0, len(words), 2)
    ]
    messages += [
        {"role": "assistant", "content": "", "tool_calls": [{"function": call}]}
        for call in reply.calls
    ]
    prompt = sum(_words(m.get("content", "")) for m in body.get("messages") or [])
    produced = (
        _words(reply.text)
        + _words(reply.thinking)
        + _words(json.dumps(reply.calls) if reply.calls else "")
    )
    last = {
        **head,
        "message": {"role": "assistant", "content": ""},
        "done": True,
        "done_reason": reply.done_reason,
        "total_duration": 5_191_566_416,
        "load_duration": 2_154_458,
        "prompt_eval_count": reply.prompt_eval_count
        if reply.prompt_eval_count is not None
        else prompt,
        "prompt_eval_duration": 383_809_000,
        "eval_count": reply.eval_count if reply.eval_count is not None else produced,
        "eval_duration": 4_799_921_000,
    }
    return [{**head, "message": m, "done": False} for m in messages] + [last]


def _merge(lines: list[dict[str, Any]]) -> dict[str, Any]:
    merged = dict(lines[-1])
    message: dict[str, Any] = {"role": "assistant", "content": ""}
    for line in lines:
        piece = line["message"]
        message["content"] += piece.get("content", "")
        if piece.get("thinking"):
            message["thinking"] = message.get("thinking", "") + piece["thinking"]
        if piece.get("tool_calls"):
            message.setdefault("tool_calls", []).extend(piece["tool_calls"])
    merged["message"] = message
    return merged


def _echo(body: dict[str, Any]) -> str:
    messages = body.get("messages") or []
    return "echo: " + (messages[-1].get("content", "") if messages else "")


def _embed(model: str, body: dict[str, Any]) -> WireResponse:
    inputs = body.get("input", [])
    texts = [inputs] if isinstance(inputs, str) else list(inputs)
    dimensions = int(body.get("dimensions") or 8)
    return WireResponse(
        body={
            "model": model,
            "embeddings": [vector(text, dimensions) for text in texts],
            "total_duration": 14_143_917,
            "load_duration": 1_019_500,
            "prompt_eval_count": sum(_words(text) for text in texts),
        }
    )


def vector(text: str, dimensions: int) -> list[float]:
    """The fake's embedding of ``text``: deterministic, a different one for each text."""
    digest = hashlib.shake_256(text.encode()).digest(dimensions)
    return [round(b / 255, 4) for b in digest]


def _listing(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "model": name,
        "modified_at": _CREATED,
        "size": 2_019_393_189,
        "digest": hashlib.sha256(name.encode()).hexdigest(),
        "details": {
            "parent_model": "",
            "format": "gguf",
            "family": name.split(":")[0].rstrip("0123456789."),
            "families": [name.split(":")[0].rstrip("0123456789.")],
            "parameter_size": "3.2B",
            "quantization_level": "Q4_K_M",
        },
    }


def _words(text: str) -> int:
    return len(text.split())


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> WireResponse:
    return WireResponse(status=status, body=error_body(status, message), headers=headers or {})
