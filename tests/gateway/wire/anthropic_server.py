"""A fake of Anthropic's Messages API (``POST /v1/messages``), speaking its wire protocol.

It checks the credentials and the ``anthropic-version`` header, validates what the real API
refuses (a missing ``max_tokens``, empty text blocks, tool uses not answered by ``tool_result``
blocks opening the next user message, tools without an object ``input_schema``), and answers in
Anthropic's shapes: a ``message`` object, or the server-sent events of a stream
(``message_start``, ``content_block_start|delta|stop``, ``ping``, ``message_delta``,
``message_stop``, and ``error``), and ``{"type": "error", "error": {"type", "message"}}`` with
the error status.

Answers come from a queue the test fills with :meth:`AnthropicFake.reply`; with an empty queue
it echoes the last user text. A streamed tool call's JSON arguments arrive in several
``input_json_delta`` pieces. Misbehaviour (error statuses, dropped connections, slowness) comes
from the :class:`WireServer` underneath, ``fake.server``.

The SDK (2.x) sends the key as ``Authorization: Bearer``; older clients and curl examples send
``x-api-key``. Both are accepted.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from tests.gateway.wire._harness import WireRequest, WireResponse, WireServer, sse

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}

_ERROR_MESSAGES = {"overloaded_error": "Overloaded", "rate_limit_error": "Rate limited"}


def error_body(status: int, message: str) -> dict[str, Any]:
    """Anthropic's error shape for an HTTP status."""
    kind = ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_fake"}


