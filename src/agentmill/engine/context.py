"""The one object a node receives: the step, its run's data, the gateway, and a place to log."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agentmill.domain.spec import AgentSpec, AnyStep
from agentmill.domain.templates import render_value
from agentmill.engine.claims import Claim
from agentmill.engine.compiled import CompiledWorkflow
from agentmill.engine.outcomes import CallRecord, LogLine
from agentmill.errors import StepError
from agentmill.gateway import CallContext, ChatRequest, ChatResponse, Gateway, Usage


@dataclass
class StepContext:
    claim: Claim
    compiled: CompiledWorkflow
    step: AnyStep
    gateway: Gateway
    calls: list[CallRecord] = field(default_factory=list)
    logs: list[LogLine] = field(default_factory=list)
    _template_context: dict[str, Any] | None = None

    @property
    def template_context(self) -> dict[str, Any]:
        if self._template_context is None:
            context: dict[str, Any] = {
                "inputs": self.claim.run_inputs,
                "steps": self.claim.upstream,
                "run": {"id": self.claim.run_id, "attempt": self.claim.attempt},
            }
            if self.claim.map_index is not None:
                context["item"] = self.claim.item
                context["index"] = self.claim.map_index
            self._template_context = context
        return self._template_context

    def render(self, value: Any) -> Any:
        """Render templates inside ``value`` with the run's inputs and upstream outputs."""
        return render_value(value, self.template_context)

    def agent(self, name: str) -> AgentSpec:
        return self.compiled.spec.agents[name]

    def log(self, message: str, level: str = "info", **data: Any) -> None:
        self.logs.append(LogLine(message=message, level=level, data=data))

    def call_context(self, turn: int) -> CallContext:
        return CallContext(
            run_id=self.claim.run_id,
            step_key=self.claim.step_key,
            attempt=self.claim.attempt,
            turn=turn,
        )

    async def chat(self, request: ChatRequest) -> ChatResponse:
        """Call a model through the gateway and record the call, failed or not."""
        try:
            response = await self.gateway.chat(request)
        except StepError as exc:
            self.calls.append(
                CallRecord(
                    provider=request.provider,
                    model=request.model,
                    turn=request.context.turn,
                    usage=Usage(),
                    latency_ms=0.0,
                    error=str(exc),
                )
            )
            raise
        self.calls.append(
            CallRecord(
                provider=request.provider,
                model=response.model,
                turn=request.context.turn,
                usage=response.usage,
                latency_ms=response.latency_ms,
            )
        )
        return response
