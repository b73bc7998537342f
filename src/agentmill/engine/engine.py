"""The engine as a library: register workflows, start and steer runs, run workers.

The same object backs ``agentmill run`` (in-process, one run), the server's embedded workers and
``agentmill worker`` processes; nothing here knows which of them it is serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from typing import Any

from agentmill.artifacts import ArtifactStore, artifacts_root
from agentmill.config import Settings, get_settings, read_config_file
from agentmill.domain.inputs import resolve_inputs
from agentmill.domain.spec import WorkflowSpec
from agentmill.domain.states import RunStatus
from agentmill.engine.claims import RunCaller
from agentmill.engine.compiled import CompiledWorkflow, WorkflowRegistry
from agentmill.engine.gateway_setup import build_gateway
from agentmill.engine.live import LiveBus
from agentmill.engine.transitions import Transitions, spec_loader
from agentmill.engine.webhooks import SETTINGS_SECTION, WebhookNotifier, signing_key
from agentmill.engine.worker import Worker
from agentmill.errors import ConfigError
from agentmill.gateway import Gateway
from agentmill.gateway.config import parse_gateway_config
from agentmill.store import queries
from agentmill.store.db import Database, Tx
from agentmill.store.dead_letters import DeadLetterPage, list_dead_letters
from agentmill.store.egress_policies import DatabaseEgress
from agentmill.store.models import LOCAL_WORKSPACE
from agentmill.store.queries import RunView, StepView
from agentmill.store.workflows import VersionRef, load_spec, save_version
from agentmill.tools.memory import SETTINGS_SECTION as MEMORY_SECTION
from agentmill.tools.registry import ToolRegistry, parse_tool_settings


class Engine:
    def __init__(
        self,
        db: Database,
        *,
        gateway: Gateway | None = None,
        settings: Settings | None = None,
        tools: ToolRegistry | None = None,
    ) -> None:
        self.db = db
        self.settings = settings or get_settings()
        # agentmill.yaml configures both the gateway and the tools: read it once.
        file, source = read_config_file(self.settings.config)
        if gateway is None:
            config = parse_gateway_config(file, os.environ, source=source)
            gateway = build_gateway(db, self.settings, config)
        self.gateway = gateway
        self.tools = tools or ToolRegistry(settings=parse_tool_settings(file, source))
        # Workspaces' own egress policies (PUT /workspaces/{ws}/egress), unless a test set one.
        self.egress = DatabaseEgress(db)
        if self.tools.workspace_egress is None:
            self.tools.workspace_egress = self.egress
        self.tools.set_default(MEMORY_SECTION, "embedding_model", self.settings.embedding_model)
        self.notifier = WebhookNotifier(
            key=signing_key(self.settings), settings=self.tools.settings_for(SETTINGS_SECTION)
        )
        self.artifacts = ArtifactStore(
            db,
            artifacts_root(self.settings, db.url),
            max_bytes=self.settings.artifact_max_bytes,
        )
        # Token deltas and tool notices for live followers; across processes through Redis.
        self.live = LiveBus(self.settings.shared_redis_url)
        self.registry = WorkflowRegistry()
        self.transitions = Transitions(self.registry, lease_seconds=self.settings.lease_seconds)

    async def aclose(self) -> None:
        """Close the gateway (its provider clients, Redis connections, pending usage records)
        and the live events' Redis connections."""
        await self.live.aclose()
        await self.gateway.aclose()

    # ------------------------------------------------------------------ workflows

    async def register(
        self, spec: WorkflowSpec, source: str | None = None, *, workspace_id: str = LOCAL_WORKSPACE
    ) -> VersionRef:
        """Store ``spec`` as a new version of its workflow (or reuse an identical latest one)."""
        return await self.db.write(
            lambda tx: save_version(tx, spec, source, workspace_id=workspace_id)
        )

    async def compiled(self, version_id: str, spec_path: str = "") -> CompiledWorkflow:
        cached = self.registry.cached(version_id, spec_path)
        if cached is not None:
            return cached
        return await self.db.read(
            lambda tx: self.registry.get(version_id, spec_path, spec_loader(tx))
        )

    # ------------------------------------------------------------------ runs

    async def start_run(
        self,
        version: VersionRef,
        inputs: dict[str, Any] | None = None,
        *,
        caller: RunCaller | None = None,
    ) -> str:
        """Validate ``inputs`` and start a run (its first steps are queued). Returns the run id.
        ``caller`` (who starts it) is who its model calls are budgeted and limited as."""
        spec = await self.db.read(lambda tx: load_spec(tx, version.version_id))
        resolved = resolve_inputs(spec, inputs or {})
        created = await self.db.write(
            lambda tx: self.transitions.create_run(
                tx,
                workflow_id=version.workflow_id,
                version_id=version.version_id,
                inputs=resolved,
                caller=caller,
            )
        )
        return created.run_id

    async def cancel(self, run_id: str, reason: str = "cancelled") -> RunStatus:
        return await self.db.write(lambda tx: self.transitions.cancel_run(tx, run_id, reason))

    async def decide(
        self,
        run_id: str,
        step_key: str,
        *,
        approved: bool,
        by: str | None = None,
        comment: str | None = None,
        payload: dict[str, Any] | None = None,
        answer: dict[str, Any] | None = None,
    ) -> None:
        """Approve or reject the human step ``step_key`` of a waiting run; a step with a form
        is approved with its ``answer`` (InvalidAnswer when it does not match the form)."""
        await self.db.write(
            lambda tx: self.transitions.decide(
                tx,
                run_id=run_id,
                step_key=step_key,
                approved=approved,
                by=by,
                comment=comment,
                payload=payload,
                answer=answer,
            )
        )

    async def expire(self, root_run_id: str | None = None) -> None:
        """Time out overdue runs and waiting human steps (what workers do every second)."""

        def sweep(tx: Tx) -> None:
            self.transitions.expire_runs(tx, root_run_id)
            self.transitions.expire_waits(tx, root_run_id)

        await self.db.write(sweep)

    async def dead_letters(
        self, workspace_id: str = LOCAL_WORKSPACE, *, cursor: str | None = None, limit: int = 50
    ) -> DeadLetterPage:
        """Steps that failed for good, newest first (``cursor``: a page's ``next_cursor``)."""
        try:
            position = queries.decode_cursor(cursor) if cursor else None
        except ValueError:
            raise ConfigError("cursor is not one this server gave out") from None
        return await self.db.read(
            lambda tx: list_dead_letters(tx, workspace_id, cursor=position, limit=limit)
        )

    async def redrive(self, step_id: str, *, by: str | None = None) -> RunView:
        """Run the dead letter ``step_id`` again, with a fresh set of attempts, and reopen the
        runs its failure ended; returns the root run. The run continues from that step."""
        root_run_id = await self.db.write(lambda tx: self.transitions.redrive(tx, step_id, by=by))
        return await self.get_run(root_run_id)

    async def get_run(self, run_id: str) -> RunView:
        return await self.db.read(lambda tx: queries.get_run(tx, run_id))

    async def steps(self, run_id: str) -> list[StepView]:
        return await self.db.read(lambda tx: queries.list_steps(tx, run_id))

    async def events(
        self, *, run_id: str | None = None, root_run_id: str | None = None, after: int = 0
    ) -> list[dict[str, Any]]:
        return await self.db.read(
            lambda tx: queries.list_events(tx, run_id=run_id, root_run_id=root_run_id, after=after)
        )

    # ------------------------------------------------------------------ workers

    def worker(self, **options: Any) -> Worker:
        options.setdefault("concurrency", self.settings.worker_concurrency)
        options.setdefault("poll_interval", self.settings.poll_interval)
        return Worker(self, **options)

    async def run_until_settled(
        self,
        run_id: str,
        *,
        on_waiting: Callable[[RunView], Any] | None = None,
        worker_options: dict[str, Any] | None = None,
    ) -> RunView:
        """Work on ``run_id`` (and its sub-runs) in this process until it ends, or until it waits
        for a person and ``on_waiting`` is None. ``on_waiting`` may decide and return."""
        settled = asyncio.Event()
        stop = asyncio.Event()

        def watch(events: list[dict[str, Any]]) -> None:
            for event in events:
                if event["run_id"] == run_id and event["type"].startswith("run."):
                    settled.set()

        unsubscribe = self.db.subscribe(watch)
        options = {"queues": None, **(worker_options or {})}  # a run's steps, on any queue
        worker = self.worker(root_run_id=run_id, **options)
        task = asyncio.create_task(worker.run(stop))
        try:
            while True:
                run = await self.get_run(run_id)
                if run.status.is_final:
                    return run
                if run.status == RunStatus.WAITING:
                    if on_waiting is None:
                        return run
                    result = on_waiting(run)
                    if asyncio.iscoroutine(result):
                        await result
                settled.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(settled.wait(), timeout=1.0)
                if task.done():
                    task.result()
        finally:
            unsubscribe()
            stop.set()
            await task
