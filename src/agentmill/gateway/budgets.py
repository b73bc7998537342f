"""Budgets that never overspend (DESIGN.md decision 6).

Before a call, its worst-case price is *reserved* against every budget that applies (workspace,
API key, user, run), all or none, atomically; afterwards the reservation is *settled* to the real
price, or *released* if the call failed. A budget admits a call only while
``spent + reserved + worst case <= limit``, so concurrent calls cannot together pass it.

Stores: :class:`MemoryBudgetStore` for one process (embedded mode), :class:`RedisBudgetStore`
when several processes share budgets (a Lua script makes reserve-all-or-none atomic). Neither is
the record of spending: the usage records in the database are. A store learns a budget's
spending so far from the database the first time it meets it in a period (``SpentLoader``), so a
restart or a lost Redis starts from the truth. Every failure to reach the store refuses the call.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Protocol

from agentmill.domain.budgets import Budget as Budget
from agentmill.domain.budgets import BudgetLine as BudgetLine
from agentmill.domain.budgets import BudgetPeriod as BudgetPeriod
from agentmill.domain.budgets import BudgetScope as BudgetScope
from agentmill.domain.budgets import exceeded as exceeded
from agentmill.domain.budgets import lines_for as lines_for
from agentmill.domain.budgets import period_bounds as period_bounds
from agentmill.errors import StoreUnavailable
from agentmill.redis_pool import redis_client

if TYPE_CHECKING:  # redis loads only when a process shares budgets through it
    from redis.asyncio import Redis

_NANO = Decimal("0.000000001")  # the stores count nano-USD as integers


# Loads what a budget line has spent so far, from the usage records.
SpentLoader = Callable[[BudgetLine], Awaitable[Decimal]]


@dataclass(frozen=True, kw_only=True)
class Reservation:
    id: str
    lines: tuple[BudgetLine, ...]
    amount: Decimal


class BudgetStore(Protocol):
    async def reserve(
        self, lines: Sequence[BudgetLine], amount: Decimal, load: SpentLoader
    ) -> Reservation:
        """Hold ``amount`` against every line, or raise BudgetExceeded and hold nothing."""
        ...

    async def settle(self, reservation: Reservation, actual: Decimal) -> list[BudgetLine]:
        """Turn the hold into ``actual`` spending; returns the lines that crossed their soft
        limit with this call (each line at most once per period)."""
        ...

    async def release(self, reservation: Reservation) -> None: ...

    async def aclose(self) -> None: ...


class MemoryBudgetStore:
    """For one process: check-and-hold runs without an ``await`` in between, so it is atomic."""

    def __init__(self) -> None:
        self._spent: dict[str, Decimal] = {}
        self._reserved: dict[str, Decimal] = {}
        self._warned: set[str] = set()
        self._holds: dict[str, Reservation] = {}

    async def reserve(
        self, lines: Sequence[BudgetLine], amount: Decimal, load: SpentLoader
    ) -> Reservation:
        for line in lines:
            if line.key not in self._spent:
                spent = await load(line)
                self._spent.setdefault(line.key, spent)
        # From here to the end: no await, so no other call can interleave.
        for line in lines:
            spent, reserved = self._spent[line.key], self._reserved.get(line.key, Decimal(0))
            if spent + reserved + amount > line.budget.limit:
                raise exceeded(line, spent, reserved, amount)
        for line in lines:
            self._reserved[line.key] = self._reserved.get(line.key, Decimal(0)) + amount
        reservation = Reservation(id=uuid.uuid4().hex, lines=tuple(lines), amount=amount)
        self._holds[reservation.id] = reservation
        return reservation

    async def settle(self, reservation: Reservation, actual: Decimal) -> list[BudgetLine]:
        if self._holds.pop(reservation.id, None) is None:
            return []
        crossed = []
        for line in reservation.lines:
            self._reserved[line.key] -= reservation.amount
            self._spent[line.key] += actual
            soft = line.budget.limit * line.budget.soft_ratio
            if self._spent[line.key] >= soft and line.key not in self._warned:
                self._warned.add(line.key)
                crossed.append(line)
        return crossed

    async def release(self, reservation: Reservation) -> None:
        if self._holds.pop(reservation.id, None) is not None:
            for line in reservation.lines:
                self._reserved[line.key] -= reservation.amount

    async def aclose(self) -> None:
        return None


# KEYS: one hash per line. ARGV: reservation id, amount, expiry (unix s), then one limit per key.
# A hash holds "spent" and one field per live hold ("h:<id>" = "<amount>:<expires>"); holds of
# a process that died expire, so they cannot pin a budget forever.
_RESERVE = """
local now = tonumber(redis.call('TIME')[1])
for i, key in ipairs(KEYS) do
  if redis.call('HEXISTS', key, 'spent') == 0 then return {-1, i} end
