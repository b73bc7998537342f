"""The arguments of one ``http_request`` call, checked and turned into what is sent."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD")
MAX_HEADERS = 64
MAX_HEADER_VALUE = 8192

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Headers the tool owns: framing, connection handling and the target itself. Letting the model
# set Host would let it reach a virtual host the allowlist never named, at an allowed address.
_MANAGED = {
    "accept-encoding",
    "connection",
    "content-length",
    "expect",
    "host",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
}


class InvalidArguments(ValueError):
    """The call's arguments are wrong; the message says how."""


@dataclass(frozen=True, kw_only=True)
class Call:
    """A checked call: the URL as given, and the request to send."""

    url: str
    method: str
    headers: dict[str, str]  # lower-case names
    body: bytes | None
    timeout: float


def parse_call(
    arguments: Mapping[str, Any], *, default_timeout: float, max_timeout: float, max_body: int
) -> Call:
    """Check the arguments (the agent loop validates the schema; this holds without it)."""
    unknown = set(arguments) - {"url", "method", "headers", "body", "timeout"}
    if unknown:
        raise InvalidArguments(f"unknown arguments {sorted(unknown)}")
    url = arguments.get("url")
    if not isinstance(url, str):
        raise InvalidArguments(f"url must be a string, not {url!r}")
    method = arguments.get("method", "GET")
    if not isinstance(method, str) or method.upper() not in METHODS:
        raise InvalidArguments(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    method = method.upper()
    headers = _headers(arguments.get("headers") or {})
    body = _body(arguments.get("body"), method, headers, max_body)
    timeout = arguments.get("timeout", default_timeout)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        raise InvalidArguments(f"timeout must be a positive number of seconds, not {timeout!r}")
    return Call(
        url=url, method=method, headers=headers, body=body, timeout=min(timeout, max_timeout)
    )


def _headers(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise InvalidArguments(f"headers must be an object of strings, not {value!r}")
    if len(value) > MAX_HEADERS:
        raise InvalidArguments(f"at most {MAX_HEADERS} headers")
    headers: dict[str, str] = {}
    for name, text in value.items():
        if not isinstance(name, str) or not _TOKEN.fullmatch(name):
            raise InvalidArguments(f"{name!r} is not a valid header name")
        lower = name.lower()
        if lower in _MANAGED or lower.startswith("proxy-"):
            raise InvalidArguments(f"the {name} header is set by the tool, not by the caller")
        if not isinstance(text, str) or any(c in text for c in "\r\n\0"):
            raise InvalidArguments(f"header {name} must be a string on one line, not {text!r}")
        if len(text) > MAX_HEADER_VALUE:
            raise InvalidArguments(f"header {name} is longer than {MAX_HEADER_VALUE} characters")
        headers[lower] = text
    return headers


def _body(value: Any, method: str, headers: dict[str, str], max_body: int) -> bytes | None:
    if value is None:
        return None
    if method in ("GET", "HEAD"):
        raise InvalidArguments(f"a {method} request cannot have a body")
    if isinstance(value, str):
        data = value.encode()
        headers.setdefault("content-type", "text/plain; charset=utf-8")
    else:
        try:
            data = json.dumps(value, ensure_ascii=False, allow_nan=False).encode()
        except (TypeError, ValueError) as exc:
            raise InvalidArguments(f"body must be a string or a JSON value: {exc}") from None
        headers.setdefault("content-type", "application/json")
    if len(data) > max_body:
        raise InvalidArguments(f"the body is {len(data)} bytes; the limit is {max_body}")
    return data
