"""Server-sent events on the wire (the run event stream, OpenAI-style completion streams).

One message is optional ``id:`` and ``event:`` lines, one ``data:`` line per line of data, and
a blank line. Ids and event names are single lines; a newline in one would start a field the
client never sent, so it is refused rather than sent.
"""

from __future__ import annotations

MEDIA_TYPE = "text/event-stream"
# Not cached, and not buffered by a proxy in front (nginx), or events arrive in lumps.
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _single_line(name: str, value: str) -> str:
    if "\n" in value or "\r" in value:
        raise ValueError(f"an SSE {name} must be one line, got {value!r}")
    return value


def sse_message(data: str, *, event: str | None = None, id: str | int | None = None) -> bytes:
    """One message carrying ``data`` (JSON, usually, which is one line)."""
    lines = []
    if id is not None:
        lines.append(f"id: {_single_line('id', str(id))}")
    if event is not None:
        lines.append(f"event: {_single_line('event', event)}")
    lines.extend(f"data: {line}" for line in data.replace("\r\n", "\n").split("\n"))
    return ("\n".join(lines) + "\n\n").encode()


def sse_comment(text: str) -> bytes:
    """A comment line: clients ignore it; it keeps idle connections (and proxies) open."""
    return f": {_single_line('comment', text)}\n\n".encode()
