"""Budgets under abuse and failure (issue 17): input priced and reserved at its most, a provider
that answers past max_tokens, many runs' concurrent steps on one budget, a Redis outage in the
middle of runs, the usage of an attempt whose result is dropped, and health figures that stay
within their workspace."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import textwrap
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy import select, update

from agentmill.api.app import create_app
from agentmill.config import Settings
from agentmill.domain.states import RunStatus
from agentmill.domain.validation import load_workflow_text
from agentmill.engine.claims import RunCaller
from agentmill.engine.engine import Engine
from agentmill.errors import BudgetExceeded, RetryableError, StoreUnavailable
from agentmill.gateway import CallContext, ChatRequest, ChatResponse, Gateway, Message
from agentmill.gateway.budgets import BudgetStore, MemoryBudgetStore, RedisBudgetStore
from agentmill.gateway.config import GatewayConfig, ModelConfig, ModelPrice
from agentmill.gateway.policy import StaticPolicies, WorkspacePolicy
from agentmill.gateway.types import CallReport
from agentmill.redis_pool import redis_client
from agentmill.store.db import Database
from agentmill.store.gateway_policies import DatabasePolicies, as_budget, spent_this_period
from agentmill.store.models import events, llm_calls, steps, users
from agentmill.store.queries import RunView
from agentmill.store.repositories import accounts, spending, workspaces
from tests.api.conftest import new_workspace, signup
from tests.cli.test_up import free_port
from tests.gateway.fakes import (
    Flaky,
    Overrunning,
    input_priced_config,
    server_error,
    workspace_budget,
)
from tests.gateway.test_gateway import NO_WAIT, ask

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[BudgetStore]:
    if request.param == "memory":
        yield MemoryBudgetStore()
        return
    prefix = f"agentmill-test-{uuid.uuid4().hex[:8]}"
    redis = Redis.from_url(REDIS_URL)
    shared = RedisBudgetStore(Redis.from_url(REDIS_URL), prefix=prefix)
    yield shared
    await shared.aclose()  # every connection closed here, not left to the collector
    keys = [key async for key in redis.scan_iter(f"{prefix}*")]
    if keys:
        await redis.delete(*keys)
    await redis.aclose()


def _gateway(provider: Overrunning | Flaky, limit: str, store: BudgetStore) -> Gateway:
    policies = StaticPolicies({"ws_1": WorkspacePolicy(budgets=(workspace_budget(limit),))})
    return Gateway(
        [provider],
        config=input_priced_config(provider.name),
        policies=policies,
        budgets=store,
        retry=NO_WAIT,
    )


# ---------------------------------------------------------------- input, reserved at its most


async def test_the_reservation_holds_the_input_at_its_most(store: BudgetStore) -> None:
    # 4,000 bytes of prompt can be 4,000 tokens (a byte-level tokenizer makes at least a byte a
    # token). Priced at 1 USD per million, the worst case is 16 + 8 + 4,000 input tokens and
    # 100 output tokens: 0.004024 + 0.001. A guess of four characters a token (0.002005) would
    # have let the call through, and a provider counting every byte would have charged 0.005.
    provider = Overrunning("primary", extra=0, input_tokens=4000)
    gw = _gateway(provider, "0.004", store)
    request = replace(ask(), messages=(Message(role="user", content="x" * 4000),))
    with pytest.raises(BudgetExceeded) as refused:
        await gw.chat(request)
    assert str(refused.value) == (
        "workspace monthly budget 'b_workspace' exhausted: 0.000000 of 0.004 USD spent, "
        "call needs up to 0.005024"
    )
    assert provider.calls == 0


async def test_multibyte_input_is_reserved_by_its_bytes(store: BudgetStore) -> None:
    # 1,000 "é" are 2,000 UTF-8 bytes: 16 + 8 + 2,000 tokens at most, 0.002024 with the output.
    provider = Overrunning("primary", extra=0, input_tokens=2000)
    gw = _gateway(provider, "0.003", store)
    request = replace(ask(), messages=(Message(role="user", content="é" * 1000),))
    with pytest.raises(BudgetExceeded, match=r"call needs up to 0\.003024$"):
        await gw.chat(request)
    assert provider.calls == 0


# ---------------------------------------------------------------- answers past max_tokens


async def test_an_answer_past_max_tokens_is_charged_and_stops_the_next_call(
    store: BudgetStore,
) -> None:
    # Asked for 100 tokens, it answers 152: 5 input tokens (0.000005) and 152 output tokens
    # (0.00152) are charged, past the 0.001029 reserved and past the 0.002 budget.
    provider = Overrunning("primary", extra=52, input_tokens=5)
    gw = _gateway(provider, "0.002", store)
    reports: list[CallReport] = []
    first = await gw.chat(ask(), sink=reports.append)
    assert first.usage.price == Decimal("0.001525")
    assert [(r.usage.output_tokens, r.usage.price) for r in reports] == [(152, Decimal("0.001525"))]
    with pytest.raises(BudgetExceeded) as refused:
        await gw.chat(ask(), sink=reports.append)
    assert str(refused.value) == (
        "workspace monthly budget 'b_workspace' exhausted: 0.001525 of 0.002 USD spent, "
        "call needs up to 0.001029"
    )
    assert provider.calls == 1
    await gw.aclose()


@pytest.mark.parametrize("extra", [0, 30])
async def test_concurrent_calls_on_one_budget_pass_it_by_at_most_the_overage(
    extra: int, store: BudgetStore
) -> None:
    """The whole guarantee: what calls on one budget are charged in total is at most its limit
    plus what providers charged past each call's worst case (their answers past max_tokens).
    With providers that keep to max_tokens, never more than the limit."""
    worst = Decimal("0.001029")  # 29 input tokens at most ("hello"), 100 output tokens
    # It counts as many input tokens as can be: a reservation below that would show here.
    provider = Overrunning("primary", extra=extra, input_tokens=29, delay=0.005)
    limit = Decimal("0.02")
    gw = _gateway(provider, str(limit), store)
    reports: list[CallReport] = []
    results = await asyncio.gather(
        *(gw.chat(ask(), sink=reports.append) for _ in range(60)), return_exceptions=True
    )
    assert {type(r) for r in results if isinstance(r, BaseException)} == {BudgetExceeded}
    charged = [r.usage.price for r in reports]
    assert len(charged) == provider.calls > 0
    overage = sum((max(Decimal(0), p - worst) for p in charged), Decimal(0))
    assert sum(charged) <= limit + overage
    if extra == 0:
        assert overage == 0
        assert sum(charged) <= limit
    await gw.aclose()


# ---------------------------------------------------------------- runs sharing one budget


async def _workspace(db: Database) -> tuple[str, str]:
    def create(tx):  # type: ignore[no-untyped-def]
        user = accounts.create_user(
            tx, email=f"b-{uuid.uuid4().hex[:8]}@example.com", name="B", password_hash="x"
        )
        return workspaces.create_workspace(tx, name="Budgeted", owner_id=user.id).id, user.id

    result: tuple[str, str] = await db.write(create)
    return result


# Input and output priced: 1,000 USD per million of each (0.001 a token).
PRICED = GatewayConfig(
    providers={},
    models={
        "scripted/writer": ModelConfig(
            name="scripted/writer", price=ModelPrice(input=Decimal(1000), output=Decimal(1000))
        )
    },
)
FAN = """
name: fan
agents:
  writer: {model: scripted/writer, max_tokens: 20, options: {reply: "%s"}}
