"""The gateway's cached view of a workspace's policy, on both engines: calls that find no fresh
policy share one read, and a policy forgotten while it loads is not cached."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from agentmill.store.db import Database, Tx
from agentmill.store.gateway_policies import DatabasePolicies
from agentmill.store.repositories import spending
from tests.store.test_providers import new_workspace


def count_reads(db: Database, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    reads = [0]
    real = db.read

    async def counting(fn: Callable[[Tx], Any], **options: Any) -> Any:
        reads[0] += 1
        return await real(fn, **options)

    monkeypatch.setattr(db, "read", counting)
    return reads


async def test_concurrent_calls_share_one_load_of_a_workspaces_policy(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = await new_workspace(db)
    await db.write(lambda tx: spending.set_markup(tx, ws, Decimal("0.25")))
    policies = DatabasePolicies(db)
    reads = count_reads(db, monkeypatch)

    got = await asyncio.gather(*(policies.policy(ws) for _ in range(50)))

    assert reads[0] == 1
    assert {p.markup for p in got} == {Decimal("0.25")}
    await policies.policy(ws)
    assert reads[0] == 1  # cached for the ttl


async def test_a_policy_forgotten_while_it_loads_is_read_again(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = await new_workspace(db)
    policies = DatabasePolicies(db)
    reads = count_reads(db, monkeypatch)

    loading = asyncio.ensure_future(policies.policy(ws))
    await asyncio.sleep(0)  # the load has started reading the old markup
    await db.write(lambda tx: spending.set_markup(tx, ws, Decimal("0.5")))
    policies.forget(ws)  # what the process that changed it does
    await loading

    assert (await policies.policy(ws)).markup == Decimal("0.5")
    assert reads[0] == 2


async def test_a_caller_cancelled_mid_load_does_not_cancel_the_others(db: Database) -> None:
    ws = await new_workspace(db)
    await db.write(lambda tx: spending.set_markup(tx, ws, Decimal("0.1")))
    policies = DatabasePolicies(db)

    first = asyncio.ensure_future(policies.policy(ws))
    second = asyncio.ensure_future(policies.policy(ws))
    await asyncio.sleep(0)
    first.cancel()

    assert (await second).markup == Decimal("0.1")
    assert first.cancelled()
