"""Security headers on every response (a pure ASGI middleware: it costs a list append).

Every response: ``nosniff``, no referrer, no framing. JSON and files also get a CSP that lets
them run nothing (an artifact served as HTML stays inert). The server's own pages (``/``, the
API docs) get a strict CSP allowing only their own inline scripts and styles, by hash, and the
CDN that FastAPI's Swagger UI and ReDoc load from.
"""

from __future__ import annotations

import base64
import hashlib
import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

_COMMON = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]
_INERT = b"default-src 'none'; frame-ancestors 'none'; sandbox"
_CDN = "https://cdn.jsdelivr.net"
# The pages this server renders itself, and what each loads from elsewhere.
_PAGES: dict[str, str] = {
    "/": "",
    "/docs": f"script-src {_CDN}; style-src {_CDN}; img-src https://fastapi.tiangolo.com",
    "/docs/oauth2-redirect": "",
    "/redoc": (
        f"script-src {_CDN}; style-src https://fonts.googleapis.com; "
        "font-src https://fonts.gstatic.com; worker-src blob:; img-src https://cdn.redoc.ly"
    ),
}
_INLINE = re.compile(rb"<(script|style)(?![^>]*\bsrc=)[^>]*>(.*?)</\1>", re.DOTALL)


def page_policy(path: str, body: bytes) -> bytes:
    """The CSP of one of our pages: its inline scripts and styles by hash, and its sources."""
    hashes: dict[bytes, list[str]] = {b"script": [], b"style": []}
    for kind, content in _INLINE.findall(body):
        digest = base64.b64encode(hashlib.sha256(content).digest()).decode()
        hashes[kind].append(f"'sha256-{digest}'")
    extra: dict[str, list[str]] = {}
    for part in filter(None, (p.strip() for p in _PAGES[path].split(";"))):
        name, *sources = part.split()
        extra[name] = sources
    directives = {
        "default-src": ["'none'"],
        "script-src": ["'self'", *hashes[b"script"], *extra.pop("script-src", [])],
        "style-src": ["'self'", *hashes[b"style"], *extra.pop("style-src", [])],
        "img-src": ["'self'", "data:", *extra.pop("img-src", [])],
        "connect-src": ["'self'"],
        **extra,
        "frame-ancestors": ["'none'"],
        "base-uri": ["'none'"],
        "form-action": ["'none'"],
    }
    return "; ".join(f"{k} {' '.join(v)}" for k, v in directives.items()).encode()


def _add(headers: list[tuple[bytes, bytes]], extra: list[tuple[bytes, bytes]]) -> None:
    present = {name.lower() for name, _ in headers}
    headers.extend(item for item in extra if item[0] not in present)


class SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        page = scope["path"] in _PAGES
        start: Message | None = None
        body: list[bytes] = []

        async def secured(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                _add(headers, _COMMON)
                kind = dict(headers).get(b"content-type", b"")
                if page and kind.startswith(b"text/html"):
                    start = {**message, "headers": headers}  # the CSP needs the body first
                    return
                _add(headers, [(b"content-security-policy", _INERT)])
                await send({**message, "headers": headers})
                return
            if start is not None and message["type"] == "http.response.body":
                body.append(message.get("body", b""))
                if message.get("more_body", False):
                    return
                whole = b"".join(body)
                policy = page_policy(scope["path"], whole)
                _add(start["headers"], [(b"content-security-policy", policy)])
                await send(start)
                await send({"type": "http.response.body", "body": whole, "more_body": False})
                return
            await send(message)

        await self.app(scope, receive, secured)