steps:
  - {id: a, agent: writer, prompt: one}
  - {id: b, agent: writer, prompt: two}
  - {id: c, agent: writer, prompt: three}
  - {id: d, agent: writer, prompt: four, needs: [a, b, c]}
""" % ("x" * 80)


async def _workspace_budget(db: Database, ws: str, limit: str) -> str:
    record = await db.write(
        lambda tx: spending.create_budget(
            tx,
            ws,
            scope="workspace",
            subject_id=None,
            period="monthly",
            limit_usd=Decimal(limit),
            soft_ratio=Decimal("0.8"),
        )
    )
    return record.id


async def _charged(db: Database, ws: str) -> list[Decimal]:
    rows = await db.read(
        lambda tx: tx.conn.execute(
            select(llm_calls.c.price).where(llm_calls.c.workspace_id == ws)
        ).all()
    )
    return [r.price for r in rows]


async def test_concurrent_steps_of_several_runs_never_pass_a_shared_budget(db: Database) -> None:
    ws, user = await _workspace(db)
    limit = Decimal("0.5")
    await _workspace_budget(db, ws, "0.5")
    engine = Engine(db, gateway=Gateway(config=PRICED, policies=DatabasePolicies(db)))
    version = await engine.register(load_workflow_text(textwrap.dedent(FAN)), workspace_id=ws)
    runs = [
        await engine.start_run(version, {}, caller=RunCaller(started_by=user)) for _ in range(6)
    ]
    settled = await asyncio.gather(*(engine.run_until_settled(r) for r in runs))
    # Each call: ~1 input token and 20 output tokens charged, at most 16 + 8 + 3..5 input
    # tokens and 20 output tokens reserved: 0.5 pays for some of the 24 calls, not all.
    statuses = [run.status for run in settled]
    assert set(statuses) <= {RunStatus.COMPLETED, RunStatus.BUDGET_EXCEEDED}
    assert RunStatus.BUDGET_EXCEEDED in statuses
    charged = await _charged(db, ws)
    assert 0 < sum(charged) <= limit
    await engine.aclose()


# ---------------------------------------------------------------- Redis down in mid-run


class _PrivateRedis:
    """A redis-server of the test's own on a free loopback port, that can be stopped and started
    again; it saves its data on the way down, as a Redis restarted by its operator would."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary is not None
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.folder),
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    async def ready(self) -> None:
        client = Redis.from_url(self.url)
        try:
            for _ in range(500):
                with contextlib.suppress(Exception):
                    if await client.ping():
                        return
                await asyncio.sleep(0.01)
            raise AssertionError("redis-server did not start")
        finally:
            await client.aclose()

    async def stop(self) -> None:
        client = Redis.from_url(self.url)
        with contextlib.suppress(Exception):
            await client.shutdown(save=True)
        await client.aclose()
        assert self.process is not None
        await asyncio.to_thread(self.process.wait, 10)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[_PrivateRedis]:
    server = _PrivateRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.kill()


