"""Liveness and readiness: the database, the step queue and the embedded worker."""

from __future__ import annotations

import asyncio
from dataclasses import asdict

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from agentmill.api.deps import DbDep
from agentmill.store.queries import queue_stats

router = APIRouter(tags=["health"])


@router.get("/health", response_model=None)
async def health(request: Request, db: DbDep) -> JSONResponse:
    """``database``, ``queue`` (embedded mode queues steps in the database) and ``worker``
    (the embedded worker, or ``off`` when this process serves the API only). 503 when any is
    down."""
    worker = _worker_state(request.app.state.worker)
    try:
        stats = await db.read(queue_stats)
    except Exception as exc:  # any failure to reach the database is "down"
        down = f"down: {type(exc).__name__}"
        return JSONResponse(
            {"status": "unavailable", "database": down, "queue": down, "worker": worker},
            status_code=503,
        )
    ok = worker != "stopped"
    body: dict[str, object] = {
        "status": "ok" if ok else "unavailable",
        "database": "ok",
        "queue": {"status": "ok", "backend": "sql", **asdict(stats)},
        "worker": worker,
    }
    return JSONResponse(body, status_code=200 if ok else 503)


def _worker_state(task: asyncio.Task[None] | None) -> str:
    if task is None:
        return "off"
    return "stopped" if task.done() else "running"
