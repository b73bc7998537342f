"""A workspace's own egress allowlist for ``http_request`` (one row, or none for the default)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, delete, select
from sqlalchemy.dialects import postgresql, sqlite

from agentmill.store.db import Tx
from agentmill.store.models import workspace_egress
from agentmill.store.prepared import Prepared

_t = workspace_egress.c


@dataclass(frozen=True, kw_only=True)
class EgressRecord:
    workspace_id: str
    hosts: list[str]
    networks: list[str]
    ports: list[int]
    updated_by: str | None
    updated_at: datetime

    def as_settings(self) -> dict[str, list[str] | list[int]]:
        """The mapping ``EgressPolicy.from_settings`` reads."""
        return {"hosts": self.hosts, "networks": self.networks, "ports": self.ports}


# Prepared: workers read it (behind a cache) when an agent calls http_request.
_GET = Prepared(select(workspace_egress).where(_t.workspace_id == bindparam("workspace_id")))


def get_egress(tx: Tx, workspace_id: str) -> EgressRecord | None:
    """The workspace's own policy; None when it uses the operator's default."""
    row = _GET.rows(tx.conn, {"workspace_id": workspace_id})
    return EgressRecord(**row[0]._asdict()) if row else None


def set_egress(
    tx: Tx,
    workspace_id: str,
    *,
    hosts: Sequence[str],
    networks: Sequence[str],
    ports: Sequence[int],
    updated_by: str | None,
) -> EgressRecord:
    """Replace the workspace's policy (entries already checked by the caller)."""
    record = EgressRecord(
        workspace_id=workspace_id,
        hosts=list(hosts),
        networks=list(networks),
        ports=list(ports),
        updated_by=updated_by,
        updated_at=tx.now,
    )
    dialect_insert = postgresql.insert if tx.is_postgres else sqlite.insert
    values = dict(record.__dict__)
    statement = dialect_insert(workspace_egress).values(**values)
    # One statement, so two concurrent first PUTs cannot both insert.
    tx.conn.execute(
        statement.on_conflict_do_update(
            index_elements=[_t.workspace_id],
            set_={key: statement.excluded[key] for key in values if key != "workspace_id"},
        )
    )
    return record


def clear_egress(tx: Tx, workspace_id: str) -> None:
    """Go back to the operator's default (nothing to do when already there)."""
    tx.conn.execute(delete(workspace_egress).where(_t.workspace_id == workspace_id))