class _Outage:
    """Scripted answers, and Redis going down during the ``at``-th call (which must still be
    settled once it is back)."""

    name = "outage"

    def __init__(self, redis: _PrivateRedis, at: int) -> None:
        self.redis = redis
        self.at = at
        self.calls = 0
        self.down = asyncio.Event()

    async def chat(self, request: ChatRequest) -> ChatResponse:
        from agentmill.gateway.types import Usage

        self.calls += 1
        if self.calls == self.at:
            await self.redis.stop()
            self.down.set()
        return ChatResponse(
            content="ok", model=request.model, usage=Usage(input_tokens=2, output_tokens=20)
        )

    async def stream(self, request: ChatRequest):  # type: ignore[no-untyped-def]
        raise NotImplementedError
        yield

    async def embed(self, request: object) -> object:
        raise NotImplementedError

    async def aclose(self) -> None:
        return None


class _Watched(RedisBudgetStore):
    """A Redis budget store that tells when it refused a reservation (Redis unreachable)."""

    refused: asyncio.Event

    async def reserve(self, lines, amount, load):  # type: ignore[no-untyped-def]
        try:
            return await super().reserve(lines, amount, load)
        except StoreUnavailable:
            self.refused.set()
            raise


OUTAGE_FLOW = """
name: outage
agents:
  writer: {model: outage/m, max_tokens: 20}
steps:
  - {id: a, agent: writer, prompt: one}
  - {id: b, agent: writer, prompt: two, needs: [a]}
  - {id: c, agent: writer, prompt: three, needs: [b]}
"""


