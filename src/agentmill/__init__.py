"""AgentMill: durable multi-agent AI workflows.

The engine is a library: load a workflow, open a database, run it.

    from agentmill import Database, Engine, load_workflow_file

    db = Database("sqlite:///agentmill.db")
    await db.start()
    engine = Engine(db)
    version = await engine.register(load_workflow_file("flow.yaml"))
    run = await engine.run_until_settled(await engine.start_run(version, {"topic": "bees"}))
"""

from importlib.metadata import PackageNotFoundError, version

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

try:
    __version__ = version("agentmill")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0"

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