@dataclass
class Reply:
    """One queued answer. ``tool_calls`` are ``(id, name, input)``; ``thinking`` adds a thinking
    block before the text, ``web_search`` (a query) a server tool use and its result. A stream with ``stream_error`` (an error type) sends an ``error``
    event after its first text piece instead of finishing; with ``stream_cut`` it just ends
    there (cleanly, as a misbehaving proxy might), without ``message_stop``."""

    text: str = ""
    tool_calls: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    thinking: str = ""
    web_search: str | None = None
    stop_reason: str | None = None  # default: tool_use with tool calls, else end_turn
    input_tokens: int = 10
    output_tokens: int = 5
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    thinking_tokens: int | None = None
    stream_error: str | None = None
    stream_cut: bool = False

    def blocks(self) -> list[dict[str, Any]]:
        blocks: list[dict[str, Any]] = []
        if self.thinking:
            blocks.append({"type": "thinking", "thinking": self.thinking, "signature": "sig=="})
        if self.web_search is not None:
            blocks.extend(self.search_blocks())
        if self.text:
            blocks.append({"type": "text", "text": self.text, "citations": None})
        for call_id, name, arguments in self.tool_calls:
            blocks.append({"type": "tool_use", "id": call_id, "name": name, "input": arguments})
        return blocks

    def search_blocks(self) -> list[dict[str, Any]]:
        """A web search Anthropic ran itself: a server tool use, then its result."""
        result = {
            "type": "web_search_result",
            "url": "https://example.org/bees",
            "title": "Bees",
            "encrypted_content": "ZmFrZQ==",
            "page_age": None,
        }
        return [
            {
                "type": "server_tool_use",
                "id": "srvtoolu_fake",
                "name": "web_search",
                "input": {"query": self.web_search},
            },
            {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_fake", "content": [result]},
        ]

    def stop(self) -> str:
        return self.stop_reason or ("tool_use" if self.tool_calls else "end_turn")

    def usage(self) -> dict[str, Any]:
        usage: dict[str, Any] = {
            "input_tokens": self.input_tokens,
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
            "output_tokens": self.output_tokens,
            "service_tier": "standard",
        }
        if self.thinking_tokens is not None:
            usage["output_tokens_details"] = {"thinking_tokens": self.thinking_tokens}
        return usage


class InvalidRequest(Exception):
    """What the real API would answer 400 to."""


class AnthropicFake:
    """The fake Messages API; use as a context manager. ``url`` is the SDK's ``base_url``."""

    def __init__(self, api_key: str) -> None:
        self.api_key = api_key
        self.replies: deque[Reply] = deque()
        self.server = WireServer(self._handle, error_body)
        self._ids = 0

    def __enter__(self) -> AnthropicFake:
        self.server.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.__exit__(*exc)

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def requests(self) -> list[WireRequest]:
        return self.server.requests

    @property
    def bodies(self) -> list[Any]:
        """The JSON bodies of every request so far."""
        return [request.json() for request in self.server.requests]

    def reply(self, text: str = "", **fields: Any) -> Reply:
        """Queue an answer for the next request (see :class:`Reply`)."""
        reply = Reply(text=text, **fields)
        self.replies.append(reply)
        return reply

    # ------------------------------------------------------------------ the API

    async def _handle(self, request: WireRequest) -> WireResponse:
        if request.method != "POST" or request.path != "/v1/messages":
            return _error(404, f"Not found: {request.method} {request.path}")
        if _key(request.headers) != self.api_key:
            return _error(401, "invalid x-api-key")
        if not request.headers.get("anthropic-version"):
            return _error(400, "anthropic-version: header is required")
        body = request.json()
        try:
            _validate(body)
        except InvalidRequest as exc:
            return _error(400, str(exc))
        reply = self.replies.popleft() if self.replies else Reply(text=_echo(body))
        self._ids += 1
        message_id = f"msg_fake{self._ids:04d}"
        headers = {"request-id": f"req_fake{self._ids:04d}"}
        if body.get("stream"):
            headers |= {
                "content-type": "text/event-stream; charset=utf-8",
                "cache-control": "no-cache",
            }
            return WireResponse(headers=headers, stream=_events(message_id, body["model"], reply))
        message = _message(message_id, body["model"], reply, reply.blocks())
        message["stop_reason"] = reply.stop()
        message["stop_sequence"] = _stop_sequence(body, reply)
        return WireResponse(headers=headers, body=message)


def anthropic_server(api_key: str = "sk-ant-test-key") -> AnthropicFake:
    """A fake Messages API accepting ``api_key``; enter it to start serving."""
    return AnthropicFake(api_key)


def _key(headers: dict[str, str]) -> str:
    bearer = headers.get("authorization", "")
    return headers.get("x-api-key") or (bearer[7:] if bearer.startswith("Bearer ") else "")


def _error(status: int, message: str) -> WireResponse:
    return WireResponse(status=status, body=error_body(status, message))


def _validate(body: Any) -> None:
    if not isinstance(body, dict):
        raise InvalidRequest("body must be a JSON object")
    for name, kind in (("model", str), ("max_tokens", int), ("messages", list)):
        if not isinstance(body.get(name), kind):
            raise InvalidRequest(f"{name}: Field required")
    tool_names = set()
    for i, tool in enumerate(body.get("tools") or []):
        schema = tool.get("input_schema")
        if not isinstance(tool.get("name"), str) or not isinstance(schema, dict):
            raise InvalidRequest(f"tools.{i}: name and input_schema are required")
        if schema.get("type") != "object":
            raise InvalidRequest(f"tools.{i}.input_schema.type: Input should be 'object'")
        tool_names.add(tool["name"])
    choice = body.get("tool_choice")
    if choice is not None and not tool_names:
        raise InvalidRequest("tool_choice may only be specified while providing tools")
    if choice and choice.get("type") == "tool" and choice.get("name") not in tool_names:
        raise InvalidRequest(f"tool_choice.name: no tool named {choice.get('name')!r}")
    pending: list[str] = []  # tool_use ids the next user message must answer first
    for i, message in enumerate(body["messages"]):
        if message.get("role") not in ("user", "assistant"):
            raise InvalidRequest(f"messages.{i}.role: Input should be 'user' or 'assistant'")
        content = message.get("content")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if not blocks:
            raise InvalidRequest(f"messages.{i}: all messages must have non-empty content")
        for j, block in enumerate(blocks):
            if block.get("type") == "text" and not block.get("text"):
                raise InvalidRequest(
                    f"messages.{i}.content.{j}: text content blocks must be non-empty"
                )
        results = [b["tool_use_id"] for b in blocks if b.get("type") == "tool_result"]
        if pending:
            leading = [b.get("tool_use_id") for b in blocks[: len(pending)]]
            if message["role"] != "user" or sorted(map(str, leading)) != sorted(pending):
                raise InvalidRequest(
                    f"messages.{i}: `tool_use` ids were found without `tool_result` blocks "
                    f"immediately after: {', '.join(pending)}. Each `tool_use` block must have a "
                    "corresponding `tool_result` block in the next message."
                )
        elif results:
            raise InvalidRequest(
                f"messages.{i}.content: unexpected `tool_use_id` found in `tool_result` blocks: "
                f"{results[0]}. Each `tool_result` block must have a corresponding `tool_use` "
                "block in the previous message."
            )
        pending = [b["id"] for b in blocks if b.get("type") == "tool_use"]
    if pending:
        raise InvalidRequest("the last message has tool_use blocks without results")


def _echo(body: dict[str, Any]) -> str:
    for message in reversed(body["messages"]):
        if message["role"] != "user":
            continue
        content = message["content"]
        if isinstance(content, str):
            return f"echo: {content}"
        texts = [b["text"] for b in content if b.get("type") == "text"]
        if texts:
            return f"echo: {texts[-1]}"
    return "echo: (nothing)"


def _stop_sequence(body: dict[str, Any], reply: Reply) -> str | None:
    sequences = body.get("stop_sequences") or []
    return sequences[0] if reply.stop() == "stop_sequence" and sequences else None


def _message(
    message_id: str, model: str, reply: Reply, content: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": None,
        "stop_sequence": None,
        "usage": reply.usage(),
    }


def _pieces(text: str, count: int) -> list[str]:
    """``text`` cut into ``count`` pieces (fewer when it is shorter), none empty."""
    size = max(1, -(-len(text) // count))
    return [text[i : i + size] for i in range(0, len(text), size)]


def _events(message_id: str, model: str, reply: Reply) -> AsyncIterator[bytes]:
    start = _message(message_id, model, reply, [])
    # message_start carries the input side; output_tokens grows to its total in message_delta.
    start["usage"] = {**reply.usage(), "output_tokens": 1}
    start["usage"].pop("output_tokens_details", None)
    events: list[tuple[str | None, Any]] = [
        ("message_start", {"type": "message_start", "message": start})
    ]

    def block_start(index: int, content_block: dict[str, Any]) -> None:
        event = {"type": "content_block_start", "index": index, "content_block": content_block}
        events.append(("content_block_start", event))

    def block_delta(index: int, delta: dict[str, Any]) -> None:
        events.append(
            ("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})
        )

    def block_stop(index: int) -> None:
        events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))

    index = 0
    if reply.thinking:
        block_start(index, {"type": "thinking", "thinking": "", "signature": ""})
        for piece in _pieces(reply.thinking, 2):
            block_delta(index, {"type": "thinking_delta", "thinking": piece})
        block_delta(index, {"type": "signature_delta", "signature": "sig=="})
        block_stop(index)
        index += 1
    if reply.web_search is not None:
        use, result = reply.search_blocks()
        block_start(index, {**use, "input": {}})
        for piece in _pieces(json.dumps(use["input"]), 2):
            block_delta(index, {"type": "input_json_delta", "partial_json": piece})
        block_stop(index)
        block_start(index + 1, result)
        block_stop(index + 1)
        index += 2
    if reply.text:
        block_start(index, {"type": "text", "text": ""})
        events.append(("ping", {"type": "ping"}))
        for n, piece in enumerate(_pieces(reply.text, 3)):
            block_delta(index, {"type": "text_delta", "text": piece})
            if n == 0 and reply.stream_error is not None:
                message = _ERROR_MESSAGES.get(reply.stream_error, "Internal server error")
                error = {"type": reply.stream_error, "message": message}
                events.append(("error", {"type": "error", "error": error}))
                return sse(events)
            if n == 0 and reply.stream_cut:
                return sse(events)
        block_stop(index)
        index += 1
    for call_id, name, arguments in reply.tool_calls:
        block_start(index, {"type": "tool_use", "id": call_id, "name": name, "input": {}})
        # Like the API: an empty first partial_json, then the JSON in several pieces.
        for piece in ["", *_pieces(json.dumps(arguments), 3)]:
            block_delta(index, {"type": "input_json_delta", "partial_json": piece})
        block_stop(index)
        index += 1
    usage = reply.usage()
    usage.pop("service_tier")
    delta = {"stop_reason": reply.stop(), "stop_sequence": None}
    events.append(("message_delta", {"type": "message_delta", "delta": delta, "usage": usage}))
    events.append(("message_stop", {"type": "message_stop"}))
    return sse(events)
