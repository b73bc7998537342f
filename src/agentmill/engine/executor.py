"""Executes one attempt of a claimed step and reports what happened; never raises for the step's
own failures (those become a :class:`Failed` outcome that the transitions classify)."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from typing import Any

import structlog

from agentmill.artifacts import ArtifactStore, artifact_ref
from agentmill.domain.spec import HumanStep, MapStep
from agentmill.domain.templates import TemplateError, compile_template
from agentmill.engine.claims import Claim
from agentmill.engine.compiled import CompiledWorkflow
from agentmill.engine.context import StepContext
from agentmill.engine.live import LiveBus
from agentmill.engine.nodes import NODES
from agentmill.engine.outcomes import Failed, Outcome, Skipped, StepReport, Succeeded
from agentmill.errors import BudgetExceeded, ConfigError, RetryableError, StepFailed
from agentmill.gateway import Gateway
from agentmill.gateway.types import CallReport
from agentmill.store.db import Database
from agentmill.store.repositories.artifacts import step_owner
from agentmill.tools.registry import ToolRegistry

log = structlog.get_logger("agentmill.executor")


class _RunDeadline(Exception):
    pass


async def execute(
    claim: Claim,
    compiled: CompiledWorkflow,
    gateway: Gateway,
    tools: ToolRegistry | None = None,
    db: Database | None = None,
    artifacts: ArtifactStore | None = None,
    live: LiveBus | None = None,
    calls: list[CallReport] | None = None,
) -> StepReport:
    """``calls``: the list the attempt's model calls are collected in, so that a caller whose
    attempt is cancelled still knows what it spent."""
    started = time.perf_counter()
    spec = compiled.steps[claim.spec_id]
    step = spec.step if isinstance(spec, MapStep) and claim.map_index is not None else spec
    ctx = StepContext(
        claim=claim,
        compiled=compiled,
        step=step,
        gateway=gateway,
        tools=tools or ToolRegistry(),
        db=db,
        artifacts=artifacts,
        live=live,
        calls=calls if calls is not None else [],
    )
    outcome: Outcome
    try:
        reads = compiled.artifact_reads.get(claim.spec_id)
        if reads and artifacts is not None:
            ctx.upstream_artifacts = await _artifact_refs(artifacts, claim.run_id, reads)
        when = getattr(step, "when", None)
        if when is not None and claim.map_index is None and not _truthy(ctx, when):
            outcome = Skipped(reason=f"'when' was false: {when!r}")
        else:
            kind = "map" if claim.map_index is None and isinstance(spec, MapStep) else step.type
            # A human step's timeout is how long it waits for a person (transitions/human.py).
            timeout = None if isinstance(step, HumanStep) else step.timeout
            outcome = await _with_timeouts(ctx, claim, timeout, kind)
            if isinstance(outcome, Succeeded):
                _check_json(outcome.output)
    except _RunDeadline:
        outcome = Failed(error="the run's timeout ran out while this step ran", retryable=False)
    except TimeoutError:
        outcome = Failed(error=f"timed out after {step.timeout:g}s", retryable=True)
    except RetryableError as exc:
        outcome = Failed(error=str(exc), retryable=True, retry_after=exc.retry_after)
    except BudgetExceeded as exc:
        outcome = Failed(error=str(exc), retryable=False, budget=True)
    except (StepFailed, ConfigError) as exc:
        outcome = Failed(error=str(exc), retryable=False)
    except TemplateError as exc:
        outcome = Failed(error=f"template error: {exc}", retryable=False)
    except Exception as exc:  # a bug in a node: fail the step, keep the worker alive
        log.exception("step raised unexpectedly", step=claim.step_key, run_id=claim.run_id)
        outcome = Failed(error=f"internal error: {type(exc).__name__}: {exc}", retryable=False)
    return StepReport(
        outcome=outcome,
        calls=tuple(ctx.calls),
        logs=tuple(ctx.logs),
        duration_ms=(time.perf_counter() - started) * 1000,
    )


async def _with_timeouts(
    ctx: StepContext, claim: Claim, step_timeout: float | None, kind: str
) -> Outcome:
    run_left = None
    if claim.deadline_at is not None:
        run_left = (claim.deadline_at - datetime.now(UTC)).total_seconds()
        if run_left <= 0:
            raise _RunDeadline
    node = NODES[kind]
    if step_timeout is None and run_left is None:
        return await node(ctx)
    limit = min(t for t in (step_timeout, run_left) if t is not None)
    try:
        async with asyncio.timeout(limit):
            return await node(ctx)
    except TimeoutError:
        if run_left is not None and (step_timeout is None or run_left < step_timeout):
            raise _RunDeadline from None
        raise


async def _artifact_refs(
    store: ArtifactStore, run_id: str, step_keys: frozenset[str]
) -> dict[str, list[dict[str, Any]]]:
    """References to the artifacts the upstream steps ``step_keys`` wrote, by step."""
    found: dict[str, list[dict[str, Any]]] = {key: [] for key in step_keys}
    for record in await store.list(run_id, step_keys):
        if record.step_key is not None:
            found[step_owner(record.step_key)].append(artifact_ref(record))
    return found


def _check_json(value: object) -> None:
    """Outputs are stored as JSON; say so clearly when a value is not."""
    if isinstance(value, str | int | float | bool) or value is None:
        return
    try:
        json.dumps(value)
    except (TypeError, ValueError) as exc:
        raise StepFailed(f"output is not JSON-serializable: {exc}") from None


def _truthy(ctx: StepContext, when: str | bool) -> bool:
    if isinstance(when, bool):
        return when
    value = compile_template(when).render(ctx.template_context)
    if isinstance(value, str):
        return value.strip().lower() not in ("", "false", "0", "no", "none", "null")
    return bool(value)
