"""Every failure is JSON ``{"error": {"code", "message", "details"}}`` with the right status.

The exception tree (agentmill.errors) is mapped to HTTP here and only here. A bug answers 500
with a request id to quote; its traceback goes to the log, never to the client. Under ``/v1``
(the OpenAI-compatible endpoints) the same handlers answer in OpenAI's error shape instead, as
``api/openai_errors.py`` maps it, because the clients there are OpenAI SDKs.
"""

from __future__ import annotations

import math
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agentmill.api import openai_errors
from agentmill.api.openai_errors import is_openai_path
from agentmill.domain.forms import InvalidAnswer
from agentmill.domain.inputs import InvalidInputs
from agentmill.errors import (
    AgentMillError,
    ConfigError,
    Conflict,
    NotAuthenticated,
    NotFound,
    PermissionDenied,
    RateLimited,
    SpecError,
)
from agentmill.ids import new_id

log = structlog.get_logger("agentmill.api")

_STATUS: list[tuple[type[AgentMillError], int, str]] = [
    (NotAuthenticated, 401, "not_authenticated"),
    (PermissionDenied, 403, "permission_denied"),
    (NotFound, 404, "not_found"),
    (Conflict, 409, "conflict"),
    (SpecError, 422, "invalid_workflow"),
    (InvalidInputs, 422, "invalid_inputs"),
    (InvalidAnswer, 422, "invalid_answer"),
    (ConfigError, 400, "bad_request"),
    (RateLimited, 429, "rate_limited"),
]
_HTTP_CODES = {
    400: "bad_request",
    401: "not_authenticated",
    403: "permission_denied",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
}


def error_response(
    status: int, code: str, message: str, details: Any = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "details": details}}
    return JSONResponse(body, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(AgentMillError)
    async def domain_error(request: Request, exc: AgentMillError) -> JSONResponse:
        if is_openai_path(request.url.path):
            return openai_errors.error_for(exc).response()
        for kind, status, code in _STATUS:
            if isinstance(exc, kind):
                details: Any = None
                if isinstance(exc, SpecError):
                    details = [
                        {"path": p.path, "line": p.line, "column": p.column, "message": p.message}
                        for p in exc.problems
                    ]
                elif isinstance(exc, InvalidInputs):
                    details = exc.problems
                elif isinstance(exc, InvalidAnswer):
                    details = {"path": exc.path}
                headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
                if isinstance(exc, RateLimited):
                    headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after or 1)))}
                message = str(exc).split("\n", 1)[0] if isinstance(exc, SpecError) else str(exc)
                return error_response(status, code, message, details, headers)
        return error_response(400, "bad_request", str(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        if is_openai_path(request.url.path):
            return openai_errors.validation_error(exc.errors()).response()
        details = [
            {
                "field": ".".join(str(part) for part in err["loc"] if part != "body"),
                "message": err["msg"],
            }
            for err in exc.errors()
        ]
        first = details[0] if details else {"field": "", "message": "invalid request"}
        message = f"{first['field']}: {first['message']}" if first["field"] else first["message"]
        return error_response(422, "validation_error", message, details)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if is_openai_path(request.url.path):
            error = openai_errors.http_error(
                exc.status_code, request.method, request.url.path, str(exc.detail)
            )
            response = error.response()
            response.headers.update(getattr(exc, "headers", None) or {})  # Allow, for a 405
            return response
        code = _HTTP_CODES.get(exc.status_code, "error")
        return error_response(
            exc.status_code, code, str(exc.detail), headers=getattr(exc, "headers", None)
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        return unexpected_error(request)


def unexpected_error(request: Request) -> JSONResponse:
    """The 500 for the bug being handled: a request id to quote, the traceback in the log."""
    request_id = new_id("req")
    log.exception("unhandled error", request_id=request_id, path=request.url.path)
    if is_openai_path(request.url.path):
        message = f"internal error; quote the request id {request_id} when reporting it"
        return openai_errors.internal_error(message).response()
    return error_response(
        500,
        "internal",
        "internal error; quote the request id when reporting it",
        {"request_id": request_id},
    )


class BodySizeLimit:
    """Refuses request bodies over ``limit`` bytes with 413, before a route reads them."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(scope, receive, send)
            return
        if declared is not None:  # the server holds the client to its declared length
            await self.app(scope, receive, send)
            return
        # A chunked body: read it here, up to the limit, and hand it on whole.
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            body.extend(message.get("body", b""))
            if len(body) > self.limit:
                await self._refuse(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = (
            openai_errors.too_large(self.limit).response()
            if is_openai_path(scope["path"])
            else error_response(
                413, "payload_too_large", f"request body is larger than {self.limit} bytes"
            )
        )
        await response(scope, receive, send)


class ErrorBoundary:
    """Answers a bug with the JSON 500 here, inside the app, so that no exception reaches the
    server. Starlette's outermost middleware sends the 500 of the ``Exception`` handler and then
    re-raises, and uvicorn closes the connection of any request whose exception escaped: the
    client's next request on that keep-alive connection would fail. A response already started
    (a stream that broke) cannot be answered again: then the exception goes on, and the
    connection is closed, which is the only way left to tell the client."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception:
            if started:
                raise
            await unexpected_error(Request(scope))(scope, receive, send)
