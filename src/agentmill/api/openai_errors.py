"""Errors on the OpenAI-compatible ``/v1`` endpoints, in OpenAI's shape.

``{"error": {"message", "type", "param", "code"}}`` is what OpenAI's SDKs read into their
exception classes (``openai.NotFoundError`` with ``.param`` and ``.code``, and so on), so every
failure under ``/v1`` answers in it: validation errors, unknown routes, oversized bodies, bugs.
The rest of the API keeps AgentMill's own shape (``api/errors.py`` asks :func:`is_openai_path`).

========================================  ======  =====================  ======================
failure                                   status  type                   code
========================================  ======  =====================  ======================
invalid body, unsupported parameter       400     invalid_request_error  invalid_value, ...
missing, wrong or login-token credential  401     authentication_error   invalid_api_key
key's role lacks ``model:call``           403     permission_error       permission_denied
unknown model or provider                 404     invalid_request_error  model_not_found
budget would be overspent                 402     insufficient_quota     budget_exceeded
our rate limit is full                    429     rate_limit_error       rate_limit_exceeded
upstream 429 after failover               429     rate_limit_error       upstream_rate_limited
upstream timeout                          504     api_error              upstream_timeout
upstream down, 5xx, bad credentials       502/503 api_error              upstream_error
========================================  ======  =====================  ======================
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi.responses import JSONResponse

from agentmill.errors import (
    BudgetExceeded,
    ConfigError,
    NotAuthenticated,
    NotFound,
    PermissionDenied,
    RateLimited,
    RetryableError,
    StepFailed,
    UnknownModel,
)

# Anything shaped like a credential is cut from upstream messages (OpenAI, for one, quotes a
# masked key when it refuses it); the callers of /v1 must never see the providers' keys.
_SECRET = re.compile(r"\b(?:sk-|sk_|am_|AIza|xai-|gsk_)[\w\-*.]{6,}|(?i:bearer)\s+\S+")


class InvalidParam(ConfigError):
    """A request parameter the gateway cannot honour; answered as 400 naming ``param``."""

    def __init__(
        self, message: str, *, param: str | None, code: str | None = "invalid_value"
    ) -> None:
        super().__init__(message)
        self.param = param
        self.code = code


def is_openai_path(path: str) -> bool:
    """Whether ``path`` is one of the OpenAI-compatible endpoints (their errors differ)."""
    return path == "/v1" or path.startswith("/v1/")


@dataclass(frozen=True, kw_only=True)
class OpenAIError:
    """One error as OpenAI reports it, with the HTTP status and headers that go with it."""

    status: int
    message: str
    type: str = "invalid_request_error"
    code: str | None = None
    param: str | None = None
    retry_after: float | None = None

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        if self.status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        if self.retry_after is not None:
            # OpenAI's SDKs read the precise retry-after-ms first; others read Retry-After.
            headers["Retry-After"] = str(max(1, math.ceil(self.retry_after)))
            headers["retry-after-ms"] = str(max(0, round(self.retry_after * 1000)))
        return headers

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers() or None)


def error_for(exc: BaseException) -> OpenAIError:
    """The OpenAI error for an exception raised while serving a ``/v1`` request."""
    message = redact(str(exc))
    if isinstance(exc, InvalidParam):
        return OpenAIError(status=400, message=message, param=exc.param, code=exc.code)
    if isinstance(exc, UnknownModel):
        return OpenAIError(status=404, message=message, param="model", code="model_not_found")
    if isinstance(exc, NotAuthenticated):
        return OpenAIError(
            status=401, message=message, type="authentication_error", code="invalid_api_key"
        )
    if isinstance(exc, PermissionDenied):
        return OpenAIError(
            status=403, message=message, type="permission_error", code="permission_denied"
        )
    if isinstance(exc, NotFound):
        return OpenAIError(status=404, message=message, code="not_found")
    if isinstance(exc, ConfigError):
        return OpenAIError(status=400, message=message)
    if isinstance(exc, BudgetExceeded):
        return OpenAIError(
            status=402, message=message, type="insufficient_quota", code="budget_exceeded"
        )
    if isinstance(exc, RateLimited):
        return OpenAIError(
            status=429,
            message=message,
            type="rate_limit_error",
            code="rate_limit_exceeded",
            retry_after=exc.retry_after,
        )
    if isinstance(exc, RetryableError):
        return _upstream_retryable(exc, message)
    if isinstance(exc, StepFailed):
        return _upstream_failed(exc, message)
    return internal_error("internal error")


def _upstream_retryable(exc: RetryableError, message: str) -> OpenAIError:
    """Failover is exhausted; the caller may try again later, so keep the class retryable."""
    if exc.status == 429:
        return OpenAIError(
            status=429,
            message=message,
            type="rate_limit_error",
            code="upstream_rate_limited",
            retry_after=exc.retry_after,
        )
    timed_out = exc.status == 408 or isinstance(exc.__cause__, TimeoutError)
    if timed_out or (exc.status is None and "timed out" in message.lower()):
        status, code = 504, "upstream_timeout"
    else:
        status, code = (503 if exc.status == 503 else 502), "upstream_error"
    return OpenAIError(
        status=status, message=message, type="api_error", code=code, retry_after=exc.retry_after
    )


def _upstream_failed(exc: StepFailed, message: str) -> OpenAIError:
    """A terminal upstream answer: the caller's fault (400, 404, 422) or the gateway's own
    (its provider credentials were refused, or the upstream answered nonsense: 502)."""
    if exc.status in (400, 413, 422):
        return OpenAIError(status=400, message=message, code="upstream_rejected_request")
    if exc.status == 404:
        return OpenAIError(status=404, message=message, param="model", code="model_not_found")
    return OpenAIError(status=502, message=message, type="api_error", code="upstream_error")


def internal_error(message: str) -> OpenAIError:
    return OpenAIError(status=500, message=message, type="server_error", code="internal_error")


def too_large(limit: int) -> OpenAIError:
    return OpenAIError(
        status=413,
        message=f"request body is larger than {limit} bytes",
        code="request_too_large",
    )


def http_error(status: int, method: str, path: str, detail: str) -> OpenAIError:
    """An error the router raised itself: an unknown URL, a method it does not take."""
    if status == 404:
        return OpenAIError(status=404, message=f"Invalid URL ({method} {path})", code="unknown_url")
    if status == 405:
        message = f"Method {method} is not allowed on {path}"
        return OpenAIError(status=405, message=message, code="method_not_allowed")
    return OpenAIError(status=status, message=detail)


def validation_error(errors: Sequence[Mapping[str, Any]]) -> OpenAIError:
    """The first of Pydantic's errors, named by its parameter path (``messages[0].content``)."""
    if not errors:
        return OpenAIError(status=400, message="invalid request body")
    error = errors[0]
    kind = str(error.get("type", ""))
    param = param_path(error.get("loc", ()))
    if kind == "json_invalid":
        detail = error.get("ctx", {}).get("error", "")
        message = f"We could not parse the JSON body of your request: {detail}".rstrip(": ")
        return OpenAIError(status=400, message=message, code="invalid_json")
    if not param:  # the body itself is of the wrong kind (not a JSON object)
        return OpenAIError(status=400, message=f"Invalid body: {error.get('msg', '')}")
    if kind == "missing":
        return OpenAIError(
            status=400,
            message=f"Missing required parameter: {param!r}.",
            param=param,
            code="missing_required_parameter",
        )
    if kind == "extra_forbidden":
        return OpenAIError(
            status=400,
            message=f"Unrecognized request argument supplied: {param}",
            param=param,
            code="unknown_parameter",
        )
    code = "invalid_type" if kind.endswith("_type") or kind == "model_attributes_type" else None
    return OpenAIError(
        status=400,
        message=f"Invalid value for {param!r}: {error.get('msg', '')}",
        param=param,
        code=code or "invalid_value",
    )


def param_path(loc: Sequence[Any]) -> str:
    """``("body", "messages", 0, "content")`` as ``messages[0].content``."""
    path = ""
    for part in loc:
        if part == "body" and not path:
            continue  # FastAPI's prefix for the request body
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


def redact(message: str) -> str:
    """``message`` without anything that looks like a credential."""
    return _SECRET.sub("[redacted]", message)
