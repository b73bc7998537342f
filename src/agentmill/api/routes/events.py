"""Live run events as Server-Sent Events, read from the append-only log (decision 8).

The stream first replays the log from the beginning (or after ``Last-Event-ID``), then follows
new events as they commit, and ends after the run's final event. Each message carries the
event's id, so a client that reconnects with ``Last-Event-ID`` misses nothing and sees nothing
twice.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse

from agentmill.api.deps import DbDep, PrincipalDep
from agentmill.api.routes.runs import run_access
from agentmill.domain.permissions import Permission
from agentmill.domain.states import RunStatus
from agentmill.store import queries
from agentmill.store.db import Tx

router = APIRouter(tags=["runs"])

_FINAL = {f"run.{s.lower()}" for s in RunStatus if s.is_final}
_KEEPALIVE_SECONDS = 15.0
_POLL_SECONDS = 1.0  # events written by other processes are seen at least this often


def _events_after(run_id: str, after: int) -> Callable[[Tx], list[dict[str, Any]]]:
    def read(tx: Tx) -> list[dict[str, Any]]:
        return queries.list_events(tx, root_run_id=run_id, after=after, limit=500)

    return read


def _source(event: dict[str, Any]) -> str:
    return str(event["data"].get("source", "engine"))


def _message(event: dict[str, Any]) -> str:
    payload = {
        "id": event["id"],
        "run_id": event["run_id"],
        "step": event["step_key"],
        "attempt": event["attempt"],
        "type": event["type"],
        "level": event["level"],
        "ts": event["ts"].isoformat(),
        "data": event["data"],
    }
    return (
        f"id: {event['id']}\nevent: {event['type']}\ndata: {json.dumps(payload, default=str)}\n\n"
    )


@router.get(
    "/runs/{run_id}/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "An event stream."}},
)
async def run_events(
    run_id: str,
    request: Request,
    db: DbDep,
    principal: PrincipalDep,
    level: Annotated[
        list[str] | None, Query(description="Only these levels (info, warning, error).")
    ] = None,
    source: Annotated[
        list[str] | None, Query(description="Only these sources (engine, llm, step).")
    ] = None,
    last_event_id: Annotated[int | None, Header(alias="Last-Event-ID", ge=0)] = None,
) -> StreamingResponse:
    """The run's events (and its sub-runs'): what happened so far, then live, until it ends."""
    await run_access(db, principal, run_id, Permission.WORKFLOW_READ)
    wake = asyncio.Event()

    def on_commit(events: list[dict[str, Any]]) -> None:
        if any(e.get("root_run_id") == run_id for e in events):
            wake.set()

    async def stream() -> AsyncIterator[str]:
        after = last_event_id or 0
        unsubscribe = db.subscribe(on_commit)
        idle = 0.0
        try:
            yield ": stream of run events\n\n"
            while True:
                wake.clear()
                batch = await db.read(_events_after(run_id, after))
                ended = False
                for event in batch:
                    after = event["id"]
                    if event["run_id"] == run_id and event["type"] in _FINAL:
                        ended = True
                    if level and event["level"] not in level:
                        continue
                    if source and _source(event) not in source:
                        continue
                    yield _message(event)
                if ended:
                    return
                if len(batch) == 500:
                    continue  # more to replay right away
                if await request.is_disconnected():
                    return
                try:
                    await asyncio.wait_for(wake.wait(), timeout=_POLL_SECONDS)
                    idle = 0.0
                except TimeoutError:
                    idle += _POLL_SECONDS
                    if idle >= _KEEPALIVE_SECONDS:
                        idle = 0.0
                        yield ": keep-alive\n\n"
        finally:
            unsubscribe()

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
