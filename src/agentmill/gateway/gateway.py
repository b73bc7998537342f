"""The gateway: one call interface over every provider, and the one place that owns the
sequence around a call.

For each call: resolve the model and its fallbacks → admit it under the caller's rate limits →
for each model in turn (skipping those whose circuit is open or whose own limit is full): reserve
its worst-case price against every budget → call the provider, retrying retryable failures with
backoff → on success price the usage, settle the budgets, count the tokens, record the call; on a
retryable failure release the budgets and fail over to the next model; on a terminal failure
(400, 401, budget) stop.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import TypeVar

import structlog

from agentmill.domain.backoff import backoff_delay
from agentmill.errors import (
    RateLimited,
    RetryableError,
    StepFailed,
    StoreUnavailable,
    UnknownModel,
)
from agentmill.gateway.breaker import Breaker, BreakerPolicy, Breakers, ModelHealth
from agentmill.gateway.budgets import (
    BudgetLine,
    BudgetStore,
    MemoryBudgetStore,
    Reservation,
    lines_for,
)
from agentmill.gateway.config import (
    GatewayConfig,
    ModelConfig,
    ProviderConfig,
    parse_gateway_config,
)
from agentmill.gateway.policy import (
    NO_POLICY,
    PolicySource,
    StaticPolicies,
    UsageSink,
    WorkspacePolicy,
)
from agentmill.gateway.pricing import Pricing, with_markup
from agentmill.gateway.providers import build_provider
from agentmill.gateway.ratelimits import Admission, RateLimit, RateLimiter
from agentmill.gateway.types import (
    CallContext,
    CallReport,
    ChatDelta,
    ChatRequest,
    ChatResponse,
    EmbedRequest,
    EmbedResponse,
    Provider,
    StreamCollector,
    Usage,
)

log = structlog.get_logger("agentmill.gateway")

T = TypeVar("T")
_SCRIPTED = ProviderConfig(name="scripted", kind="scripted")
Sink = Callable[[CallReport], None]


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    tries_per_model: int = 2
    base_delay: float = 0.25  # seconds; doubles per try, with jitter
    max_delay: float = 4.0
    max_retry_after: float = 10.0  # a longer Retry-After fails over instead of waiting

    def delay(self, attempt: int, retry_after: float | None) -> float | None:
        """Seconds to wait before try ``attempt + 1``, or None to fail over now."""
        if retry_after is not None:
            return float(retry_after) if retry_after <= self.max_retry_after else None
        return backoff_delay(attempt, base=self.base_delay, cap=self.max_delay, jitter=True)


@dataclass(frozen=True, kw_only=True)
class Route:
    """A model to try: its provider, how it is configured, and its breaker."""

    model: str  # provider/model
    provider: Provider
    config: ProviderConfig | None  # None: a provider registered in code, free unless configured
    breaker: Breaker


@dataclass(frozen=True, kw_only=True)
class _Plan:
    context: CallContext
    policy: WorkspacePolicy
    in_tokens: int  # estimated, for rate limits (and usage a provider does not report)
    max_in_tokens: int  # at most: the budgets' worst case must never be below the truth
    out_tokens: int  # at most (as asked: a provider that answers more is charged the overage)
    lines: list[BudgetLine]  # the budgets the call is held to
    routes: list[Route]
    admission: Admission | None


class Gateway:
    """One call interface over every configured provider; see the module docstring."""

    def __init__(
        self,
        providers: list[Provider] | None = None,
        *,
        config: GatewayConfig | None = None,
        policies: PolicySource | None = None,
        limiter: RateLimiter | None = None,
        budgets: BudgetStore | None = None,
        recorder: UsageSink | None = None,
        breakers: BreakerPolicy | None = None,
        retry: RetryPolicy | None = None,
        default_max_tokens: int = 4096,
        store_wait: float = 60.0,
    ) -> None:
        self.config = config or parse_gateway_config({}, {})
        self.policies: PolicySource = policies or StaticPolicies()
        self.limiter = limiter or RateLimiter()
        self.budgets: BudgetStore = budgets or MemoryBudgetStore()
        self.recorder = recorder
        self.breakers = Breakers(breakers)
        self.retry = retry or RetryPolicy()
        self.pricing = Pricing(self.config.models)
        self.default_max_tokens = default_max_tokens
        # How long a call that was made waits for the budget store to take its charge, and a
        # step's call for the budget or rate-limit store to answer (engine/context.py).
        self.store_wait = store_wait
        self._registered: dict[str, Provider] = {}
        self._built: dict[tuple[str | None, str], tuple[ProviderConfig, Provider]] = {}
        if providers is not None:
            self._configured: Mapping[str, ProviderConfig] = {}
            for provider in providers:
                self.register(provider)
        else:  # the offline scripted provider is always there
            self._configured = {"scripted": _SCRIPTED, **self.config.providers}

    # ------------------------------------------------------------------ providers

    def register(self, provider: Provider) -> None:
        """Serve ``provider.name/…`` models with this provider object (tests, embedding apps)."""
        self._registered[provider.name] = provider

    def provider_names(self, policy: WorkspacePolicy = NO_POLICY) -> list[str]:
        return sorted({*self._registered, *self._configured, *policy.providers})

    def model_names(self) -> list[str]:
        """The models named in configuration, for ``GET /v1/models``."""
        names = set(self.config.models)
        if "scripted" in self._registered or "scripted" in self._configured:
            names.add("scripted/echo")
        return sorted(names)

    def _route(self, model: str, context: CallContext, policy: WorkspacePolicy) -> Route:
        if "/" not in model or not model.split("/", 1)[1]:
            raise UnknownModel(f"model {model!r}: model names are provider/model")
        name = model.split("/", 1)[0]
        config = policy.providers.get(name)
        scope = context.workspace_id if config is not None else None
        if config is None:
            config = self._configured.get(name)
        if config is not None:
            built = self._built.get((scope, name))
            if built is None or built[0] != config:  # new, or reconfigured since
                built = self._built[(scope, name)] = (config, build_provider(config))
            provider = built[1]
        elif name in self._registered:
            provider = self._registered[name]
        else:
            known = ", ".join(self.provider_names(policy)) or "none"
            raise UnknownModel(f"unknown provider {name!r} (configured: {known})")
        label = f"{scope}:{name}" if scope else name
        # A provider without outages (the scripted one: its failures are scripted per step
        # attempt) keeps a breaker's figures but never opens it.
        opens = getattr(provider, "has_outages", True)
        return Route(
            model=model,
            provider=provider,
            config=config,
            breaker=self.breakers.get(label, model.split("/", 1)[1], opens=opens),
        )

    def health(self, workspace_id: str | None = None) -> list[ModelHealth]:
        """Breaker state and recent figures. ``None``: the operator's view, the server's models
        with every caller's figures. A workspace: its own providers, and the server's models it
        has called with its own figures only (another workspace's calls, latencies and errors
        are that workspace's business)."""
        if workspace_id is None:
            return [b.health() for b in self.breakers.all() if ":" not in b.provider]
        own = f"{workspace_id}:"
        return [
            b.health(workspace_id, everyone=False)
            for b in self.breakers.all()
            if (":" not in b.provider and b.called_by(workspace_id)) or b.provider.startswith(own)
        ]

    # ------------------------------------------------------------------ calls

    async def chat(self, request: ChatRequest, *, sink: Sink | None = None) -> ChatResponse:
        """One completion. Raises RetryableError (every model failed, or a limit store is
        down), RateLimited, BudgetExceeded, StepFailed (refused upstream) or UnknownModel."""
        plan = await self._plan(request.model, request.fallbacks, request.context, request)

        async def invoke(route: Route) -> tuple[ChatResponse, Usage]:
            response = await route.provider.chat(replace(request, model=route.model))
            return response, response.usage

        response, usage, notices, route, latency = await self._call(
            plan, request.tries_per_model, invoke, sink
        )
        return replace(
            response, model=route.model, usage=usage, latency_ms=latency, notices=notices
        )

    async def embed(self, request: EmbedRequest, *, sink: Sink | None = None) -> EmbedResponse:
        plan = await self._plan(request.model, (), request.context, None, embed=request)

        async def invoke(route: Route) -> tuple[EmbedResponse, Usage]:
            response = await route.provider.embed(replace(request, model=route.model))
            return response, response.usage

        response, usage, _, route, latency = await self._call(plan, None, invoke, sink)
        return replace(response, model=route.model, usage=usage, latency_ms=latency)

    async def stream(
        self, request: ChatRequest, *, sink: Sink | None = None
    ) -> AsyncIterator[ChatDelta]:
        """A completion as deltas; the last one has the finish reason and the priced usage.
        Failover happens only before the first delta: after it, the caller has seen output."""
        plan = await self._plan(request.model, request.fallbacks, request.context, request)
        failures: list[str] = []
        last: RetryableError | None = None
        for route in plan.routes:
            reservation = await self._enter(plan, route, failures)
            if isinstance(reservation, RetryableError):
                last = reservation
                continue
            for attempt in range(1, self._tries(request.tries_per_model) + 1):
                collector = StreamCollector(route.model)
                started = time.perf_counter()
                settled = False
                sent = False
                try:
                    async for delta in route.provider.stream(replace(request, model=route.model)):
                        collector.add(delta)
                        if delta.usage is not None:
                            usage, notices = await self._succeed(
                                plan, route, reservation, delta.usage, started, sink
                            )
                            settled = True
                            delta = replace(delta, usage=usage, model=route.model, notices=notices)
                        sent = True
                        yield delta
                    if not settled:  # the provider reported no usage: count it ourselves
                        usage, notices = await self._succeed(
                            plan,
                            route,
                            reservation,
                            estimated_usage(plan.in_tokens, collector),
                            started,
                            sink,
                        )
                        settled = True
                        yield ChatDelta(usage=usage, model=route.model, notices=notices)
                    return
                except RetryableError as exc:
                    self._failed(plan, route, exc, started, sink)
                    if sent:
                        await self._settle_partial(plan, route, reservation, collector)
                        raise
                    last = exc
                    failures.append(f"{route.model}: {exc}")
                    wait = self._backoff(route, attempt, request.tries_per_model, exc)
                    if wait is None:
                        break
                    await asyncio.sleep(wait)
                except StepFailed as exc:
                    self._failed(plan, route, exc, started, sink, counts=False)
                    await self.budgets.release(reservation)
                    raise
                except BaseException:  # cancelled, or the consumer stopped reading
                    route.breaker.abandoned()
                    if not settled:
                        await self._settle_partial(plan, route, reservation, collector)
                    raise
            await self.budgets.release(reservation)
        raise self._exhausted(plan, failures, last)

    # ------------------------------------------------------------------ the sequence

    async def _plan(
        self,
        model: str,
        fallbacks: tuple[str, ...],
        context: CallContext,
        request: ChatRequest | None,
        *,
        embed: EmbedRequest | None = None,
    ) -> _Plan:
        policy = (
            await self.policies.policy(context.workspace_id) if context.workspace_id else NO_POLICY
        )
        chain = [model, *(fallbacks or self._model(model).fallbacks)]
        routes = [self._route(name, context, policy) for name in dict.fromkeys(chain)]
        if request is not None:
            in_tokens = estimate_input_tokens(request)
            max_in_tokens = max_input_tokens(request)
            out_tokens = request.max_tokens or self.default_max_tokens
        else:
            texts = embed.inputs if embed is not None else ()
            in_tokens, out_tokens = sum(len(t) for t in texts) // 3 + len(texts), 0
            max_in_tokens = sum(_utf8(t) + _PER_MESSAGE for t in texts) + _PER_REQUEST
        limits = self._caller_limits(context, policy)
        admission = await self.limiter.admit(limits, in_tokens) if limits else None
        return _Plan(
            context=context,
            policy=policy,
            routes=routes,
            admission=admission,
            in_tokens=in_tokens,
            max_in_tokens=max_in_tokens,
            out_tokens=out_tokens,
            lines=self._lines(context, policy),
        )

    def _model(self, model: str) -> ModelConfig:
        return self.config.models.get(model) or ModelConfig(name=model)

    @staticmethod
    def _caller_limits(context: CallContext, policy: WorkspacePolicy) -> list[RateLimit]:
        subjects = {
            "workspace": context.workspace_id,
            "user": context.user_id,
            "api_key": context.api_key_id,
        }
        limits = []
        for limit in policy.limits:
            subject = subjects[limit.scope]
            if subject is None or (limit.subject_id is not None and limit.subject_id != subject):
                continue
            limits.append(
                RateLimit(
                    scope=limit.scope,
                    subject=subject,
                    requests_per_minute=limit.requests_per_minute,
                    tokens_per_minute=limit.tokens_per_minute,
                )
            )
        return limits

    def _tries(self, override: int | None) -> int:
        return max(1, override if override is not None else self.retry.tries_per_model)

    def _backoff(
        self, route: Route, attempt: int, override: int | None, exc: RetryableError
    ) -> float | None:
        if attempt >= self._tries(override) or not route.breaker.allow():
            return None
        return self.retry.delay(attempt, exc.retry_after)

    async def _enter(
        self, plan: _Plan, route: Route, failures: list[str]
    ) -> Reservation | RetryableError:
        """Pass the model's breaker and limits and reserve its worst case; or say why not."""
        if not route.breaker.allow():
            wait = route.breaker.retry_in()
            failures.append(f"{route.model}: circuit open")
            return RetryableError(f"{route.model}: circuit open", retry_after=wait, status=503)
        configured = self._model(route.model)
        if configured.requests_per_minute or configured.tokens_per_minute:
            limit = RateLimit(
                scope="model",
                subject=route.model,
                requests_per_minute=configured.requests_per_minute,
                tokens_per_minute=configured.tokens_per_minute,
            )
            try:
                await self.limiter.admit([limit], plan.in_tokens)
            except RateLimited as exc:
                route.breaker.abandoned()
                failures.append(f"{route.model}: {exc}")
                return exc
        worst = Decimal(0)
        if plan.lines:
            cost = self.pricing.worst_case(
                route.model, self._pricing_config(route), plan.max_in_tokens, plan.out_tokens
            )
            worst = with_markup(cost, plan.policy.markup)
        try:
            return await self.budgets.reserve(plan.lines, worst, self.policies.spent)
        except BaseException:
            route.breaker.abandoned()
            raise

    @staticmethod
    def _lines(context: CallContext, policy: WorkspacePolicy) -> list[BudgetLine]:
        if context.workspace_id is None or not policy.budgets:
            return []
        return lines_for(
            policy.budgets,
            workspace_id=context.workspace_id,
            api_key_id=context.api_key_id,
            user_id=context.user_id,
            run_id=context.run_id,
            now=datetime.now(UTC),
        )

    async def _call(
        self,
        plan: _Plan,
        tries: int | None,
        invoke: Callable[[Route], Awaitable[tuple[T, Usage]]],
        sink: Sink | None,
    ) -> tuple[T, Usage, tuple[str, ...], Route, float]:
        failures: list[str] = []
        last: RetryableError | None = None
        for route in plan.routes:
            reservation = await self._enter(plan, route, failures)
            if isinstance(reservation, RetryableError):
                last = reservation
                continue
            for attempt in range(1, self._tries(tries) + 1):
                started = time.perf_counter()
                try:
                    result, raw = await invoke(route)
                except RetryableError as exc:
                    self._failed(plan, route, exc, started, sink)
                    last = exc
                    failures.append(f"{route.model}: {exc}")
                    wait = self._backoff(route, attempt, tries, exc)
                    if wait is None:
                        break
                    await asyncio.sleep(wait)
                    continue
                except StepFailed as exc:
                    self._failed(plan, route, exc, started, sink, counts=False)
                    await self.budgets.release(reservation)
                    raise
                except BaseException:
                    route.breaker.abandoned()
                    await asyncio.shield(self.budgets.release(reservation))
                    raise
                usage, notices = await self._succeed(plan, route, reservation, raw, started, sink)
                latency = (time.perf_counter() - started) * 1000
                return result, usage, notices, route, latency
            await self.budgets.release(reservation)
        raise self._exhausted(plan, failures, last)

    @staticmethod
    def _pricing_config(route: Route) -> ProviderConfig:
        # A provider registered in code is priced like the scripted one: free unless configured.
        return route.config or _SCRIPTED

    def _price(self, plan: _Plan, route: Route, usage: Usage) -> Usage:
        cost = usage.cost
        if not cost:
            cost = self.pricing.cost(route.model, self._pricing_config(route), usage)
        return replace(usage, cost=cost, price=with_markup(cost, plan.policy.markup))

    async def _succeed(
        self,
        plan: _Plan,
        route: Route,
        reservation: Reservation,
        raw: Usage,
        started: float,
        sink: Sink | None,
    ) -> tuple[Usage, tuple[str, ...]]:
        latency = (time.perf_counter() - started) * 1000
        route.breaker.succeeded(latency, workspace_id=plan.context.workspace_id)
        usage = self._price(plan, route, raw)
        # Recorded first: what the provider did is charged even if what follows fails.
        self._report(
            sink,
            CallReport(context=plan.context, model=route.model, usage=usage, latency_ms=latency),
        )
        if usage.price > reservation.amount and reservation.lines:
            log.warning(
                "call cost more than its worst case (the provider answered more than asked)",
                model=route.model,
                reserved=str(reservation.amount),
                price=str(usage.price),
                workspace=plan.context.workspace_id,
            )
        crossed = await self._settle(reservation, usage.price)
        if plan.admission is not None:
            await self.limiter.count_tokens(plan.admission, usage.total_tokens)
        notices = tuple(
            f"{line.label} passed {line.budget.soft_ratio:.0%} of its {line.budget.limit} USD"
            for line in crossed
        )
        for notice in notices:
            log.warning("budget soft limit", notice=notice, workspace=plan.context.workspace_id)
        return usage, notices

    async def _settle(self, reservation: Reservation, price: Decimal) -> list[BudgetLine]:
        """Charge a call that was made. The work is done, so a budget store that cannot be
        reached is waited for (up to ``store_wait`` seconds) rather than the charge dropped;
        past that the hold stays in the store until it expires, and the usage record (written
        already) is what the store reloads from."""
        deadline = time.monotonic() + self.store_wait
        attempt = 1
        while True:
            try:
                return await self.budgets.settle(reservation, price)
            except StoreUnavailable as exc:
                delay = backoff_delay(attempt, base=0.1, cap=2.0)
                if time.monotonic() + delay > deadline:
                    log.error("could not settle a call's budgets", error=str(exc))
                    return []
                await asyncio.sleep(delay)
                attempt += 1

    async def _settle_partial(
        self,
        plan: _Plan,
        route: Route,
        reservation: Reservation,
        collector: StreamCollector,
    ) -> None:
        """A stream ended early: charge what was produced (the provider did the work)."""
        usage = self._price(plan, route, estimated_usage(plan.in_tokens, collector))
        await asyncio.shield(self._settle(reservation, usage.price))

    def _failed(
        self,
        plan: _Plan,
        route: Route,
        exc: RetryableError | StepFailed,
        started: float,
        sink: Sink | None,
        *,
        counts: bool = True,
    ) -> None:
        latency = (time.perf_counter() - started) * 1000
        # A 4xx says the request was wrong, not the provider: it never opens the breaker.
        route.breaker.failed(
            str(exc), latency, counts=counts, workspace_id=plan.context.workspace_id
        )
        report = CallReport(
            context=plan.context,
            model=route.model,
            usage=Usage(),
            latency_ms=latency,
            error=str(exc),
            status=exc.status,
        )
        self._report(sink, report)
        log.info("model call failed", model=route.model, error=str(exc), status=exc.status)

    def _report(self, sink: Sink | None, report: CallReport) -> None:
        if sink is not None:
            sink(report)
        elif self.recorder is not None:
            self.recorder.record(report)

    @staticmethod
    def _exhausted(plan: _Plan, failures: list[str], last: RetryableError | None) -> RetryableError:
        if last is None:
            return RetryableError("no model could be tried", status=503)
        if len(plan.routes) == 1:
            return last
        waits = [last.retry_after] if last.retry_after is not None else []
        message = "every model failed: " + "; ".join(failures)
        if isinstance(last, RateLimited) and all("rate limit" in f for f in failures):
            return RateLimited(message, retry_after=min(waits) if waits else None)
        return RetryableError(
            message, retry_after=min(waits) if waits else None, status=last.status
        )

    async def aclose(self) -> None:
        for provider in [*self._registered.values(), *(p for _, p in self._built.values())]:
            await provider.aclose()
        await self.budgets.aclose()
        await self.limiter.aclose()
        if self.recorder is not None:
            await self.recorder.aclose()


def estimate_input_tokens(request: ChatRequest | None) -> int:
    """About four characters a token, plus a few per message: a cheap upper-leaning guess."""
    if request is None:
        return 1
    chars = sum(len(m.content) + 16 for m in request.messages)
    chars += sum(len(json.dumps(dict(c.arguments))) for m in request.messages for c in m.tool_calls)
    if request.tools:
        chars += sum(
            len(t.name) + len(t.description) + len(json.dumps(dict(t.parameters)))
            for t in request.tools
        )
    return chars // 4 + 1


# Byte-level tokenizers never make a token of less than one byte, so UTF-8 bytes bound the
# tokens of a text; a message adds its role and separators, a request its framing.
_PER_MESSAGE = 8
_PER_REQUEST = 16


def _utf8(text: str) -> int:
    return len(text.encode("utf-8"))


def max_input_tokens(request: ChatRequest) -> int:
    """The most input tokens ``request`` can be (one per UTF-8 byte, plus framing): what a
    budget reserves, since a guess that undercounts would let calls pass a budget."""
    tokens = _PER_REQUEST
    for m in request.messages:
        tokens += _PER_MESSAGE + _utf8(m.content) + _utf8(m.name or "")
        tokens += sum(
            _PER_MESSAGE + _utf8(c.name) + _utf8(json.dumps(dict(c.arguments)))
            for c in m.tool_calls
        )
    for t in request.tools:
        tokens += _PER_MESSAGE + _utf8(t.name) + _utf8(t.description)
        tokens += _utf8(json.dumps(dict(t.parameters)))
    if request.response_schema is not None:
        tokens += _utf8(json.dumps(dict(request.response_schema)))
    return tokens


def estimated_usage(in_tokens: int, collector: StreamCollector) -> Usage:
    text = "".join(collector.text)
    arguments = sum(len("".join(c["arguments"])) for c in collector.calls.values())
    return Usage(input_tokens=in_tokens, output_tokens=(len(text) + arguments) // 4 + 1)
