"""The gateway's own logic: failover, retries, circuit breakers, budgets, rate limits, pricing.

Providers here are in-process fakes; the providers themselves are tested against wire fakes.
"""

from __future__ import annotations

import asyncio
import re
from decimal import Decimal

import pytest

from agentmill.errors import BudgetExceeded, RateLimited, RetryableError, StepFailed
from agentmill.gateway import CallContext, ChatRequest, Gateway, Message
from agentmill.gateway.breaker import BreakerPolicy, BreakerState
from agentmill.gateway.budgets import BudgetScope
from agentmill.gateway.config import GatewayConfig, ModelConfig
from agentmill.gateway.gateway import RetryPolicy
from agentmill.gateway.policy import CallerLimit, StaticPolicies, WorkspacePolicy
from agentmill.gateway.types import CallReport, StreamCollector
from tests.gateway.fakes import (
    PRICE,
    Flaky,
    bad_request,
    priced_config,
    server_error,
    workspace_budget,
)

NO_WAIT = RetryPolicy(tries_per_model=2, base_delay=0.0, max_delay=0.0)
CALLER = CallContext(workspace_id="ws_1", user_id="u_1", api_key_id="key_1")


def ask(
    model: str = "primary/m", *, fallbacks: tuple[str, ...] = (), **kwargs: object
) -> ChatRequest:
    return ChatRequest(
        model=model,
        messages=(Message(role="user", content="hello"),),
        fallbacks=fallbacks,
        max_tokens=100,
        context=CALLER,
        **kwargs,  # type: ignore[arg-type]
    )


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def gateway(*providers: Flaky, **kwargs: object) -> Gateway:
    kwargs.setdefault("retry", NO_WAIT)
    return Gateway(list(providers), config=priced_config(*(p.name for p in providers)), **kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------- failover and retries


async def test_a_failing_model_is_retried_then_the_next_model_answers() -> None:
    primary, backup = Flaky("primary"), Flaky("backup")
    primary.fail(server_error(), times=2)
    reports: list[CallReport] = []
    response = await gateway(primary, backup).chat(
        ask(fallbacks=("backup/m",)), sink=reports.append
    )
    assert response.model == "backup/m"
    assert response.content == "backup answers"
    assert (primary.calls, backup.calls) == (2, 1)  # two tries of the primary, then failover
    assert [(r.model, r.outcome, r.status) for r in reports] == [
        ("primary/m", "error", 503),
        ("primary/m", "error", 503),
        ("backup/m", "ok", None),
    ]


async def test_a_retry_honours_retry_after_and_succeeds_on_the_same_model() -> None:
    primary, backup = Flaky("primary"), Flaky("backup")
    primary.fail(server_error(retry_after=0.01))
    response = await gateway(primary, backup).chat(ask(fallbacks=("backup/m",)))
    assert response.model == "primary/m"
    assert (primary.calls, backup.calls) == (2, 0)


async def test_a_retry_after_longer_than_the_gateway_waits_fails_over_at_once() -> None:
    primary, backup = Flaky("primary"), Flaky("backup")
    primary.fail(server_error(retry_after=60))
    response = await gateway(primary, backup).chat(ask(fallbacks=("backup/m",)))
    assert response.model == "backup/m"
    assert primary.calls == 1


async def test_a_bad_request_is_neither_retried_nor_failed_over() -> None:
    primary, backup = Flaky("primary"), Flaky("backup")
    primary.fail(bad_request())
    with pytest.raises(StepFailed, match="400 Bad Request: messages is empty") as caught:
        await gateway(primary, backup).chat(ask(fallbacks=("backup/m",)))
    assert caught.value.status == 400
    assert (primary.calls, backup.calls) == (1, 0)


async def test_when_every_model_fails_the_error_names_each_failure() -> None:
    primary, backup = Flaky("primary"), Flaky("backup")
    primary.fail(server_error("primary"), times=2)
    backup.fail(server_error("backup"), times=2)
    with pytest.raises(RetryableError) as caught:
        await gateway(primary, backup).chat(ask(fallbacks=("backup/m",)))
    message = str(caught.value)
    assert message.startswith("every model failed: primary/m: primary: 503")
    assert "backup/m: backup: 503" in message
    assert caught.value.status == 503


async def test_steps_try_each_model_once_because_the_engine_retries_them() -> None:
    primary, backup = Flaky("primary"), Flaky("backup")
    primary.fail(server_error(), times=5)
    response = await gateway(primary, backup).chat(ask(fallbacks=("backup/m",), tries_per_model=1))
    assert response.model == "backup/m"
    assert primary.calls == 1


async def test_a_stream_fails_over_before_its_first_delta() -> None:
    primary, backup = Flaky("primary"), Flaky("backup")
    primary.fail(server_error(), times=2)
    collector = StreamCollector("x")
    deltas = [d async for d in gateway(primary, backup).stream(ask(fallbacks=("backup/m",)))]
    for delta in deltas:
        collector.add(delta)
    assert collector.response().content == "backup answers "
    assert collector.usage.output_tokens == 100
    assert collector.usage.cost == Decimal("0.001")
    assert [d.model for d in deltas if d.model is not None] == ["backup/m"]  # who answered


# ---------------------------------------------------------------- circuit breakers


async def test_the_breaker_opens_skips_the_model_probes_once_and_closes() -> None:
    clock = Clock()
    primary, backup = Flaky("primary"), Flaky("backup")
    gw = gateway(primary, backup, retry=RetryPolicy(tries_per_model=1))
    gw.breakers = type(gw.breakers)(BreakerPolicy(failure_threshold=3, open_seconds=30), clock)
    primary.fail(server_error(), times=3)
    for _ in range(3):
        assert (await gw.chat(ask(fallbacks=("backup/m",)))).model == "backup/m"
    assert primary.calls == 3
    (health,) = [h for h in gw.health() if h.provider == "primary"]
    assert health.state is BreakerState.OPEN
    assert health.error_rate == 1.0
    assert health.retry_in_seconds == 30

    # Open: the primary is skipped without being called.
    assert (await gw.chat(ask(fallbacks=("backup/m",)))).model == "backup/m"
    assert primary.calls == 3

    # After the cool-down one probe goes through; a call arriving meanwhile is not let in.
    clock.now += 31
    primary.delay = 0.05
    probe = asyncio.ensure_future(gw.chat(ask(fallbacks=("backup/m",))))
    await asyncio.sleep(0.01)
    meanwhile = await gw.chat(ask(fallbacks=("backup/m",)))
    assert meanwhile.model == "backup/m"
    assert (await probe).model == "primary/m"
    assert primary.calls == 4
    (health,) = [h for h in gw.health() if h.provider == "primary"]
    assert health.state is BreakerState.CLOSED
    assert health.calls == 4
    assert health.latency_p50_ms is not None


async def test_a_failed_probe_opens_the_breaker_again() -> None:
    clock = Clock()
    primary, backup = Flaky("primary"), Flaky("backup")
    gw = gateway(primary, backup, retry=RetryPolicy(tries_per_model=1))
    gw.breakers = type(gw.breakers)(BreakerPolicy(failure_threshold=1, open_seconds=10), clock)
    primary.fail(server_error(), times=2)
    await gw.chat(ask(fallbacks=("backup/m",)))
    clock.now += 11
    await gw.chat(ask(fallbacks=("backup/m",)))  # the probe fails
    assert primary.calls == 2
    await gw.chat(ask(fallbacks=("backup/m",)))
    assert primary.calls == 2  # open again, skipped
    assert gw.breakers.get("primary", "m").state is BreakerState.OPEN


async def test_bad_requests_never_open_the_breaker() -> None:
    primary = Flaky("primary")
    gw = gateway(primary)
    gw.breakers = type(gw.breakers)(BreakerPolicy(failure_threshold=2))
    primary.fail(bad_request(), times=5)
    for _ in range(5):
        with pytest.raises(StepFailed):
            await gw.chat(ask())
    assert gw.breakers.get("primary", "m").state is BreakerState.CLOSED


# ---------------------------------------------------------------- budgets


async def test_concurrent_calls_never_spend_past_the_budget() -> None:
    # Each call costs exactly 0.001 USD (100 output tokens at 10 USD per million, its
    # max_tokens): a budget of 0.05 admits 50 of 200 concurrent calls, and not one more.
    primary = Flaky("primary", delay=0.01)
    policies = StaticPolicies({"ws_1": WorkspacePolicy(budgets=(workspace_budget("0.05"),))})
    gw = gateway(primary, policies=policies)
    results = await asyncio.gather(*(gw.chat(ask()) for _ in range(200)), return_exceptions=True)
    answered = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BudgetExceeded)]
    assert (len(answered), len(refused)) == (50, 150)
    assert primary.calls == 50
    assert sum(r.usage.price for r in answered) == Decimal("0.05")
    assert re.match(
        r"workspace monthly budget 'b_workspace' exhausted: 0\.0\d+ of 0\.05 USD spent",
        str(refused[0]),
    )


