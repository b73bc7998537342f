"""What a workspace's model calls used and cost."""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter
from fastapi.exceptions import RequestValidationError

from agentmill.api.deps import DbDep, WorkspaceAccess, require
from agentmill.api.params import Timestamp
from agentmill.api.schemas import UsageLinePublic, UsagePublic
from agentmill.domain.permissions import Permission
from agentmill.store.repositories.usage import UsageLine, usage_report

router = APIRouter(tags=["usage"])

ReadUsage = Annotated[WorkspaceAccess, require(Permission.USAGE_READ)]
DEFAULT_PERIOD = timedelta(days=30)


def _line(line: UsageLine) -> UsageLinePublic:
    return UsageLinePublic(**asdict(line))


@router.get("/workspaces/{ws}/usage", response_model=UsagePublic)
async def get_usage(
    access: ReadUsage,
    db: DbDep,
    since: Timestamp | None = None,
    until: Timestamp | None = None,
) -> UsagePublic:
    """Model calls, tokens and cost in ``[since, until)`` (default: the last 30 days), in total,
    per model and per workflow. Times without a zone are UTC."""
    end = _utc(until) if until else datetime.now(UTC)
    start = _utc(since) if since else end - DEFAULT_PERIOD
    if start >= end:
        message = f"must be before until ({end.isoformat()})"
        raise RequestValidationError([{"loc": ("query", "since"), "msg": message}])
    report = await db.read(lambda tx: usage_report(tx, access.workspace_id, since=start, until=end))
    return UsagePublic(
        workspace_id=access.workspace_id,
        since=report.since,
        until=report.until,
        total=_line(report.total),
        by_model=[_line(line) for line in report.by_model],
        by_workflow=[_line(line) for line in report.by_workflow],
    )


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)
