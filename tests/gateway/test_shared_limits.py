"""Budgets and rate limits shared through the real Redis: across gateways and processes, exact,
and closed (refusing calls) when Redis cannot be reached."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import pytest
from redis.asyncio import Redis

from agentmill import redis_pool
from agentmill.errors import BudgetExceeded, RateLimited, RetryableError
from agentmill.gateway import Gateway
from agentmill.gateway.budgets import RedisBudgetStore
from agentmill.gateway.policy import CallerLimit, StaticPolicies, WorkspacePolicy
from agentmill.gateway.ratelimits import RateLimiter
from tests.gateway.fakes import Flaky, priced_config, workspace_budget
from tests.gateway.test_gateway import NO_WAIT, ask
from tests.servers import silent_redis

REDIS_URL = "redis://127.0.0.1:6379/0"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    prefix = f"agentmill-test-{uuid.uuid4().hex[:8]}"
    yield prefix
    redis = Redis.from_url(REDIS_URL)
    keys = [key async for key in redis.scan_iter(f"{prefix}*")]
    keys += [key async for key in redis.scan_iter(f"*{prefix}*")]
    if keys:
        await redis.delete(*keys)
    await redis.aclose()


def shared_gateway(prefix: str, policies: StaticPolicies, provider: Flaky) -> Gateway:
    """A gateway as one process would build it: its own Redis connections."""
    return Gateway(
        [provider],
        config=priced_config(provider.name),
        policies=policies,
        budgets=RedisBudgetStore(Redis.from_url(REDIS_URL), prefix=prefix),
        limiter=RateLimiter(REDIS_URL, prefix=prefix),
        retry=NO_WAIT,
    )


async def test_two_gateways_sharing_redis_never_spend_past_the_budget(prefix: str) -> None:
    policies = StaticPolicies({"ws_1": WorkspacePolicy(budgets=(workspace_budget("0.05"),))})
    one, two = Flaky("primary", delay=0.01), Flaky("primary", delay=0.01)
    gateways = [shared_gateway(prefix, policies, one), shared_gateway(prefix, policies, two)]
    try:
        results = await asyncio.gather(
            *(gateways[i % 2].chat(ask()) for i in range(200)), return_exceptions=True
        )
    finally:
        for gw in gateways:
            await gw.aclose()
    answered = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BudgetExceeded)]
    assert (len(answered), len(refused)) == (50, 150)
    assert one.calls + two.calls == 50
    assert one.calls > 0
    assert two.calls > 0


async def test_budgets_start_from_the_recorded_spending_when_redis_has_none(prefix: str) -> None:
    policies = StaticPolicies({"ws_1": WorkspacePolicy(budgets=(workspace_budget("0.003"),))})
    gw = shared_gateway(prefix, policies, Flaky("primary"))
    try:
        await gw.chat(ask())
        redis = Redis.from_url(REDIS_URL)
        keys = [key async for key in redis.scan_iter(f"{prefix}:budget:*")]
        assert len(keys) == 1
        spent = int(await redis.hget(keys[0], "spent"))
        assert spent == 1_000_000  # 0.001 USD in nano-USD
        await redis.delete(*keys)  # Redis lost its data (it keeps nothing on disk here)
        await redis.aclose()
        policies.spending = {keys[0].decode().split(":budget:")[1]: Decimal("0.0025")}
        with pytest.raises(BudgetExceeded, match=r"0\.002500 of 0\.003 USD spent"):
            await gw.chat(ask())
    finally:
        await gw.aclose()


async def test_a_rate_limit_in_redis_is_one_count_for_every_gateway(prefix: str) -> None:
    limit = CallerLimit(scope="api_key", requests_per_minute=7)
    policies = StaticPolicies({"ws_1": WorkspacePolicy(limits=(limit,))})
    one, two = Flaky("primary"), Flaky("primary")
    gateways = [shared_gateway(prefix, policies, one), shared_gateway(prefix, policies, two)]
    try:
        results = await asyncio.gather(
            *(gateways[i % 2].chat(ask()) for i in range(40)), return_exceptions=True
        )
    finally:
        for gw in gateways:
            await gw.aclose()
    assert sum(isinstance(r, RateLimited) for r in results) == 33
    assert one.calls + two.calls == 7


async def test_many_more_calls_at_once_than_redis_connections_all_get_through(
    prefix: str,
) -> None:
    # A worker with 10,000 steps at once makes that many calls: each waits for one of the
    # process's Redis connections rather than failing as "unreachable" once they are in use.
    policies = StaticPolicies(
        {
            "ws_1": WorkspacePolicy(
                budgets=(workspace_budget("100"),),
                limits=(CallerLimit(scope="workspace", requests_per_minute=100_000),),
            )
        }
    )
    primary = Flaky("primary", delay=0.05)
    gw = Gateway(
        [primary],
        config=priced_config("primary"),
        policies=policies,
        budgets=RedisBudgetStore.from_url(REDIS_URL, prefix=prefix),
        limiter=RateLimiter(REDIS_URL, prefix=prefix),
        retry=NO_WAIT,
    )
    try:
        results = await asyncio.gather(
            *(gw.chat(ask()) for _ in range(600)), return_exceptions=True
        )
    finally:
        await gw.aclose()
    failures = {repr(r) for r in results if isinstance(r, BaseException)}
    assert failures == set()
    assert primary.calls == 600


@pytest.mark.parametrize("down", ["refusing connections", "never answering"])
async def test_an_unreachable_budget_store_refuses_the_call(
    down: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_pool, "SOCKET_TIMEOUT", 0.3)
    policies = StaticPolicies({"ws_1": WorkspacePolicy(budgets=(workspace_budget("1"),))})
    primary = Flaky("primary")
    unreachable = (
        contextlib.nullcontext("redis://127.0.0.1:1/0")
        if down == "refusing connections"
        else silent_redis()
    )
    async with unreachable as url:
        gw = Gateway(
            [primary],
            config=priced_config("primary"),
            policies=policies,
            budgets=RedisBudgetStore.from_url(url),
        )
        try:
            with pytest.raises(
                RetryableError, match="budget store unreachable, call refused"
            ) as caught:
                await asyncio.wait_for(gw.chat(ask()), timeout=5)  # refused, not left hanging
        finally:
            await gw.aclose()
    assert caught.value.status == 503
    assert primary.calls == 0


async def test_an_unreachable_rate_limit_store_refuses_the_call() -> None:
    policies = StaticPolicies(
        {"ws_1": WorkspacePolicy(limits=(CallerLimit(scope="workspace", requests_per_minute=5),))}
    )
    primary = Flaky("primary")
    gw = Gateway(
        [primary],
        config=priced_config("primary"),
        policies=policies,
        limiter=RateLimiter("redis://127.0.0.1:1/0"),
    )
    try:
        with pytest.raises(RetryableError, match="rate limit store unreachable") as caught:
            await gw.chat(ask())
    finally:
        await gw.aclose()
    assert caught.value.status == 503
    assert primary.calls == 0


_PROCESS = textwrap.dedent(
    """
    import asyncio, json, sys
    from agentmill.errors import BudgetExceeded
    from tests.gateway.fakes import Flaky
    from tests.gateway.test_gateway import ask
    from tests.gateway.test_shared_limits import shared_gateway
    from agentmill.gateway.policy import StaticPolicies, WorkspacePolicy
    from tests.gateway.fakes import workspace_budget

    async def main():
        policies = StaticPolicies({"ws_1": WorkspacePolicy(budgets=(workspace_budget("0.05"),))})
        provider = Flaky("primary", delay=0.02)
        gw = shared_gateway(sys.argv[1], policies, provider)
        results = await asyncio.gather(*(gw.chat(ask()) for _ in range(100)), return_exceptions=True)
        await gw.aclose()
        refused = sum(isinstance(r, BudgetExceeded) for r in results)
        print(json.dumps({"calls": provider.calls, "refused": refused}))

    asyncio.run(main())
    """
)


@pytest.mark.slow
async def test_two_processes_sharing_redis_never_spend_past_the_budget(prefix: str) -> None:
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"}
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", _PROCESS, prefix, stdout=subprocess.PIPE, env=env, cwd=ROOT
        )
        for _ in range(2)
    ]
    # The last line is the result (logs may come before it).
    outputs = [json.loads((await p.communicate())[0].splitlines()[-1]) for p in processes]
    assert [p.returncode for p in processes] == [0, 0]
    assert sum(o["calls"] for o in outputs) == 50
    assert sum(o["refused"] for o in outputs) == 150