async def test_a_redis_outage_in_mid_run_fails_no_run_and_overspends_no_budget(
    db: Database, private_redis: _PrivateRedis
) -> None:
    await private_redis.ready()
    ws, user = await _workspace(db)
    limit = Decimal("0.25")
    await _workspace_budget(db, ws, "0.25")
    provider = _Outage(private_redis, at=4)
    config = GatewayConfig(
        providers={},
        models={
            "outage/m": ModelConfig(name="outage/m", price=ModelPrice(input=1000, output=1000))
        },
    )
    store = _Watched(redis_client(private_redis.url))
    store.refused = asyncio.Event()
    gateway = Gateway(
        [provider],  # type: ignore[list-item]
        config=config,
        policies=DatabasePolicies(db),
        budgets=store,
    )
    engine = Engine(db, gateway=gateway)
    version = await engine.register(
        load_workflow_text(textwrap.dedent(OUTAGE_FLOW)), workspace_id=ws
    )

    async def run() -> RunView:
        run_id = await engine.start_run(version, {}, caller=RunCaller(started_by=user))
        runs.append(run_id)
        return await engine.run_until_settled(run_id)

    runs: list[str] = []
    first = [asyncio.create_task(run()) for _ in range(4)]
    await asyncio.wait_for(provider.down.wait(), 60)
    # Runs started while Redis is down: their first call is refused, and waits.
    later = [asyncio.create_task(run()) for _ in range(4)]
    await asyncio.wait_for(store.refused.wait(), 60)
    private_redis.start()  # with what it saved on the way down
    await private_redis.ready()
    settled = await asyncio.gather(*first, *later)

    # Each call charges 0.022 and reserves 0.02 + 0.027 at most: 0.25 pays for some of the 24.
    statuses = [run.status for run in settled]
    assert RunStatus.FAILED not in statuses
    assert set(statuses) <= {RunStatus.COMPLETED, RunStatus.BUDGET_EXCEEDED}
    assert RunStatus.BUDGET_EXCEEDED in statuses
    assert 0 < sum(await _charged(db, ws)) <= limit
    waited = await db.read(
        lambda tx: tx.conn.execute(
            select(events.c.data).where(events.c.run_id.in_(runs), events.c.type == "step.log")
        ).all()
    )
    messages = [row.data["message"] for row in waited]
    assert any(m.startswith("waiting for the store: budget store unreachable") for m in messages)
    await engine.aclose()


# ---------------------------------------------------------------- a stale attempt's calls


class _TakenOver:
    """Answers; during its first call another worker takes the step over (its lease expired
    while this one was paused) and then loses it too, so the first attempt's result is dropped
    and the step runs again."""

    name = "slow"

    def __init__(self, db: Database) -> None:
        self.db = db
        self.calls = 0

    async def chat(self, request: ChatRequest) -> ChatResponse:
        from agentmill.gateway.types import Usage

        self.calls += 1
        if self.calls == 1:
            step_id = request.context.step_id
            past = datetime.now(UTC) - timedelta(seconds=1)
            await self.db.write(
                lambda tx: tx.conn.execute(
                    update(steps)
                    .where(steps.c.id == step_id)
                    .values(
                        attempt=steps.c.attempt + 1,
                        lease_owner="elsewhere:1:other",
                        lease_expires_at=past,
                    )
                )
            )
        return ChatResponse(
            content="done", model=request.model, usage=Usage(input_tokens=3, output_tokens=7)
        )

    async def stream(self, request: ChatRequest):  # type: ignore[no-untyped-def]
        raise NotImplementedError
        yield

    async def embed(self, request: object) -> object:
        raise NotImplementedError

    async def aclose(self) -> None:
        return None


