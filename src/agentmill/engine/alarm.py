"""An event that can also be set later: wake-ups for retries that fall due."""

from __future__ import annotations

import asyncio


class Alarm(asyncio.Event):
    """``asyncio.Event`` plus :meth:`set_after`. Each pending timer is dropped once it fires,
    so a long-running process does not collect them."""

    def __init__(self) -> None:
        super().__init__()
        self._timers: set[asyncio.TimerHandle] = set()

    def set_after(self, delay: float) -> None:
        """Set now if ``delay`` is not positive, else once it has passed."""
        if delay <= 0:
            self.set()
            return
        timer: asyncio.TimerHandle | None = None

        def ring() -> None:
            if timer is not None:
                self._timers.discard(timer)
            self.set()

        # A millisecond late rather than early: what it wakes for is due by then.
        timer = asyncio.get_running_loop().call_later(delay + 0.001, ring)
        self._timers.add(timer)

    def cancel_pending(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
