"""Retries with backoff; retryable vs non-retryable errors; timeouts."""

from __future__ import annotations

from agentmill.domain.states import RunStatus, StepStatus
from agentmill.engine.engine import Engine
from tests.factories import event_types, run_workflow, steps_by_key


def flaky(fail_attempts: int, fail_with: str, max_attempts: int) -> str:
    return f"""
    name: flaky
    agents:
      m: {{model: scripted/m, options: {{fail_attempts: {fail_attempts}, fail_with: {fail_with}}}}}
    steps:
      - id: call
        agent: m
        prompt: hello
        retry: {{max_attempts: {max_attempts}, backoff: 0.01, max_backoff: 0.05}}
    """


async def test_retryable_failures_are_retried_then_succeed(engine: Engine) -> None:
    run = await run_workflow(engine, flaky(2, "server_error", 3))

    assert run.status == RunStatus.COMPLETED
    step = (await steps_by_key(engine, run.id))["call"]
    assert step.status == StepStatus.SUCCEEDED
    assert step.attempt == 3
    types = await event_types(engine, run.id, "call")
    assert types.count("step.retrying") == 2
    assert types.count("step.started") == 3
    calls = [e for e in await engine.events(run_id=run.id) if e["type"] == "llm.call"]
    assert [c["data"]["error"] for c in calls] == [
        "503 Service Unavailable (scripted failure)",
        "503 Service Unavailable (scripted failure)",
        None,
    ]


async def test_exhausted_retries_fail_the_run_with_the_last_error(engine: Engine) -> None:
    run = await run_workflow(engine, flaky(5, "rate_limit", 3))

    assert run.status == RunStatus.FAILED
    assert (
        run.error == "step 'call' failed after 3 attempts: 429 Too Many Requests (scripted failure)"
    )
    step = (await steps_by_key(engine, run.id))["call"]
    assert (step.status, step.attempt) == (StepStatus.FAILED, 3)


async def test_non_retryable_errors_are_not_retried(engine: Engine) -> None:
    run = await run_workflow(engine, flaky(5, "bad_request", 5))

    assert run.status == RunStatus.FAILED
    assert run.error == "step 'call' failed: 400 Bad Request (scripted failure)"
    step = (await steps_by_key(engine, run.id))["call"]
    assert step.attempt == 1
    assert "step.retrying" not in await event_types(engine, run.id)


async def test_backoff_delays_grow(engine: Engine) -> None:
    spec = """
    name: backoff
    agents:
      m: {model: scripted/m, options: {fail_attempts: 3, fail_with: timeout}}
    steps:
      - id: call
        agent: m
        prompt: x
        retry: {max_attempts: 4, backoff: 0.02, multiplier: 3, jitter: false}
    """
    run = await run_workflow(engine, spec)

    assert run.status == RunStatus.COMPLETED
    delays = [
        e["data"]["delay"]
        for e in await engine.events(run_id=run.id)
        if e["type"] == "step.retrying"
    ]
    assert delays == [0.02, 0.06, 0.18]


async def test_a_step_that_exceeds_its_timeout_is_failed_as_a_timeout(engine: Engine) -> None:
    spec = """
    name: slow
    agents:
      m: {model: scripted/m, options: {latency: 5}}
    steps:
      - id: call
        agent: m
        prompt: x
        timeout: 0.2
        retry: {max_attempts: 2, backoff: 0}
    """
    run = await run_workflow(engine, spec)

    assert run.status == RunStatus.FAILED
    assert run.error == "step 'call' failed after 2 attempts: timed out after 0.2s"
    assert (await event_types(engine, run.id, "call")).count("step.retrying") == 1


async def test_the_run_timeout_ends_a_run_that_takes_too_long(engine: Engine) -> None:
    spec = """
    name: long
    timeout: 0.3
    agents:
      m: {model: scripted/m, options: {latency: 5}}
    steps:
      - id: call
        agent: m
        prompt: x
      - id: after
        needs: [call]
        value: never
    """
    run = await run_workflow(engine, spec)

    assert run.status == RunStatus.FAILED
    assert run.error is not None
    assert "timeout ran out" in run.error or "timed out after 0.3s" in run.error
    steps = await steps_by_key(engine, run.id)
    assert "after" not in steps
