"""AgentMill: durable multi-agent AI workflows.

The engine is a library: load a workflow, open a database, run it.

    from agentmill import Database, Engine, load_workflow_file

    db = Database("sqlite:///agentmill.db")
    await db.start()
    engine = Engine(db)
    version = await engine.register(load_workflow_file("flow.yaml"))
    run = await engine.run_until_settled(await engine.start_run(version, {"topic": "bees"}))
"""

from __future__ import annotations

import importlib
import typing

if typing.TYPE_CHECKING:
    from agentmill.config import Settings
    from agentmill.domain.inputs import InvalidInputs
    from agentmill.domain.spec import WorkflowSpec
    from agentmill.domain.states import RunStatus, StepStatus
    from agentmill.domain.validation import load_workflow_file, load_workflow_text
    from agentmill.engine.engine import Engine
    from agentmill.errors import (
        AgentMillError,
        BudgetExceeded,
        ConfigError,
        Conflict,
        NotFound,
        Problem,
        RetryableError,
        SpecError,
        StepError,
        StepFailed,
    )
    from agentmill.store.db import Database
    from agentmill.store.migrate import upgrade
    from agentmill.store.queries import RunView, StepView

    __version__: str

# Each public name -> the module that defines it. Imported on first access (PEP 562), so that
# `import agentmill.<anything>` (the CLI above all) does not load the engine, SQLAlchemy, the
# provider SDKs and mcp it never uses.
_EXPORTS = {
    "AgentMillError": "agentmill.errors",
    "BudgetExceeded": "agentmill.errors",
    "ConfigError": "agentmill.errors",
    "Conflict": "agentmill.errors",
    "Database": "agentmill.store.db",
    "Engine": "agentmill.engine.engine",
    "InvalidInputs": "agentmill.domain.inputs",
    "NotFound": "agentmill.errors",
    "Problem": "agentmill.errors",
    "RetryableError": "agentmill.errors",
    "RunStatus": "agentmill.domain.states",
    "RunView": "agentmill.store.queries",
    "Settings": "agentmill.config",
    "SpecError": "agentmill.errors",
    "StepError": "agentmill.errors",
    "StepFailed": "agentmill.errors",
    "StepStatus": "agentmill.domain.states",
    "StepView": "agentmill.store.queries",
    "WorkflowSpec": "agentmill.domain.spec",
    "load_workflow_file": "agentmill.domain.validation",
    "load_workflow_text": "agentmill.domain.validation",
    "upgrade": "agentmill.store.migrate",
}

__all__ = [
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
]


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("agentmill")
    except PackageNotFoundError:  # running from a source tree without installing
        return "0.0.0"


def __getattr__(name: str) -> typing.Any:
    if name == "__version__":
        value: typing.Any = _package_version()
    elif name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # cached: later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