async def test_a_failed_call_releases_its_reservation() -> None:
    primary = Flaky("primary")
    policies = StaticPolicies({"ws_1": WorkspacePolicy(budgets=(workspace_budget("0.001"),))})
    gw = gateway(primary, policies=policies)
    primary.fail(bad_request())
    with pytest.raises(StepFailed):
        await gw.chat(ask())
    assert (await gw.chat(ask())).usage.price == Decimal("0.001")  # the budget was untouched
    with pytest.raises(BudgetExceeded):
        await gw.chat(ask())


async def test_spending_so_far_comes_from_the_usage_records() -> None:
    policies = StaticPolicies({"ws_1": WorkspacePolicy(budgets=(workspace_budget("0.002"),))})
    gw = gateway(Flaky("primary"), policies=policies)
    (key,) = _lines(gw)
    policies.spending = {key: Decimal("0.0015")}  # earlier calls, as recorded in the database
    with pytest.raises(BudgetExceeded) as caught:
        await gw.chat(ask())
    assert str(caught.value) == (
        "workspace monthly budget 'b_workspace' exhausted: 0.001500 of 0.002 USD spent, "
        "call needs up to 0.001000"
    )


def _lines(gw: Gateway) -> list[str]:
    from datetime import UTC, datetime

    from agentmill.gateway.budgets import lines_for

    policy = gw.policies.policies["ws_1"]  # type: ignore[attr-defined]
    return [
        line.key
        for line in lines_for(
            policy.budgets,
            workspace_id="ws_1",
            api_key_id="key_1",
            user_id="u_1",
            run_id=None,
            now=datetime.now(UTC),
        )
    ]


