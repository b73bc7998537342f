"""Prebuilt statements for the engine's hot path (those about runs and steps are in
store/repositories/runs.py and steps.py, and re-exported here).

SQLAlchemy builds and caches a statement's compiled form by its cache key; building the same
``update(...).where(...).values(...)`` anew for every step costs more than running it. These are
built once and executed with parameters.
"""

from __future__ import annotations

from sqlalchemy import insert

from agentmill.store.models import events, llm_calls
from agentmill.store.prepared import Prepared
from agentmill.store.repositories.runs import LOAD_RUN as LOAD_RUN
from agentmill.store.repositories.runs import LOAD_RUNS as LOAD_RUNS
from agentmill.store.repositories.runs import LOCK_FREE_RUNS_STATUS as LOCK_FREE_RUNS_STATUS
from agentmill.store.repositories.runs import LOCK_RUN_STATUS as LOCK_RUN_STATUS
from agentmill.store.repositories.runs import RUN_ADD_PROGRESS as RUN_ADD_PROGRESS
from agentmill.store.repositories.runs import RUN_STATUS as RUN_STATUS
from agentmill.store.repositories.runs import update_run as update_run
from agentmill.store.repositories.steps import FINISH_ATTEMPT as FINISH_ATTEMPT
from agentmill.store.repositories.steps import INSERT_STEP as INSERT_STEP
from agentmill.store.repositories.steps import JOIN_NEED_DONE as JOIN_NEED_DONE
from agentmill.store.repositories.steps import JOIN_READY as JOIN_READY
from agentmill.store.repositories.steps import UPSTREAM as UPSTREAM

INSERT_EVENTS = Prepared(insert(events))
INSERT_LLM_CALLS = Prepared(insert(llm_calls))
