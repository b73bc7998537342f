"""Liveness and readiness: the database, the step queue and the embedded worker."""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from redis.asyncio import Redis

from agentmill.api.deps import DbDep
from agentmill.api.documented_errors import OPS_ERRORS
from agentmill.api.ops import is_operator
from agentmill.errors import PermissionDenied
from agentmill.observability.metrics import CONTENT_TYPE, render
from agentmill.queue import queue_backend
from agentmill.store.db import Database
from agentmill.store.queries import QueueStats, queue_stats
from agentmill.store.repositories.workers import WorkerRecord, list_workers
from agentmill.tools.registry import python_tool

router = APIRouter(tags=["health"])


_HEALTH_BODY = {
    "application/json": {
        "schema": {
            "type": "object",
            "properties": {"status": {"type": "string", "enum": ["ok", "unavailable"]}},
            "required": ["status"],
        }
    }
}


@router.get(
    "/health",
    response_model=None,
    responses={
        200: {"description": "Everything is up.", "content": _HEALTH_BODY},
        503: {"description": "The database, queue or worker is down.", "content": _HEALTH_BODY},
    },
)
async def health(request: Request, db: DbDep) -> JSONResponse:
    """``database``, ``queue`` (embedded mode queues steps in the database) and ``worker``
    (the embedded worker, or ``off`` when this process serves the API only). 503 when any is
    down. Only ``status`` for callers who are not operators (see api/ops.py): probes need no
    more."""
    response = await _health(request, db)
    if is_operator(request):
        return response
    status = "ok" if response.status_code == 200 else "unavailable"
    return JSONResponse({"status": status}, status_code=response.status_code)


async def _health(request: Request, db: Database) -> JSONResponse:
    worker = _worker_state(request.app.state.worker)
    try:
        stats, processes = await _snapshot(db)
    except Exception as exc:  # any failure to reach the database is "down"
        down = f"down: {type(exc).__name__}"
        return JSONResponse(
            {"status": "unavailable", "database": down, "queue": down, "worker": worker},
            status_code=503,
        )
    settings = request.app.state.settings
    backend = queue_backend(settings.queue_url)
    queue_status = await _ping(request.app.state.redis) if backend == "redis" else "ok"
    ok = worker != "stopped" and queue_status == "ok"
    body: dict[str, object] = {
        "status": "ok" if ok else "unavailable",
        "database": "ok",
        "queue": {"status": queue_status, "backend": backend, **asdict(stats)},
        "worker": worker,
        "workers": _liveness(processes, request.app.state.settings.lease_seconds),
        # The python tool's sandbox: available, unavailable (and why: it fails closed) or
        # rlimit-only, once the tool was first used in this process (probing costs a process
        # start). Reported, not counted as down: the rest of AgentMill works without it.
        "sandbox": _sandbox(),
    }
    return JSONResponse(body, status_code=200 if ok else 503)


def _liveness(processes: list[WorkerRecord], lease_seconds: float) -> dict[str, Any]:
    now = datetime.now(UTC)
    listed = []
    for process in processes:
        listed.append(
            {
                "id": process.id,
                "name": process.name,
                "state": process.state(now, lease_seconds),
                "in_flight": process.in_flight,
                "concurrency": process.concurrency,
                "queues": None if process.queues is None else list(process.queues),
                "last_seen_s": round(process.silent_for(now), 3),
            }
        )
    return {"alive": sum(p["state"] == "alive" for p in listed), "processes": listed}


async def _snapshot(db: Database) -> tuple[QueueStats, list[WorkerRecord]]:
    """The step queue and the worker processes, in one read."""
    return await db.read(lambda tx: (queue_stats(tx), list_workers(tx)))


async def _ping(client: Redis) -> str:
    try:
        await asyncio.wait_for(client.ping(), timeout=2)
    except Exception as exc:  # unreachable, refused, timed out: the queue is down
        return f"down: {type(exc).__name__}"
    return "ok"


def _worker_state(task: asyncio.Task[None] | None) -> str:
    if task is None:
        return "off"
    return "stopped" if task.done() else "running"


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={
        200: {"description": "Prometheus' text format.", "content": {CONTENT_TYPE: {}}},
        **OPS_ERRORS,
    },
)
async def metrics(request: Request, db: DbDep) -> Response:
    """Prometheus metrics: queue depth, in flight, lag, and live workers (for autoscaling).
    Operators only (AGENTMILL_OPS_NETWORKS, AGENTMILL_OPS_TOKEN)."""
    if not is_operator(request):
        raise PermissionDenied(
            "metrics are for operators: call from AGENTMILL_OPS_NETWORKS or with AGENTMILL_OPS_TOKEN"
        )
    stats, processes = await _snapshot(db)
    lease = request.app.state.settings.lease_seconds
    return Response(render(stats, processes, lease), media_type=CONTENT_TYPE)


def _sandbox() -> dict[str, Any]:
    status = python_tool().status
    if status is None:
        return {"state": "unchecked", "reason": "probed when the python tool is first used"}
    return status.to_dict()