async def test_a_stream_carries_the_soft_limit_notice_on_its_priced_delta() -> None:
    budget = workspace_budget("0.005", scope=BudgetScope.API_KEY)
    policies = StaticPolicies({"ws_1": WorkspacePolicy(budgets=(budget,))})
    gw = gateway(Flaky("primary"), policies=policies)
    for _ in range(3):
        await gw.chat(ask())
    deltas = [d async for d in gw.stream(ask())]
    assert [d.notices for d in deltas if d.notices] == [
        ("api_key monthly budget 'b_api_key' for 'key_1' passed 80% of its 0.005 USD",)
    ]
    assert deltas[-1].usage is not None


async def test_each_api_key_has_its_own_budget_and_the_soft_limit_warns_once() -> None:
    budget = workspace_budget("0.005", scope=BudgetScope.API_KEY)
    policies = StaticPolicies({"ws_1": WorkspacePolicy(budgets=(budget,))})
    gw = gateway(Flaky("primary"), policies=policies)
    notices = [(await gw.chat(ask())).notices for _ in range(5)]
    assert notices[:3] == [(), (), ()]
    assert notices[3] == (
        "api_key monthly budget 'b_api_key' for 'key_1' passed 80% of its 0.005 USD",
    )
    assert notices[4] == ()
    with pytest.raises(BudgetExceeded):
        await gw.chat(ask())
    other_key = ChatRequest(
        model="primary/m",
        messages=(Message(role="user", content="hello"),),
        max_tokens=100,
        context=CallContext(workspace_id="ws_1", api_key_id="key_2"),
    )
    assert (await gw.chat(other_key)).usage.price == Decimal("0.001")


async def test_markup_makes_the_price() -> None:
    policies = StaticPolicies({"ws_1": WorkspacePolicy(markup=Decimal("0.25"))})
    usage = (await gateway(Flaky("primary"), policies=policies).chat(ask())).usage
    assert (usage.cost, usage.price) == (Decimal("0.001"), Decimal("0.00125"))


# ---------------------------------------------------------------- rate limits


async def test_a_request_limit_admits_exactly_its_number_per_minute() -> None:
    limit = CallerLimit(scope="workspace", requests_per_minute=7)
    policies = StaticPolicies({"ws_1": WorkspacePolicy(limits=(limit,))})
    primary = Flaky("primary")
    gw = gateway(primary, policies=policies)
    results = await asyncio.gather(*(gw.chat(ask()) for _ in range(30)), return_exceptions=True)
    limited = [r for r in results if isinstance(r, RateLimited)]
    assert (primary.calls, len(limited)) == (7, 23)
    assert limited[0].retry_after is not None
    assert 0 < limited[0].retry_after <= 60
    assert str(limited[0]).startswith(
        "rate limit of workspace 'ws_1' reached: 7 requests per minute"
    )


async def test_a_model_limit_sends_calls_to_the_fallback() -> None:
    primary, backup = Flaky("primary"), Flaky("backup")
    config = GatewayConfig(
        providers={},
        models={
            "primary/m": ModelConfig(name="primary/m", price=PRICE, requests_per_minute=2),
            "backup/m": ModelConfig(name="backup/m", price=PRICE),
        },
    )
    gw = Gateway([primary, backup], config=config, retry=NO_WAIT)
    models = [(await gw.chat(ask(fallbacks=("backup/m",)))).model for _ in range(4)]
    assert models == ["primary/m", "primary/m", "backup/m", "backup/m"]
    with pytest.raises(RateLimited, match="2 requests per minute"):
        await gw.chat(ask())


async def test_the_scripted_provider_never_trips_a_breaker() -> None:
    # Its failures are scripted per step attempt (fail_attempts), not outages to route around.
    gw = Gateway()
    request = ChatRequest(
        model="scripted/flaky",
        messages=(Message(role="user", content="hi"),),
        options={"fail_attempts": 1},
        tries_per_model=1,
    )
    for _ in range(8):
        with pytest.raises(RetryableError, match="503 Service Unavailable"):
            await gw.chat(request)
    (health,) = gw.health()
    assert health.state is BreakerState.CLOSED
    assert health.consecutive_failures == 8
