"""Circuit breakers and health figures, one per provider+model.

A breaker is *closed* while calls work. After ``failure_threshold`` failures in a row it *opens*:
calls skip the model at once (the gateway fails over) for ``open_seconds``. Then it is
*half-open*: one call is let through as a probe; success closes it, failure opens it again.
Only failures that say the provider is unwell count (timeouts, connection errors, 5xx, 429), not
a caller's bad request.

Breakers live in each process: each process learns a provider's health from its own calls,
which is what makes skipping a broken one immediate without a shared store on the call path.

The circuit is shared by every caller of an operator's model, but the figures shown are kept per
workspace as well: a workspace sees its own calls, latencies and errors (and the circuit's
state, which decides where its calls go), never another's; operator-wide figures are for the
operator (``health(None)``).
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum
from statistics import quantiles

_NEVER = 2**62  # failures in a row that a breaker which never opens would need
_WORKSPACES_KEPT = 1000  # per breaker: the least recently calling workspace's figures go first


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, kw_only=True)
class BreakerPolicy:
    failure_threshold: int = 5  # failures in a row that open the breaker
    open_seconds: float = 30.0  # how long it stays open before a probe
    window: int = 200  # recent calls kept for latency percentiles and error rate


@dataclass(frozen=True, kw_only=True)
class ModelHealth:
    """What ``GET /providers/health`` shows for one provider+model."""

    provider: str
    model: str
    state: BreakerState
    calls: int  # in the recent window
    error_rate: float
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    latency_p99_ms: float | None
    consecutive_failures: int
    last_error: str | None
    retry_in_seconds: float | None  # while open: when the next probe is allowed


class _Figures:
    """Recent calls of one caller (or of all): latency and outcome, the run of failures."""

    def __init__(self, window: int) -> None:
        self.recent: deque[tuple[float, bool]] = deque(maxlen=window)
        self.failures_in_a_row = 0
        self.last_error: str | None = None

    def add(self, latency_ms: float, error: str | None) -> None:
        self.recent.append((latency_ms, error is None))
        if error is None:
            self.failures_in_a_row = 0
        else:
            self.last_error = error
            self.failures_in_a_row += 1


class Breaker:
    def __init__(
        self,
        provider: str,
        model: str,
        policy: BreakerPolicy,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.provider = provider
        self.model = model
        self.policy = policy
        self._clock = clock
        self.state = BreakerState.CLOSED
        self.failures_in_a_row = 0
        self.opened_at = 0.0
        self._probing = False
        self.last_error: str | None = None
        self._recent: deque[tuple[float, bool]] = deque(maxlen=policy.window)
        self._by_workspace: OrderedDict[str | None, _Figures] = OrderedDict()

    def allow(self) -> bool:
        """May a call go to this model now? (In half-open state, only the one probe may.)"""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN:
            if self._clock() - self.opened_at < self.policy.open_seconds:
                return False
            self.state = BreakerState.HALF_OPEN
            self._probing = False
        if self._probing:
            return False
        self._probing = True
        return True

    def retry_in(self) -> float | None:
        if self.state is not BreakerState.OPEN:
            return None
        return max(0.0, self.policy.open_seconds - (self._clock() - self.opened_at))

    def _figures(self, workspace_id: str | None) -> _Figures:
        figures = self._by_workspace.get(workspace_id)
        if figures is None:
            figures = self._by_workspace[workspace_id] = _Figures(self.policy.window)
            if len(self._by_workspace) > _WORKSPACES_KEPT:
                self._by_workspace.popitem(last=False)
        else:
            self._by_workspace.move_to_end(workspace_id)
        return figures

    def succeeded(self, latency_ms: float, *, workspace_id: str | None = None) -> None:
        self._figures(workspace_id).add(latency_ms, None)
        self._recent.append((latency_ms, True))
        self.failures_in_a_row = 0
        self._probing = False
        self.state = BreakerState.CLOSED

    def failed(
        self,
        error: str,
        latency_ms: float,
        *,
        counts: bool = True,
        workspace_id: str | None = None,
    ) -> None:
        """Record a failure; ``counts`` is False for failures that say nothing of the provider's
        health (a bad request), which are kept in the figures but never open the breaker."""
        self._figures(workspace_id).add(latency_ms, error)
        self._recent.append((latency_ms, False))
        self.last_error = error
        if not counts:
            if self.state is BreakerState.HALF_OPEN:
                self._probing = False  # the probe proved nothing; let another through
            return
        self.failures_in_a_row += 1
        if (
            self.state is BreakerState.HALF_OPEN
            or self.failures_in_a_row >= self.policy.failure_threshold
        ):
            self.state = BreakerState.OPEN
            self.opened_at = self._clock()
            self._probing = False

    def abandoned(self) -> None:
        """The call was cancelled before it finished: free the probe slot, learn nothing."""
        if self.state is BreakerState.HALF_OPEN:
            self._probing = False

    def called_by(self, workspace_id: str | None) -> bool:
        return workspace_id in self._by_workspace

    def health(self, workspace_id: str | None = None, *, everyone: bool = True) -> ModelHealth:
        """The breaker's figures: of every call (``everyone``), else of ``workspace_id``'s own
        calls only. The state is the circuit's, shared by all its callers."""
        if everyone:
            recent, in_a_row, last_error = self._recent, self.failures_in_a_row, self.last_error
        else:
            own = self._by_workspace.get(workspace_id) or _Figures(1)
            recent, in_a_row, last_error = own.recent, own.failures_in_a_row, own.last_error
        latencies = sorted(latency for latency, _ in recent)
        errors = sum(1 for _, ok in recent if not ok)
        cuts = quantiles(latencies, n=100, method="inclusive") if len(latencies) >= 2 else None

        def percentile(p: int) -> float | None:
            if cuts is None:
                return round(latencies[0], 3) if latencies else None
            return round(cuts[p - 1], 3)

        allowed = self.retry_in()
        return ModelHealth(
            provider=self.provider,
            model=self.model,
            state=self.state,
            calls=len(recent),
            error_rate=round(errors / len(recent), 4) if recent else 0.0,
            latency_p50_ms=percentile(50),
            latency_p95_ms=percentile(95),
            latency_p99_ms=percentile(99),
            consecutive_failures=in_a_row,
            last_error=last_error,
            retry_in_seconds=round(allowed, 3) if allowed is not None else None,
        )


class Breakers:
    """Every breaker of a gateway, created on first use."""

    def __init__(
        self, policy: BreakerPolicy | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.policy = policy or BreakerPolicy()
        self._clock = clock
        self._breakers: dict[tuple[str, str], Breaker] = {}

    def get(self, provider: str, model: str, *, opens: bool = True) -> Breaker:
        """The model's breaker; with ``opens=False`` one that keeps figures but never opens."""
        key = (provider, model)
        breaker = self._breakers.get(key)
        if breaker is None:
            policy = self.policy if opens else replace(self.policy, failure_threshold=_NEVER)
            breaker = self._breakers[key] = Breaker(provider, model, policy, self._clock)
        return breaker

    def all(self) -> list[Breaker]:
        return [b for _, b in sorted(self._breakers.items())]