async def test_the_calls_of_an_attempt_whose_result_is_dropped_are_recorded_and_charged(
    db: Database,
) -> None:
    ws, user = await _workspace(db)
    budget_id = await _workspace_budget(db, ws, "10")
    config = GatewayConfig(
        providers={},
        models={"slow/m": ModelConfig(name="slow/m", price=ModelPrice(input=1000, output=1000))},
    )
    provider = _TakenOver(db)
    gateway = Gateway([provider], config=config, policies=DatabasePolicies(db))  # type: ignore[list-item]
    engine = Engine(db, gateway=gateway)
    flow = "name: once\nagents: {w: {model: slow/m}}\nsteps: [{id: only, agent: w, prompt: hi}]"
    version = await engine.register(load_workflow_text(flow), workspace_id=ws)
    run_id = await engine.start_run(version, {}, caller=RunCaller(started_by=user))
    run = await engine.run_until_settled(run_id)
    assert run.status == RunStatus.COMPLETED
    assert provider.calls == 2

    rows = await db.read(
        lambda tx: tx.conn.execute(
            select(llm_calls).where(llm_calls.c.run_id == run_id).order_by(llm_calls.c.attempt)
        ).all()
    )
    # Attempt 1's result was dropped (attempt 2 was the other worker's); what it spent is not.
    assert [(r.attempt, r.input_tokens, r.output_tokens, r.price) for r in rows] == [
        (1, 3, 7, Decimal("0.01")),
        (3, 3, 7, Decimal("0.01")),
    ]
    assert {r.step_id for r in rows} == {rows[0].step_id}
    record = await db.read(lambda tx: spending.list_budgets(tx, ws))
    (budget,) = [as_budget(r) for r in record if r.id == budget_id]
    spent = await db.read(lambda tx: spent_this_period(tx, budget, ws))
    assert spent == Decimal("0.02")  # what a budget store starting afresh counts
    await engine.aclose()


# ---------------------------------------------------------------- health, per workspace


async def test_a_workspace_sees_only_its_own_calls_to_an_operator_model(
    database_url: str,
) -> None:
    operator_email = f"op-{uuid.uuid4().hex[:8]}@example.com"
    settings = Settings(operator_emails=operator_email.upper())
    app = create_app(settings, database_url=database_url)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://am.test") as client:
            alice, bob = await signup(client, "Alice"), await signup(client, "Bob")
            ws_a, ws_b = await new_workspace(client, alice), await new_workspace(client, bob)
            gateway: Gateway = app.state.gateway
            shared = Flaky("shared")  # the operator's, registered for every workspace
            gateway.register(shared)
            await gateway.chat(
                replace(ask("shared/m"), context=CallContext(workspace_id=ws_a)),
            )
            secret = "shared: 503 from http://10.0.0.7 for bob's prompt"
            shared.fail(server_error("shared"))
            shared.fail(RetryableError(secret, status=503))
            for _ in range(2):
                with contextlib.suppress(Exception):
                    await gateway.chat(
                        replace(
                            ask("shared/m"),
                            context=CallContext(workspace_id=ws_b),
                            tries_per_model=1,
                        )
                    )

            seen = await client.get(
                "/api/v1/providers/health", params={"workspace": ws_a}, headers=alice.headers
            )
            assert seen.status_code == 200, seen.text
            (mine,) = [m for m in seen.json()["models"] if m["provider"] == "shared"]
            assert (mine["calls"], mine["error_rate"]) == (1, 0.0)
            assert (mine["consecutive_failures"], mine["last_error"]) == (0, None)
            assert "10.0.0.7" not in seen.text

            # Without a workspace, a member who is no operator sees no one's figures.
            bare = await client.get("/api/v1/providers/health", headers=alice.headers)
            assert bare.status_code == 200
            assert [m for m in bare.json()["models"] if m["provider"] == "shared"] == []

            # Bob sees his own failures, not Alice's success.
            theirs = await client.get(
                "/api/v1/providers/health", params={"workspace": ws_b}, headers=bob.headers
            )
            (his,) = [m for m in theirs.json()["models"] if m["provider"] == "shared"]
            assert (his["calls"], his["consecutive_failures"]) == (2, 2)
            assert his["last_error"] == secret

            # Alice cannot ask for Bob's workspace.
            other = await client.get(
                "/api/v1/providers/health", params={"workspace": ws_b}, headers=alice.headers
            )
            assert other.status_code == 404

            # The operator sees every caller's figures.
            operator = await signup(client, "Op")
            assert operator.email  # registered under a generated address: make it the operator's
            await app.state.db.write(
                lambda tx: tx.conn.execute(
                    update(users).where(users.c.id == operator.id).values(email=operator_email)
                )
            )
            everyone = await client.get("/api/v1/providers/health", headers=operator.headers)
            (total,) = [m for m in everyone.json()["models"] if m["provider"] == "shared"]
            assert (total["calls"], total["consecutive_failures"]) == (3, 2)
