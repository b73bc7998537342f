"""``/``: a small page until the web UI exists."""

from __future__ import annotations

import html

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from sqlalchemy import select

from agentmill.api.deps import DbDep
from agentmill.store.models import runs, workflows

router = APIRouter(tags=["home"], include_in_schema=False)

_LOOPBACK = {"127.0.0.1", "::1", "localhost"}


@router.get("/", response_class=HTMLResponse)
async def home(request: Request, db: DbDep) -> HTMLResponse:
    """Links to the API docs; on a loopback-only server, the latest runs too."""
    rows: list[str] = []
    local = request.app.state.bind_host in _LOOPBACK
    if local:
        recent = await db.read(
            lambda tx: tx.conn.execute(
                select(runs.c.id, runs.c.status, runs.c.created_at, workflows.c.name)
                .join(workflows, workflows.c.id == runs.c.workflow_id)
                .where(runs.c.parent_run_id.is_(None))
                .order_by(runs.c.created_at.desc())
                .limit(20)
            ).all()
        )
        rows = [
            f"<tr><td><code>{html.escape(r.id)}</code></td><td>{html.escape(r.name)}</td>"
            f"<td>{html.escape(r.status)}</td><td>{r.created_at:%Y-%m-%d %H:%M:%S}</td></tr>"
            for r in recent
        ]
    table = (
        "<table><tr><th>run</th><th>workflow</th><th>status</th><th>created (UTC)</th></tr>"
        + "".join(rows)
        + "</table>"
        if rows
        else ("<p>No runs yet.</p>" if local else "<p>Sign in through the API to see runs.</p>")
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>AgentMill</title>
<style>body{{font:15px system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}}
td,th{{padding:.2rem .8rem;text-align:left}}code{{font-size:13px}}</style></head><body>
<h1>AgentMill</h1>
<p>The API is at <code>/api/v1</code>. Interactive documentation: <a href="/docs">/docs</a>
(OpenAPI: <a href="/openapi.json">/openapi.json</a>). Health: <a href="/health">/health</a>.</p>
<h2>Recent runs</h2>{table}</body></html>"""
    return HTMLResponse(page)
