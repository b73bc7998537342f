"""Webhooks that tell people a human step waits: a signed JSON POST, retried, never fatal.

The request goes through the ``http_request`` tool's egress checks (DESIGN.md decision 12):
the host is resolved once, every address must be public unless agentmill.yaml allows its
network (``tools: {notify: {egress: {...}}}``, the same shape as ``http_request``'s; without
it any public host on ports 80 and 443 is allowed), and the socket goes to the checked address.

Each request is signed: ``X-AgentMill-Signature: sha256=<hex HMAC-SHA256 of
"<X-AgentMill-Timestamp>.<body>">`` under :func:`signing_key`. ``X-AgentMill-Delivery`` is one
id for every attempt of a delivery, so a receiver can drop repeats.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import structlog

from agentmill.config import Settings
from agentmill.domain.backoff import backoff_delay
from agentmill.domain.spec import NotifySpec
from agentmill.engine.claims import Claim
from agentmill.engine.outcomes import WaitForHuman
from agentmill.ids import new_id
from agentmill.tools.base import ToolContext
from agentmill.tools.http import HttpRequestTool

if TYPE_CHECKING:
    from agentmill.engine.engine import Engine

log = structlog.get_logger("agentmill.webhooks")

SETTINGS_SECTION = "notify"
SIGNATURE_HEADER = "X-AgentMill-Signature"
TIMESTAMP_HEADER = "X-AgentMill-Timestamp"
DELIVERY_HEADER = "X-AgentMill-Delivery"
_KEY_INFO = b"agentmill/webhooks/v1"
_PUBLIC_HOSTS = {"hosts": ["*"]}  # the default: any public host (private ones stay refused)
_USER_AGENT = "AgentMill-webhook/0.1"


def signing_key(settings: Settings) -> bytes:
    """``AGENTMILL_WEBHOOK_SECRET``, or else HMAC-SHA256(AGENTMILL_SECRET_KEY,
    "agentmill/webhooks/v1"), so the secret key itself never leaves the server."""
    if settings.webhook_secret:
        return settings.webhook_secret.encode()
    return hmac.new(settings.secret().encode(), _KEY_INFO, hashlib.sha256).digest()


def sign(key: bytes, timestamp: str, body: bytes) -> str:
    """The signature header's value for ``body`` sent at ``timestamp`` (Unix seconds)."""
    digest = hmac.new(key, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def waiting_payload(
    *,
    run_id: str,
    step_key: str,
    message: str | None,
    form: Mapping[str, Any] | None,
    deadline: datetime | None,
    public_url: str | None,
) -> dict[str, Any]:
    """What a webhook receives when a human step starts waiting."""
    base = f"{(public_url or '').rstrip('/')}/api/v1/runs/{run_id}"
    links = {
        "run": base,
        "approve": f"{base}/steps/{step_key}/approve",
        "reject": f"{base}/steps/{step_key}/reject",
    }
    if form is not None:
        links["respond"] = f"{base}/steps/{step_key}/respond"
    return {
        "type": "step.waiting",
        "run_id": run_id,
        "step_key": step_key,
        "message": message,
        "form": form,
        "deadline": deadline.isoformat() if deadline else None,
        "links": links,
    }


@dataclass(frozen=True, kw_only=True)
class Delivery:
    """How a delivery went: the last answer's status, or why it failed."""

    delivery_id: str
    attempts: int
    status: int | None = None
    error: str | None = None


class WebhookNotifier:
    """Delivers payloads to webhooks: ``attempts`` tries, ``backoff`` seconds doubling between
    them; a refusal by the egress policy or a 4xx answer (except 408 and 429) is not retried."""

    def __init__(
        self,
        *,
        key: bytes,
        settings: Mapping[str, Any],
        attempts: int = 3,
        backoff: float = 0.5,
        timeout: float = 10.0,
    ) -> None:
        self._key = key
        self._context = ToolContext(settings={"egress": settings.get("egress", _PUBLIC_HOSTS)})
        self._tool: HttpRequestTool | None = None  # made on first use: it loads CA certificates
        self.attempts = attempts
        self.backoff = backoff
        self.timeout = timeout

    async def deliver(self, notify: NotifySpec, payload: Mapping[str, Any]) -> Delivery:
        if self._tool is None:
            self._tool = HttpRequestTool(max_response_bytes=4096)
        body = json.dumps(payload, separators=(",", ":"), default=str)
        delivery_id = new_id("dlv")
        error = "not sent"
        status: int | None = None
        for attempt in range(1, self.attempts + 1):
            timestamp = str(int(time.time()))
            headers = {
                **notify.headers,
                "content-type": "application/json",
                "user-agent": _USER_AGENT,
                TIMESTAMP_HEADER: timestamp,
                SIGNATURE_HEADER: sign(self._key, timestamp, body.encode()),
                DELIVERY_HEADER: delivery_id,
            }
            arguments = {
                "url": notify.webhook,
                "method": "POST",
                "headers": headers,
                "body": body,
                "timeout": self.timeout,
            }
            result = await self._tool.run(arguments, self._context)
            if result.is_error:
                error, status = str(result.content), None
                if error.startswith(("refused:", "invalid arguments:", "this workspace's")):
                    return Delivery(delivery_id=delivery_id, attempts=attempt, error=error)
            else:
                status = int(result.content["status"])
                if 200 <= status < 300:
                    return Delivery(delivery_id=delivery_id, attempts=attempt, status=status)
                error = f"the webhook answered HTTP {status}"
                if 400 <= status < 500 and status not in (408, 429):
                    break
            if attempt < self.attempts:
                await asyncio.sleep(backoff_delay(attempt, base=self.backoff))
        return Delivery(delivery_id=delivery_id, attempts=attempt, status=status, error=error)


async def announce(engine: Engine, claim: Claim, notify: NotifySpec, waiting: WaitForHuman) -> None:
    """Deliver a recorded wait's webhook and log how it went. A webhook that is down never
    touches the run beyond a ``step.notify_failed`` event."""
    payload = waiting_payload(
        run_id=claim.run_id,
        step_key=claim.step_key,
        message=waiting.message,
        form=waiting.form,
        deadline=waiting.deadline,
        public_url=engine.settings.public_url,
    )
    delivery = await engine.notifier.deliver(notify, payload)
    data: dict[str, Any] = {
        "webhook": notify.webhook,
        "delivery_id": delivery.delivery_id,
        "attempts": delivery.attempts,
        "status": delivery.status,
    }
    if delivery.error is not None:
        data["error"] = delivery.error
        log.warning("webhook not delivered", step=claim.step_key, run_id=claim.run_id, **data)
    try:
        await engine.db.write(
            lambda tx: engine.transitions.note_notification(
                tx, claim.run_id, claim.step_key, claim.attempt, **data
            )
        )
    except Exception:
        log.exception("could not log a webhook delivery", step=claim.step_key)
