"""The names `agentmill` exports are a contract: adding or removing one is a deliberate change."""

from __future__ import annotations

import types

import agentmill

EXPECTED = {
    "AgentMillError",
    "BudgetExceeded",
    "ConfigError",
    "Conflict",
    "Database",
    "Engine",
    "InvalidInputs",
    "NotFound",
    "Problem",
    "RetryableError",
    "RunStatus",
    "RunView",
    "Settings",
    "SpecError",
    "StepError",
    "StepFailed",
    "StepStatus",
    "StepView",
    "WorkflowSpec",
    "__version__",
    "load_workflow_file",
    "load_workflow_text",
    "upgrade",
}


def test_public_names_are_pinned() -> None:
    assert set(agentmill.__all__) == EXPECTED
    # every public attribute (other than submodules) is exported on purpose, and exists
    public = {
        name
        for name, value in vars(agentmill).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public - {"annotations", "version", "PackageNotFoundError"} <= EXPECTED
    assert all(hasattr(agentmill, name) for name in agentmill.__all__)


def test_the_library_runs_a_workflow_as_documented(tmp_path: object) -> None:
    import asyncio

    async def main() -> agentmill.RunView:
        url = f"sqlite:///{tmp_path}/lib.db"
        await agentmill.upgrade(agentmill.Database(url))
        db = agentmill.Database(url)
        await db.start()
        try:
            engine = agentmill.Engine(db)
            spec = agentmill.load_workflow_text(
                "name: lib\nsteps:\n  - id: a\n    value: '{{ inputs.x * 2 }}'\ninputs:\n  x: {type: integer}\noutputs:\n  y: '{{ steps.a.output }}'\n"
            )
            version = await engine.register(spec)
            return await engine.run_until_settled(await engine.start_run(version, {"x": 21}))
        finally:
            await db.close()

    run = asyncio.run(main())
    assert run.status == agentmill.RunStatus.COMPLETED
    assert run.outputs == {"y": 42}


def test_ids_are_prefixed_unique_and_ordered_by_time() -> None:
    import time

    from agentmill.ids import new_id

    first = new_id("run")
    time.sleep(0.002)
    later = [new_id("run") for _ in range(1000)]
    assert first.startswith("run_")
    assert len(first) == len("run_") + 26
    assert len(set(later)) == 1000
    assert all(first < other for other in later)


def test_client_names_are_pinned() -> None:
    import agentmill.client

    assert set(agentmill.client.__all__) == {"ApiError", "AsyncClient", "Client"}
