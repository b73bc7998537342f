"""A waiting human step's webhook: a signed POST to a real loopback server, retried, never fatal."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import urlsplit

import pytest
from fastapi import FastAPI, Request, Response

from agentmill.config import Settings
from agentmill.domain.spec import NotifySpec
from agentmill.domain.states import RunStatus
from agentmill.engine.engine import Engine
from agentmill.engine.webhooks import WebhookNotifier, signing_key
from agentmill.store.db import Database
from agentmill.tools.registry import ToolRegistry
from tests.cli.test_up import free_port
from tests.factories import start
from tests.servers import serving

FLOW = """
name: notified
steps:
  - id: triage
    type: human
    message: "Triage ticket 7"
    form: {type: object, properties: {priority: {type: string}}, required: [priority]}
    timeout: 3600
    notify:
      webhook: URL
      headers: {Authorization: Bearer hook-token}
"""


@dataclass
class Receiver:
    """A webhook receiver: answers with ``statuses`` in turn (then 200), keeps each request."""

    url: str
    statuses: list[int] = field(default_factory=list)
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    app = FastAPI()
    state = Receiver(url="")

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/hook")
    async def hook(request: Request) -> Response:
        state.requests.append((dict(request.headers), await request.body()))
        return Response(status_code=state.statuses.pop(0) if state.statuses else 200)

    with serving(app) as url:
        state.url = f"{url}/hook"
        yield state


def engine_for(db: Database, settings: Settings, port: int) -> Engine:
    """An engine whose webhooks may reach this machine's loopback on ``port`` (by default
    only public hosts are)."""
    egress = {"networks": ["127.0.0.0/8"], "ports": [port]}
    engine = Engine(
        db, settings=settings, tools=ToolRegistry(settings={"notify": {"egress": egress}})
    )
    engine.notifier.backoff = 0.05
    return engine


async def test_waiting_posts_a_signed_payload_to_the_webhook(
    db: Database, receiver: Receiver
) -> None:
    settings = Settings(
        lease_seconds=30,
        poll_interval=0.05,
        webhook_secret="whsec-test",
        public_url="https://am.example.com/",
    )
    receiver.statuses = [503]  # the first try fails; the retry is delivered
    engine = engine_for(db, settings, urlsplit(receiver.url).port or 0)
    run_id = await start(engine, FLOW.replace("URL", receiver.url))

    run = await engine.run_until_settled(run_id)  # returns once waiting and the webhook is done

    assert run.status == RunStatus.WAITING
    assert len(receiver.requests) == 2
    headers, body = receiver.requests[-1]
    assert headers["authorization"] == "Bearer hook-token"
    assert headers["content-type"] == "application/json"
    expected = hmac.new(
        b"whsec-test", headers["x-agentmill-timestamp"].encode() + b"." + body, hashlib.sha256
    ).hexdigest()
    assert headers["x-agentmill-signature"] == f"sha256={expected}"
    assert headers["x-agentmill-delivery"] == receiver.requests[0][0]["x-agentmill-delivery"]
    payload = json.loads(body)
    base = f"https://am.example.com/api/v1/runs/{run_id}"
    assert payload == {
        "type": "step.waiting",
        "run_id": run_id,
        "step_key": "triage",
        "message": "Triage ticket 7",
        "form": {
            "type": "object",
            "properties": {"priority": {"type": "string"}},
            "required": ["priority"],
        },
        "deadline": payload["deadline"],
        "links": {
            "run": base,
            "approve": f"{base}/steps/triage/approve",
            "reject": f"{base}/steps/triage/reject",
            "respond": f"{base}/steps/triage/respond",
        },
    }
    waiting = next(e for e in await engine.events(run_id=run_id) if e["type"] == "step.waiting")
    assert datetime.fromisoformat(payload["deadline"]) == datetime.fromisoformat(
        waiting["data"]["deadline"]
    )
    notified = [e for e in await engine.events(run_id=run_id) if e["type"] == "step.notified"]
    assert [(e["data"]["status"], e["data"]["attempts"]) for e in notified] == [(200, 2)]


async def test_the_default_signing_key_is_derived_from_the_secret_key() -> None:
    key = "webhook-test-key-Rk3Vn8Qz1Xb5Ty9Mw2Lc7Hd4Jp6F"
    settings = Settings(secret_key=key)
    assert (
        signing_key(settings)
        == hmac.new(key.encode(), b"agentmill/webhooks/v1", hashlib.sha256).digest()
    )


async def test_a_webhook_that_is_down_never_fails_the_run(db: Database, settings: Settings) -> None:
    port = free_port()  # nothing listens there
    engine = engine_for(db, settings, port)
    run_id = await start(engine, FLOW.replace("URL", f"http://127.0.0.1:{port}/hook"))

    run = await engine.run_until_settled(run_id)

    assert run.status == RunStatus.WAITING
    failed = [e for e in await engine.events(run_id=run_id) if e["type"] == "step.notify_failed"]
    assert len(failed) == 1
    assert failed[0]["level"] == "warning"
    assert failed[0]["data"]["attempts"] == 3
    assert "ConnectError" in failed[0]["data"]["error"]

    await engine.decide(run_id, "triage", approved=True, answer={"priority": "low"})
    assert (await engine.run_until_settled(run_id)).status == RunStatus.COMPLETED


async def test_a_webhook_to_a_private_address_is_refused_by_the_egress_policy(
    db: Database, settings: Settings, receiver: Receiver
) -> None:
    port = urlsplit(receiver.url).port
    public_only = {"notify": {"egress": {"hosts": ["*"], "ports": [port]}}}  # no networks
    engine = Engine(db, settings=settings, tools=ToolRegistry(settings=public_only))
    run_id = await start(engine, FLOW.replace("URL", receiver.url))

    run = await engine.run_until_settled(run_id)

    assert run.status == RunStatus.WAITING
    assert receiver.requests == []
    failed = [e for e in await engine.events(run_id=run_id) if e["type"] == "step.notify_failed"]
    assert failed[0]["data"]["attempts"] == 1  # a refusal is not retried
    assert failed[0]["data"]["error"] == "refused: 127.0.0.1 is a loopback address"


async def test_without_settings_any_public_host_but_no_private_one_is_allowed() -> None:
    notifier = WebhookNotifier(key=b"k", settings={})
    delivery = await notifier.deliver(NotifySpec(webhook="http://127.0.0.1/hook"), {"a": 1})

    assert (delivery.attempts, delivery.error) == (1, "refused: 127.0.0.1 is a loopback address")
