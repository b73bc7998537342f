"""Builds the gateway a process uses from its settings: providers and models from
``agentmill.yaml`` and the environment, policies and usage records in the database, and budgets
and rate limits in Redis when one is configured (shared by every process), in memory otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping

import structlog

from agentmill.config import Settings
from agentmill.gateway import Gateway
from agentmill.gateway.budgets import BudgetStore, MemoryBudgetStore, RedisBudgetStore
from agentmill.gateway.config import GatewayConfig, ProviderConfig
from agentmill.gateway.ratelimits import RateLimiter
from agentmill.store.db import Database
from agentmill.store.gateway_policies import DatabasePolicies, ProviderLoader, UsageRecorder
from agentmill.store.repositories.providers import workspace_provider_configs

log = structlog.get_logger("agentmill.gateway")


def build_gateway(db: Database, settings: Settings, config: GatewayConfig) -> Gateway:
    redis_url = settings.shared_redis_url
    budgets: BudgetStore
    if redis_url:
        limiter = RateLimiter(redis_url)
        budgets = RedisBudgetStore.from_url(redis_url)
    else:
        limiter = RateLimiter("memory://")
        budgets = MemoryBudgetStore()
        if db.dialect == "postgresql":
            log.warning(
                "budgets and rate limits are kept per process: set AGENTMILL_REDIS_URL so that "
                "every API and worker process shares them"
            )
    return Gateway(
        config=config,
        policies=DatabasePolicies(db, providers=_workspace_providers(settings)),
        limiter=limiter,
        budgets=budgets,
        recorder=UsageRecorder(db),
    )


def _workspace_providers(settings: Settings) -> ProviderLoader:
    async def load(db: Database, workspace_id: str) -> Mapping[str, ProviderConfig]:
        # The key is asked for here, not when the engine is made: engines that never load a
        # workspace's providers (tests, `agentmill run` on scripted models) need none.
        return await workspace_provider_configs(db, workspace_id, secret_key=settings.secret())

    return load
