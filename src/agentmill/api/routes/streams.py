"""WebSockets: a run's event stream (the UI's terminal view), and a workspace's run-status feed.

Browsers cannot set headers on a WebSocket, so the credential may also come as ``?token=``.
Both streams follow the events log; ``?after=<event id>`` resumes without gaps. A run's stream
also carries its live events (``step.delta``, ``step.tool``), marked ``"ephemeral": true`` and
without an id: they are not in the log and are not replayed.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncGenerator
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from agentmill.api.closing import Closing
from agentmill.api.deps import Principal, authenticate, workspace_role
from agentmill.api.follow import follow
from agentmill.domain.permissions import Permission, allows
from agentmill.errors import AgentMillError, NotFound, PermissionDenied
from agentmill.store import queries
from agentmill.store.db import Database

router = APIRouter(tags=["streams"])

_POLICY_VIOLATION = 1008
_SERVICE_RESTART = 1012


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
    ts = event["ts"]
    return json.dumps(
        {
            # A live event (token delta, tool notice) is not in the log: no id to resume from.
            **({"ephemeral": True} if event.get("ephemeral") else {"id": event["id"]}),
            "run_id": event["run_id"],
            "step": event["step_key"],
            "type": event["type"],
            "level": event["level"],
            "ts": ts if isinstance(ts, str) else ts.isoformat(),
            "data": event["data"],
            **({"workflow": event["workflow"]} if "workflow" in event else {}),
        },
        default=str,
    )


def _after(websocket: WebSocket) -> int | None:
    text = websocket.query_params.get("after")
    # Beyond 64 bits no event id can follow it; the database would refuse the number.
    return int(text) if text and text.isdigit() and int(text) < 2**63 else None


async def _send(websocket: WebSocket, events: AsyncGenerator[dict[str, Any] | None]) -> None:
    try:
        async with contextlib.aclosing(events):  # unsubscribes at once when the client leaves
            async for event in events:
                if event is not None:
                    await websocket.send_text(_wire(event))
        closing: Closing = websocket.app.state.closing
        # Ended by the server stopping, not by the run: 1012 asks the client to come back.
        await websocket.close(code=_SERVICE_RESTART if closing.is_set else 1000)
    except WebSocketDisconnect:  # the client left, or a stopping server hung up on it, first
        return


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
    events = follow(
        db,
        lambda tx, after: queries.list_events(tx, root_run_id=run_id, after=after, limit=500),
        after=_after(websocket) or 0,
        until_run=run_id,
        live=websocket.app.state.live,
        closing=websocket.app.state.closing,
    )
    await _send(websocket, events)


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
    await _send(
        websocket,
        follow(
            db,
            lambda tx, after: queries.run_status_events(tx, ws, after),
            after=after,
            closing=websocket.app.state.closing,
        ),
    )
