"""Live run events as Server-Sent Events, read from the append-only log (decision 8).

The stream first replays the log from the beginning (or after ``Last-Event-ID``), then follows
new events as they commit, and ends after the run's final event. Each message carries the
event's id, so a client that reconnects with ``Last-Event-ID`` misses nothing and sees nothing
twice.

While it follows, live events are merged in: ``step.delta`` (a running step's model writing) and
``step.tool`` (a tool call starting or ending). They are not in the log, so they have no id (a
reconnect neither resumes nor repeats them), and ``"ephemeral": true`` instead of ``"id"``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse

from agentmill.api import sse
from agentmill.api.deps import DbDep, LiveDep, PrincipalDep
from agentmill.api.follow import POLL_SECONDS, follow
from agentmill.api.routes.runs import run_access
from agentmill.api.sse import sse_comment, sse_message
from agentmill.domain.events import EventLevel, EventSource
from agentmill.domain.permissions import Permission
from agentmill.store import queries

router = APIRouter(tags=["runs"])

_KEEPALIVE_SECONDS = 15.0


def _source(event: dict[str, Any]) -> str:
    return str(event["data"].get("source", "engine"))


def _message(event: dict[str, Any]) -> bytes:
    ephemeral = bool(event.get("ephemeral"))
    payload = {
        **({"ephemeral": True} if ephemeral else {"id": event["id"]}),
        "run_id": event["run_id"],
        "step": event["step_key"],
        "attempt": event["attempt"],
        "type": event["type"],
        "level": event["level"],
        "ts": event["ts"] if isinstance(event["ts"], str) else event["ts"].isoformat(),
        "data": event["data"],
    }
    # No id for a live event: it is not in the log, and must not move the client's Last-Event-ID.
    return sse_message(
        json.dumps(payload, default=str),
        event=event["type"],
        id=None if ephemeral else event["id"],
    )


@router.get(
    "/runs/{run_id}/events",
    response_class=StreamingResponse,
    responses={200: {"content": {sse.MEDIA_TYPE: {}}, "description": "An event stream."}},
)
async def run_events(
    run_id: str,
    request: Request,
    db: DbDep,
    live: LiveDep,
    principal: PrincipalDep,
    level: Annotated[list[EventLevel] | None, Query(description="Only these levels.")] = None,
    source: Annotated[
        list[EventSource] | None,
        Query(description="Only these sources: the engine, model calls (llm), step code (step)."),
    ] = None,
    live_events: Annotated[
        bool,
        Query(
            alias="live",
            description="Also send live, unstored events (step.delta, step.tool); false: "
            "only the log's events.",
        ),
    ] = True,
    # le: event ids are 64-bit; a larger one would fail in the database mid-stream.
    last_event_id: Annotated[int | None, Header(alias="Last-Event-ID", ge=0, le=2**63 - 1)] = None,
) -> StreamingResponse:
    """The run's events (and its sub-runs'): what happened so far, then live, until it ends."""
    await run_access(db, principal, run_id, Permission.WORKFLOW_READ)

    async def stream() -> AsyncIterator[bytes]:
        yield sse_comment("stream of run events")
        idle = 0
        events = follow(
            db,
            lambda tx, after: queries.list_events(tx, root_run_id=run_id, after=after, limit=500),
            after=last_event_id or 0,
            until_run=run_id,
            live=live if live_events else None,
            closing=request.app.state.closing,
        )
        async with contextlib.aclosing(events):
            async for event in events:
                if event is None:  # nothing new for a while
                    if await request.is_disconnected():
                        return
                    idle += 1
                    if idle * POLL_SECONDS >= _KEEPALIVE_SECONDS:
                        idle = 0
                        yield sse_comment("keep-alive")
                    continue
                idle = 0
                if level and event["level"] not in level:
                    continue
                if source and _source(event) not in source:
                    continue
                yield _message(event)

    return StreamingResponse(stream(), media_type=sse.MEDIA_TYPE, headers=sse.HEADERS)
