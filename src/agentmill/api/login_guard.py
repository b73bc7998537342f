"""Failed logins, counted per account and per client address, to stop password guessing.

A login is refused (RateLimited: 429 with Retry-After) while either count is full, and that is
decided before the password is verified, so a guesser cannot make the server spend Argon2's CPU
on guesses it will refuse anyway. Only failures count; a success clears the account's count.

Counts live where the gateway's rate limits do (the ``limits`` library): in memory in embedded
mode, in Redis when one is configured, so every API process shares them.
"""

from __future__ import annotations

import contextlib
import math
import time

from limits import RateLimitItem, RateLimitItemPerSecond
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError
from redis.asyncio import ConnectionPool

from agentmill.config import Settings
from agentmill.errors import RateLimited
from agentmill.redis_pool import redis_pool

_TOO_MANY = "too many failed logins: try again in {wait}s"


class LoginGuard:
    def __init__(self, settings: Settings) -> None:
        window = settings.login_failure_window_seconds
        self._per_account = RateLimitItemPerSecond(settings.login_failures_per_account, window)
        self._per_address = RateLimitItemPerSecond(settings.login_failures_per_address, window)
        self._pool: ConnectionPool | None = None
        self.storage: Storage
        url = settings.shared_redis_url
        if url is None:
            self.storage = MemoryStorage()
        else:
            self._pool = redis_pool(url)
            self.storage = RedisStorage(
                "async+" + url,
                implementation="redispy",
                key_prefix="agentmill:logins",
                wrap_exceptions=True,
                connection_pool=self._pool,  # type: ignore[arg-type]  # passed to redis-py
            )
        self._window = MovingWindowRateLimiter(self.storage)

    def _subjects(self, email: str, address: str) -> list[tuple[RateLimitItem, str, str]]:
        return [
            (self._per_account, "account", email.strip().lower()),
            (self._per_address, "address", address),
        ]

    async def check(self, email: str, address: str) -> None:
        """RateLimited when the account or the address has failed too often of late."""
        try:
            for item, kind, subject in self._subjects(email, address):
                if not await self._window.test(item, kind, subject):
                    stats = await self._window.get_window_stats(item, kind, subject)
                    wait = max(1, math.ceil(stats.reset_time - time.time()))
                    raise RateLimited(_TOO_MANY.format(wait=wait), retry_after=wait)
        except StorageError:
            raise _unreachable() from None

    async def failed(self, email: str, address: str) -> None:
        try:
            for item, kind, subject in self._subjects(email, address):
                await self._window.hit(item, kind, subject)
        except StorageError:
            raise _unreachable() from None

    async def succeeded(self, email: str) -> None:
        with contextlib.suppress(StorageError):  # the count ends with its window anyway
            await self._window.clear(self._per_account, "account", email.strip().lower())

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.aclose()


def _unreachable() -> RateLimited:
    # Closed, like the gateway's limits: without the counts, guessing would be unlimited.
    return RateLimited("cannot check failed logins right now: try again shortly", retry_after=5)
