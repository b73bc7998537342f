"""The one object a node receives: the step, its run's data, the gateway, and a place to log."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field, replace
from typing import Any

from agentmill.artifacts import ArtifactStore
from agentmill.domain.events import event_level
from agentmill.domain.spec import AgentSpec, AnyStep
from agentmill.domain.templates import render_value
from agentmill.engine.claims import Claim
from agentmill.engine.compiled import CompiledWorkflow
from agentmill.engine.live import LiveBus, live_event
from agentmill.engine.live_chat import DeltaPublisher, stream_chat
from agentmill.engine.outcomes import LogLine
from agentmill.errors import StoreUnavailable
from agentmill.gateway import CallContext, ChatRequest, ChatResponse, Gateway
from agentmill.gateway.types import CallReport
from agentmill.store.db import Database
from agentmill.tools.registry import ToolRegistry


@dataclass
class StepContext:
    claim: Claim
    compiled: CompiledWorkflow
    step: AnyStep
    gateway: Gateway
    tools: ToolRegistry = field(default_factory=ToolRegistry)
    db: Database | None = None  # for tools that keep data (memory); None in unit tests
    artifacts: ArtifactStore | None = None  # the run's files; None in unit tests
    # References to upstream steps' artifacts, for the steps whose ``.artifacts`` this step's
    # templates read (loaded only then: most steps read none).
    upstream_artifacts: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    live: LiveBus | None = None  # the run's live followers (token deltas, tool notices)
    calls: list[CallReport] = field(default_factory=list)
    logs: list[LogLine] = field(default_factory=list)
    _template_context: dict[str, Any] | None = None

    @property
    def template_context(self) -> dict[str, Any]:
        if self._template_context is None:
            context: dict[str, Any] = {
                "inputs": self.claim.run_inputs,
                "steps": self._steps(),
                "run": {"id": self.claim.run_id, "attempt": self.claim.attempt},
            }
            if self.claim.map_index is not None:
                context["item"] = self.claim.item
                context["index"] = self.claim.map_index
            self._template_context = context
        return self._template_context

    def _steps(self) -> dict[str, dict[str, Any]]:
        if not self.upstream_artifacts:
            return self.claim.upstream
        return {
            key: {**value, "artifacts": self.upstream_artifacts.get(key, [])}
            for key, value in self.claim.upstream.items()
        }

    def render(self, value: Any) -> Any:
        """Render templates inside ``value`` with the run's inputs and upstream outputs."""
        return render_value(value, self.template_context)

    def agent(self, name: str) -> AgentSpec:
        return self.compiled.spec.agents[name]

    def log(self, message: str, level: str = "info", **data: Any) -> None:
        self.logs.append(LogLine(message=message, level=event_level(level), data=data))

    def call_context(self, turn: int, agent: str | None = None) -> CallContext:
        caller = self.claim.caller
        return CallContext(
            workspace_id=caller.workspace_id,
            user_id=caller.started_by,
            api_key_id=caller.api_key_id,
            run_id=self.claim.run_id,
            step_id=self.claim.step_id,
            step_key=self.claim.step_key,
            agent=agent,
            attempt=self.claim.attempt,
            turn=turn,
        )

    async def chat(self, request: ChatRequest) -> ChatResponse:
        """Call a model through the gateway. Every request it makes to a provider (failed ones
        and failovers too) is recorded with the step's result, in the same transaction.

        One try per model: the engine retries a step durably, with backoff, without holding a
        worker slot, so the gateway only fails over."""
        request = replace(request, tries_per_model=1)
        # The budget or rate-limit store being unreachable refuses the call (fail closed); a
        # short outage is waited out here, for up to the gateway's ``store_wait``, rather than
        # spending the step's attempts (and failing a run that has none to spare). Nothing is
        # held or sent while waiting: the refusal came before the reservation.
        deadline = time.monotonic() + self.gateway.store_wait
        delay = 0.25
        while True:
            try:
                response = await self._chat(request)
                break
            except StoreUnavailable as exc:
                if time.monotonic() + delay > deadline:
                    raise
                if delay == 0.25:
                    self.log(f"waiting for the store: {exc}", level="warning", topic="budget")
                await asyncio.sleep(delay)
                delay = min(4.0, delay * 2)
        for notice in response.notices:
            self.log(notice, level="warning", topic="budget")
        return response

    async def _chat(self, request: ChatRequest) -> ChatResponse:
        audience = await self._audience()
        if self.live is not None and audience:
            # Someone follows the run: stream, so they see the answer as it is written.
            data = {"source": "llm", "turn": request.context.turn, "agent": request.context.agent}
            publisher = DeltaPublisher(self.live, audience, self._live_base(data))
            response = await stream_chat(self.gateway, request, self.calls.append, publisher)
        else:
            response = await self.gateway.chat(request, sink=self.calls.append)
        return response

    async def notify(self, type: str, level: str = "info", **data: Any) -> None:
        """Tell the run's live followers, if any, what the step is doing now. Not stored: what
        must be kept goes through :meth:`log`, with the step's result."""
        audience = await self._audience()
        if self.live is None or not audience:
            return
        event = live_event(type=type, level=level, **self._live_base(data))
        for run_id in audience:
            await self.live.publish(run_id, event)

    async def _audience(self) -> tuple[str, ...]:
        """The followed runs this step's live events go to: its root run (whose stream shows
        its sub-runs too) and, for a sub-run's step, the sub-run itself."""
        if self.live is None:
            return ()
        runs = {self.claim.root_run_id, self.claim.run_id}
        return tuple(sorted([r for r in runs if await self.live.watched(r)]))

    def _live_base(self, data: dict[str, Any]) -> dict[str, Any]:
        return {
            "run_id": self.claim.run_id,
            "step_key": self.claim.step_key,
            "attempt": self.claim.attempt,
            "data": data,
        }
