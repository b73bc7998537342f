"""WebSockets: a run's event stream (the UI's terminal view), and a workspace's run-status feed.

Browsers cannot set headers on a WebSocket, so the credential may also come as ``?token=``.
Both streams follow the events log; ``?after=<event id>`` resumes without gaps.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from agentmill.api.deps import Principal, authenticate, workspace_role
from agentmill.domain.permissions import Permission, allows
from agentmill.domain.states import RunStatus
from agentmill.errors import AgentMillError, NotFound, PermissionDenied
from agentmill.store import queries
from agentmill.store.db import Database, Tx

router = APIRouter(tags=["streams"])

_FINAL = {f"run.{s.lower()}" for s in RunStatus if s.is_final}
_POLL_SECONDS = 1.0
_POLICY_VIOLATION = 1008


async def _accept(websocket: WebSocket) -> tuple[Database, Principal] | None:
    db: Database = websocket.app.state.db
    header = websocket.headers.get("authorization", "")
    secret = (
        header[7:]
        if header.lower().startswith("bearer ")
        else websocket.query_params.get("token", "")
    )
    try:
        principal = await authenticate(db, websocket.app.state.settings, secret)
    except AgentMillError as exc:
        # Accept, then close with the reason: a refused handshake tells a browser nothing.
        await websocket.accept()
        await websocket.close(code=_POLICY_VIOLATION, reason=str(exc)[:120])
        return None
    await websocket.accept()
    return db, principal


def _wire(event: dict[str, Any]) -> str:
    return json.dumps(
        {
            "id": event["id"],
            "run_id": event["run_id"],
            "step": event["step_key"],
            "type": event["type"],
            "level": event["level"],
            "ts": event["ts"].isoformat(),
            "data": event["data"],
            **({"workflow": event["workflow"]} if "workflow" in event else {}),
        },
        default=str,
    )


Fetch = Callable[[Tx, int], list[dict[str, Any]]]


def _reader(fetch: Fetch, after: int) -> Callable[[Tx], list[dict[str, Any]]]:
    return lambda tx: fetch(tx, after)


def _after(websocket: WebSocket) -> int | None:
    text = websocket.query_params.get("after")
    return int(text) if text and text.isdigit() else None


async def _follow(
    websocket: WebSocket, db: Database, fetch: Fetch, *, after: int, stop_on_final: str | None
) -> None:
    """Send what ``fetch(after)`` returns, waking on local commits, polling for other processes."""
    wake = asyncio.Event()
    unsubscribe = db.subscribe(lambda _events: wake.set())
    try:
        while True:
            wake.clear()
            batch = await db.read(_reader(fetch, after))
            for event in batch:
                after = event["id"]
                await websocket.send_text(_wire(event))
                if stop_on_final and event["run_id"] == stop_on_final and event["type"] in _FINAL:
                    await websocket.close()
                    return
            if batch:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout=_POLL_SECONDS)
    except WebSocketDisconnect:
        return
    finally:
        unsubscribe()


@router.websocket("/runs/{run_id}/ws")
async def run_stream(websocket: WebSocket, run_id: str) -> None:
    """The run's events, replayed then live; closes when the run ends."""
    accepted = await _accept(websocket)
    if accepted is None:
        return
    db, principal = accepted
    workspace_id = await db.read(lambda tx: queries.run_workspace(tx, run_id))
    try:
        if workspace_id is None:
            raise NotFound(f"run {run_id!r} not found")
        try:
            role = await workspace_role(db, principal, workspace_id)
        except NotFound:
            raise NotFound(f"run {run_id!r} not found") from None
        if not allows(role, Permission.WORKFLOW_READ):
            raise PermissionDenied("not allowed to read runs here")
    except AgentMillError as exc:
        await websocket.send_text(json.dumps({"error": {"code": "not_found", "message": str(exc)}}))
        await websocket.close(code=_POLICY_VIOLATION)
        return
    await _follow(
        websocket,
        db,
        lambda tx, after: queries.list_events(tx, root_run_id=run_id, after=after, limit=500),
        after=_after(websocket) or 0,
        stop_on_final=run_id,
    )


@router.websocket("/workspaces/{ws}/runs/ws")
async def workspace_runs(websocket: WebSocket, ws: str) -> None:
    """Status changes of the workspace's runs, live (``?after=0`` replays them all)."""
    accepted = await _accept(websocket)
    if accepted is None:
        return
    db, principal = accepted
    try:
        role = await workspace_role(db, principal, ws)
    except NotFound as exc:
        await websocket.send_text(json.dumps({"error": {"code": "not_found", "message": str(exc)}}))
        await websocket.close(code=_POLICY_VIOLATION)
        return
    if not allows(role, Permission.WORKFLOW_READ):
        await websocket.close(code=_POLICY_VIOLATION)
        return
    after = _after(websocket)
    if after is None:  # from now on, unless asked to replay
        after = await db.read(queries.last_event_id)
    await _follow(
        websocket,
        db,
        lambda tx, after: queries.run_status_events(tx, ws, after),
        after=after,
        stop_on_final=None,
    )
