"""Refuses JSON request bodies that would parse but could not be stored or served back.

A lone surrogate (``"\\ud800"``) is valid JSON but not valid Unicode: it parses into a Python
string that PostgreSQL, SQLite and every JSON encoder downstream refuse, so a run created with
one made its workspace's listings fail for everyone. Integers beyond 64 bits, ``NaN`` and
``Infinity`` fail the same way further in; a body nested thousands deep exhausts the parser's
recursion. Bodies that are not UTF-8 at all are refused too (JSON is UTF-8, RFC 8259).

Checked here, once for every route, before any route reads the body: 422 with the JSON path of
the offending value. The common body pays a UTF-8 check and one regular-expression scan; only a
body that might hold one of these is parsed a second time to find it.
"""

from __future__ import annotations

import json
import re
from typing import Any

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agentmill.api import openai_errors
from agentmill.api.errors import error_response
from agentmill.api.openai_errors import is_openai_path

MAX_DEPTH = 64  # workflow specs and tool schemas nest a dozen levels; this leaves room
_INT64 = (-(2**63), 2**63 - 1)
# What could hide one of the refused values: a surrogate escape, a 19-digit number (int64 has
# at most 19 digits), a NaN or an Infinity. A match inside a string only costs a second parse.
_SUSPECT = re.compile(r"\\u[dD][89a-fA-F]|\d{19}|NaN|Infinity")


class InvalidBody(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


def _is_json(scope: Scope) -> bool:
    """A JSON content type, or a body with none (FastAPI and the workflow routes read that as
    JSON too)."""
    has_body = False
    for name, value in scope["headers"]:
        if name == b"content-type":
            kind = value.split(b";", 1)[0].strip().lower()
            return bool(kind == b"application/json" or kind.endswith(b"+json"))
        if name == b"transfer-encoding" or (name == b"content-length" and value != b"0"):
            has_body = True
    return has_body


def check_json(body: bytes) -> None:
    """Raise InvalidBody if ``body`` is JSON we cannot keep; leave invalid JSON to the parser
    (its message says where the syntax is wrong)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidBody("", f"request body is not valid UTF-8 (byte {exc.start})") from None
    if text.count("{") + text.count("[") <= MAX_DEPTH and _SUSPECT.search(text) is None:
        return
    try:
        document = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise InvalidBody("", f"JSON nested deeper than {MAX_DEPTH} levels") from None
    except json.JSONDecodeError:
        return  # the route's own parser answers it
    _walk(document)


def _refuse_constant(name: str) -> Any:
    raise InvalidBody("", f"{name} is not a JSON number")


def _unencodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _walk(document: Any) -> None:
    stack: list[tuple[Any, str, int]] = [(document, "", 0)]
    while stack:
        value, path, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise InvalidBody(path, f"JSON nested deeper than {MAX_DEPTH} levels")
        if isinstance(value, dict):
            for key, item in value.items():
                if _unencodable(key):
                    raise InvalidBody(path, f"key {key!r} holds a lone surrogate (not Unicode)")
                stack.append((item, f"{path}.{key}" if path else key, depth + 1))
        elif isinstance(value, list):
            stack.extend(
                (item, f"{path}.{i}" if path else str(i), depth + 1) for i, item in enumerate(value)
            )
        elif isinstance(value, str):
            if _unencodable(value):
                raise InvalidBody(
                    path, f"string {value[:40]!r} holds a lone surrogate (not Unicode)"
                )
        elif isinstance(value, int) and not _INT64[0] <= value <= _INT64[1]:
            raise InvalidBody(path, f"integer {value} is out of range (64-bit signed)")


class JsonBodyGuard:
    """Checks JSON request bodies with ``check_json`` before the app reads them (422)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _is_json(scope):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []  # its size is bounded by BodySizeLimit, outside this one
        while True:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay(message, receive), send)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        try:
            check_json(body)
        except InvalidBody as exc:
            await refusal(scope, exc)(scope, receive, send)
            return
        whole: Message = {"type": "http.request", "body": body, "more_body": False}
        await self.app(scope, _replay(whole, receive), send)


def _replay(first: Message, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return first
        return await receive()

    return replay


def refusal(scope: Scope, exc: InvalidBody) -> JSONResponse:
    """The 422, or under /v1 the 400 OpenAI's SDKs expect for an invalid body."""
    if is_openai_path(scope["path"]):
        return openai_errors.OpenAIError(
            status=400, message=str(exc), param=exc.field or None, code="invalid_value"
        ).response()
    details = [{"field": exc.field, "message": exc.message}]
    return error_response(422, "validation_error", str(exc), details)