end
local amount = tonumber(ARGV[2])
local totals = {}
for i, key in ipairs(KEYS) do
  local fields = redis.call('HGETALL', key)
  local spent, held = 0, 0
  for j = 1, #fields, 2 do
    local name, value = fields[j], fields[j + 1]
    if name == 'spent' then
      spent = tonumber(value)
    elseif string.sub(name, 1, 2) == 'h:' then
      local sep = string.find(value, ':', 1, true)
      if tonumber(string.sub(value, sep + 1)) < now then
        redis.call('HDEL', key, name)
      else
        held = held + tonumber(string.sub(value, 1, sep - 1))
      end
    end
  end
  if spent + held + amount > tonumber(ARGV[3 + i]) then return {0, i, spent, held} end
end
for i, key in ipairs(KEYS) do
  redis.call('HSET', key, 'h:' .. ARGV[1], ARGV[2] .. ':' .. ARGV[3])
end
return {1}
"""

# KEYS: the lines' hashes. ARGV: reservation id, actual amount, then one soft limit per key.
# Returns the 1-based indexes of lines that crossed their soft limit for the first time.
_SETTLE = """
local crossed = {}
for i, key in ipairs(KEYS) do
  if redis.call('HDEL', key, 'h:' .. ARGV[1]) == 1 then
    local spent = redis.call('HINCRBY', key, 'spent', ARGV[2])
    if spent >= tonumber(ARGV[2 + i]) and redis.call('HSETNX', key, 'warned', 1) == 1 then
      table.insert(crossed, i)
    end
  end
end
return crossed
"""


class RedisBudgetStore:
    """Budgets shared by every process through Redis."""

    def __init__(self, redis: Redis, *, prefix: str = "agentmill", hold_seconds: int = 900) -> None:
        self.redis = redis
        self.prefix = f"{prefix}:budget:"
        self.hold_seconds = hold_seconds  # longer than any call; then a dead process's hold ends
        self._reserve = redis.register_script(_RESERVE)
        self._settle = redis.register_script(_SETTLE)

    @classmethod
    def from_url(cls, url: str, **kwargs: int | str) -> RedisBudgetStore:
        return cls(redis_client(url), **kwargs)  # type: ignore[arg-type]

    def _keys(self, lines: Sequence[BudgetLine]) -> list[str]:
        return [self.prefix + line.key for line in lines]

    async def reserve(
        self, lines: Sequence[BudgetLine], amount: Decimal, load: SpentLoader
    ) -> Reservation:
        reservation = Reservation(id=uuid.uuid4().hex, lines=tuple(lines), amount=amount)
        if not lines:
            return reservation
        keys = self._keys(lines)
        nanos = _nanos(amount)
        now = int(datetime.now(UTC).timestamp())
        args: list[str | int] = [reservation.id, nanos, now + self.hold_seconds]
        args += [_nanos(line.budget.limit) for line in lines]
        try:
            for _ in range(len(lines) + 1):
                result = await self._reserve(keys=keys, args=args)
                if result[0] == 1:
                    return reservation
                line = lines[int(result[1]) - 1]
                if result[0] == -1:  # first use in this period (or Redis lost it): ask the DB
                    await self._initialize(self.prefix + line.key, line, await load(line))
                    continue
                raise exceeded(line, _usd(result[2]), _usd(result[3]), amount)
        except redis_errors() as exc:
            raise _unreachable(exc) from None
        raise StoreUnavailable("budget store: could not initialize budgets", status=503)

    async def _initialize(self, key: str, line: BudgetLine, spent: Decimal) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hsetnx(key, "spent", _nanos(spent))
            if line.period_end is not None:
                pipe.expireat(key, line.period_end + timedelta(days=1))
            await pipe.execute()

    async def settle(self, reservation: Reservation, actual: Decimal) -> list[BudgetLine]:
        if not reservation.lines:
            return []
        soft: list[str | int] = [
            _nanos(line.budget.limit * line.budget.soft_ratio) for line in reservation.lines
        ]
        try:
            crossed = await self._settle(
                keys=self._keys(reservation.lines), args=[reservation.id, _nanos(actual), *soft]
            )
        except redis_errors() as exc:
            raise _unreachable(exc) from None
        return [reservation.lines[int(i) - 1] for i in crossed]

    async def release(self, reservation: Reservation) -> None:
        if not reservation.lines:
            return
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                for key in self._keys(reservation.lines):
                    pipe.hdel(key, "h:" + reservation.id)
                await pipe.execute()
        except redis_errors() as exc:
            raise _unreachable(exc) from None

    async def aclose(self) -> None:
        await self.redis.aclose()


def _nanos(amount: Decimal) -> int:
    return int((amount / _NANO).to_integral_value())


def _usd(nanos: int | bytes) -> Decimal:
    return Decimal(int(nanos)) * _NANO


def _unreachable(exc: Exception) -> StoreUnavailable:
    # Fail closed: a budget we cannot check is a budget we cannot promise.
    return StoreUnavailable(f"budget store unreachable, call refused: {exc}", status=503)


def redis_errors() -> type[Exception]:
    """Redis's error class, imported only by the processes that talk to Redis."""
    from redis.exceptions import RedisError

    return RedisError
