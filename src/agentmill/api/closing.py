"""The server's "shutting down" notice, for the responses that would otherwise never end.

An event stream of a run that waits for a person stays open for as long as the person takes.
The server waits for open responses before it stops, so on Ctrl-C or SIGTERM each stream is told
to end at once: an SSE client reconnects (with ``Last-Event-ID``) to a server that is up, and a
WebSocket is closed with 1012, "service restart"."""

from __future__ import annotations

from collections.abc import Callable


class Closing:
    """Set once, when the server begins to shut down; calls its subscribers then."""

    def __init__(self) -> None:
        self._subscribers: list[Callable[[], None]] = []
        self.is_set = False

    def set(self) -> None:
        if self.is_set:
            return
        self.is_set = True
        for callback in list(self._subscribers):
            callback()

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` when the server begins to shut down; returns the unsubscribe."""
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback) if callback in self._subscribers else None
