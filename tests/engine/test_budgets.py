"""Budgets and accounting in runs: a run's calls are reserved, settled and recorded against the
budgets stored in the database; a call that would pass one ends the run BUDGET_EXCEEDED."""

from __future__ import annotations

import textwrap
import uuid
from decimal import Decimal

from sqlalchemy import select

from agentmill.domain.states import RunStatus, StepStatus
from agentmill.domain.validation import load_workflow_text
from agentmill.engine.claims import RunCaller
from agentmill.engine.engine import Engine
from agentmill.gateway import Gateway
from agentmill.gateway.config import GatewayConfig, ModelConfig, ModelPrice
from agentmill.store.db import Database
from agentmill.store.gateway_policies import DatabasePolicies
from agentmill.store.models import llm_calls
from agentmill.store.repositories import accounts, spending, workspaces
from tests.factories import steps_by_key

# 1,000 USD per million output tokens: 0.001 per token. An answer of exactly 80 characters is
# 20 tokens (the scripted provider counts four characters a token), 0.02 USD, which is also the
# worst case of a call with max_tokens 20 (input is free here).
CONFIG = GatewayConfig(
    providers={},
    models={
        "scripted/writer": ModelConfig(
            name="scripted/writer", price=ModelPrice(input=Decimal(0), output=Decimal(1000))
        )
    },
)
ANSWER = "x" * 80
THREE_CALLS = f"""
name: three-calls
agents:
  writer: {{model: scripted/writer, max_tokens: 20, options: {{reply: "{ANSWER}"}}}}
steps:
  - {{id: one, agent: writer, prompt: a}}
  - {{id: two, agent: writer, prompt: b, needs: [one]}}
  - {{id: three, agent: writer, prompt: c, needs: [two]}}
"""


async def _workspace(db: Database) -> tuple[str, str]:
    def create(tx):  # type: ignore[no-untyped-def]
        user = accounts.create_user(
            tx, email=f"b-{uuid.uuid4().hex[:8]}@example.com", name="B", password_hash="x"
        )
        return workspaces.create_workspace(tx, name="Budgeted", owner_id=user.id).id, user.id

    result: tuple[str, str] = await db.write(create)
    return result


async def test_a_run_budget_stops_the_call_that_would_pass_it(db: Database) -> None:
    ws, user = await _workspace(db)
    budget = await db.write(
        lambda tx: spending.create_budget(
            tx,
            ws,
            scope="run",
            subject_id=None,  # each run
            period="total",
            limit_usd=Decimal("0.05"),
            soft_ratio=Decimal("0.8"),
        )
    )
    engine = Engine(db, gateway=Gateway(config=CONFIG, policies=DatabasePolicies(db)))
    version = await engine.register(
        load_workflow_text(textwrap.dedent(THREE_CALLS)), workspace_id=ws
    )
    run_id = await engine.start_run(version, {}, caller=RunCaller(started_by=user))
    run = await engine.run_until_settled(run_id)

    # Two calls fit (0.04 spent); the third would need up to 0.02 more of the 0.05.
    assert run.status == RunStatus.BUDGET_EXCEEDED
    steps = await steps_by_key(engine, run_id)
    assert [steps[k].status for k in ("one", "two", "three")] == [
        StepStatus.SUCCEEDED,
        StepStatus.SUCCEEDED,
        StepStatus.FAILED,
    ]
    assert steps["three"].error == (
        f"run budget {budget.id!r} for {run_id!r} exhausted: 0.040000 of 0.05 USD spent, "
        "call needs up to 0.020000"
    )
    rows = await db.read(
        lambda tx: tx.conn.execute(
            select(llm_calls).where(llm_calls.c.run_id == run_id).order_by(llm_calls.c.id)
        ).all()
    )
    assert [(r.workspace_id, r.user_id, r.output_tokens, r.cost, r.price) for r in rows] == [
        (ws, user, 20, Decimal("0.02"), Decimal("0.02")),
        (ws, user, 20, Decimal("0.02"), Decimal("0.02")),
    ]
    warnings = [
        e["data"]["message"]
        for e in await engine.events(run_id=run_id)
        if e["type"] == "step.log" and e["level"] == "warning"
    ]
    assert warnings == [f"run budget {budget.id!r} for {run_id!r} passed 80% of its 0.05 USD"]


async def test_the_next_run_has_a_budget_of_its_own_and_markup_sets_the_price(
    db: Database,
) -> None:
    ws, _ = await _workspace(db)
    await db.write(
        lambda tx: spending.create_budget(
            tx,
            ws,
            scope="run",
            subject_id=None,
            period="total",
            limit_usd=Decimal("0.1"),
            soft_ratio=Decimal("0.8"),
        )
    )
    await db.write(lambda tx: spending.set_markup(tx, ws, Decimal("0.5")))
    engine = Engine(db, gateway=Gateway(config=CONFIG, policies=DatabasePolicies(db)))
    version = await engine.register(
        load_workflow_text(textwrap.dedent(THREE_CALLS)), workspace_id=ws
    )
    for _ in range(2):  # 0.03 charged per call with the markup: 0.09 a run, under 0.1 each
        run = await engine.run_until_settled(await engine.start_run(version, {}))
        assert run.status == RunStatus.COMPLETED
        assert run.cost == Decimal("0.06")
    prices = await db.read(
        lambda tx: tx.conn.scalars(
            select(llm_calls.c.price).where(llm_calls.c.workspace_id == ws)
        ).all()
    )
    assert prices == [Decimal("0.03")] * 6
