"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from agentmill.api.deps import DbDep

router = APIRouter(tags=["health"])


@router.get("/health", response_model=None)
async def health(db: DbDep) -> JSONResponse:
    """Whether the database answers; 503 when it does not."""
    try:
        await db.read(lambda tx: tx.conn.execute(text("SELECT 1")).scalar())
    except Exception as exc:  # any failure to reach the database is "down"
        return JSONResponse(
            {"status": "unavailable", "database": f"down: {type(exc).__name__}"}, status_code=503
        )
    return JSONResponse({"status": "ok", "database": "ok"})
