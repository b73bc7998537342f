"""Rate limits: requests and tokens per minute, per workspace, user, API key and provider model.

Built on the ``limits`` library: in memory in embedded mode, in Redis when distributed, so every
API and worker process shares one count (limits are not multiplied by the number of replicas).

- Requests use a *moving window*: exact, ``N`` requests in any 60 seconds and not one more.
- Tokens use a *sliding window counter* (a weighted pair of fixed windows): a call's tokens are
  known only after it, and a moving window would store one entry per token. Before a call the
  window must have room for the call's estimated input tokens; afterwards its real total is
  counted.

When several limits apply, each admits in turn; a refusal by a later one leaves the earlier ones
counted, which errs on the side of admitting less, never more.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from limits import RateLimitItem, RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter, SlidingWindowCounterRateLimiter
from limits.errors import StorageError

from agentmill.errors import RateLimited, StoreUnavailable
from agentmill.redis_pool import redis_pool

if TYPE_CHECKING:
    from redis.asyncio import ConnectionPool

LimitScope = Literal["workspace", "user", "api_key", "model"]


@dataclass(frozen=True, kw_only=True)
class RateLimit:
    """A limit for one subject: a workspace, a user, an API key, or a ``provider/model``."""

    scope: LimitScope
    subject: str
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None

    @property
    def name(self) -> str:
        return f"{self.scope} {self.subject!r}"


@dataclass(frozen=True, kw_only=True)
class Admission:
    """The limits a call was admitted under, to count its tokens against afterwards."""

    limits: tuple[RateLimit, ...]


class RateLimiter:
    """Admits calls under their limits; ``storage_url`` is ``memory://`` or ``redis://…``."""

    def __init__(self, storage_url: str = "memory://", *, prefix: str = "agentmill") -> None:
        self.storage: Storage
        self._pool: ConnectionPool | None = None
        if storage_url.startswith("memory://"):
            self.storage = MemoryStorage()
        elif storage_url.startswith(("redis://", "rediss://")):
            # Our own pool, so that closing the limiter closes its connections.
            self._pool = redis_pool(storage_url)
            self.storage = RedisStorage(
                "async+" + storage_url,
                implementation="redispy",
                key_prefix=f"{prefix}:limits",
                wrap_exceptions=True,
                connection_pool=self._pool,  # type: ignore[arg-type]  # passed to redis-py
            )
        else:
            raise ValueError(
                f"rate limit storage must be memory:// or redis://, not {storage_url!r}"
            )
        self._requests = MovingWindowRateLimiter(self.storage)
        self._tokens = SlidingWindowCounterRateLimiter(self.storage)
        self._items: dict[int, RateLimitItem] = {}

    def _per_minute(self, amount: int) -> RateLimitItem:
        item = self._items.get(amount)
        if item is None:
            item = self._items[amount] = RateLimitItemPerMinute(amount)
        return item

    async def admit(self, limits: Sequence[RateLimit], estimated_tokens: int) -> Admission:
        """Count one request against each limit; RateLimited (with the wait) when one is full."""
        try:
            for limit in limits:
                key = (limit.scope, limit.subject)
                if limit.tokens_per_minute is not None:
                    item = self._per_minute(limit.tokens_per_minute)
                    cost = min(max(estimated_tokens, 1), limit.tokens_per_minute)
                    if not await self._tokens.test(item, "tokens", *key, cost=cost):
                        wait = await self._wait(self._tokens, item, "tokens", *key)
                        raise RateLimited(
                            f"rate limit of {limit.name} reached: {limit.tokens_per_minute} "
                            f"tokens per minute (retry after {wait:g}s)",
                            retry_after=wait,
                        )
                if limit.requests_per_minute is not None:
                    item = self._per_minute(limit.requests_per_minute)
                    if not await self._requests.hit(item, "requests", *key):
                        wait = await self._wait(self._requests, item, "requests", *key)
                        raise RateLimited(
                            f"rate limit of {limit.name} reached: {limit.requests_per_minute} "
                            f"requests per minute (retry after {wait:g}s)",
                            retry_after=wait,
                        )
        except StorageError as exc:
            raise _unreachable(exc) from None
        return Admission(limits=tuple(limits))

    async def count_tokens(self, admission: Admission, tokens: int) -> None:
        """Count a finished call's tokens against the token limits it was admitted under."""
        if tokens <= 0:
            return
        try:
            for limit in admission.limits:
                if limit.tokens_per_minute is not None:
                    item = self._per_minute(limit.tokens_per_minute)
                    # A call may exceed what is left; count what fits so the window fills up.
                    await self._tokens.hit(
                        item,
                        "tokens",
                        limit.scope,
                        limit.subject,
                        cost=min(tokens, limit.tokens_per_minute),
                    )
        except StorageError as exc:
            raise _unreachable(exc) from None

    @staticmethod
    async def _wait(
        strategy: MovingWindowRateLimiter | SlidingWindowCounterRateLimiter,
        item: RateLimitItem,
        *identifiers: str,
    ) -> float:
        stats = await strategy.get_window_stats(item, *identifiers)
        return max(1.0, math.ceil(stats.reset_time - time.time()))

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.aclose()

    async def clear(self) -> None:
        """Forget every count (tests)."""
        await self.storage.reset()


def _unreachable(exc: Exception) -> StoreUnavailable:
    # Fail closed: a limit we cannot check is a limit we cannot promise.
    return StoreUnavailable(f"rate limit store unreachable: {exc}", status=503)
