"""Reading a response body within a size cap, and turning it into something a model can read."""

from __future__ import annotations

import codecs
import json
import zlib
from collections.abc import AsyncIterator
from typing import Any

from agentmill.tools.http._errors import RequestFailed

_TEXT_TYPES = {
    "application/javascript",
    "application/json",
    "application/x-ndjson",
    "application/x-www-form-urlencoded",
    "application/xml",
    "application/yaml",
}


class _Decoder:
    """Undoes a Content-Encoding without ever producing more than asked for.

    httpx's own decoders inflate a whole chunk at once, so a few kilobytes of gzip could become
    gigabytes in memory before any size check; ``max_length`` bounds each step here.
    """

    def __init__(self, content_encoding: str) -> None:
        encoding = content_encoding.strip().lower()
        if encoding in ("", "identity"):
            self._inflater = None
        elif encoding in ("gzip", "x-gzip", "deflate"):
            # 32 + MAX_WBITS reads a zlib or gzip header, whichever comes.
            self._inflater = zlib.decompressobj(32 + zlib.MAX_WBITS)
        else:
            raise RequestFailed(f"the response uses an unsupported content encoding {encoding!r}")

    def feed(self, chunk: bytes, limit: int) -> bytes:
        """Decoded bytes of ``chunk``, at most ``limit`` of them (``limit`` >= 1)."""
        if self._inflater is None:
            return chunk[:limit]
        try:
            return self._inflater.decompress(chunk, limit)
        except zlib.error as exc:
            raise RequestFailed(f"the response body is not valid compressed data: {exc}") from None


async def read_capped(
    raw_chunks: AsyncIterator[bytes], content_encoding: str, cap: int
) -> tuple[bytes, bool]:
    """The decoded body, cut at ``cap`` bytes, and whether it was cut. Stops reading at the cap."""
    decoder = _Decoder(content_encoding)
    body = bytearray()
    async for chunk in raw_chunks:
        # One byte past the cap tells a body of exactly ``cap`` bytes from a longer one.
        body += decoder.feed(chunk, cap - len(body) + 1)
        if len(body) > cap:
            return bytes(body[:cap]), True
    return bytes(body), False


def render_body(data: bytes, content_type: str, *, truncated: bool) -> Any:
    """JSON when the content type says so (and the body is whole), else text."""
    mime, _, params = content_type.partition(";")
    mime = mime.strip().lower()
    charset = _charset(params)
    is_json = mime == "application/json" or mime.endswith("+json")
    if is_json and not truncated and data:
        try:
            return json.loads(data.decode(charset or "utf-8"))
        except ValueError:
            pass  # mislabelled: fall through to text so the model sees what came
    textual = not mime or mime.startswith("text/") or mime in _TEXT_TYPES
    textual = textual or mime.endswith(("+json", "+xml"))
    if not textual:
        try:
            return data.decode("utf-8")  # often mislabelled text; binary rarely decodes
        except UnicodeDecodeError:
            return f"<{len(data)} bytes of binary content ({mime}) not shown>"
    return data.decode(charset or "utf-8", errors="replace")


def _charset(params: str) -> str | None:
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            charset = value.strip().strip('"').lower()
            try:
                codecs.lookup(charset)
            except LookupError:
                return None
            return charset
    return None
