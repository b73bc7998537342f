"""A workspace's egress allowlist: where its agents' ``http_request`` calls may go.

Without one of its own, a workspace runs under the operator's default (agentmill.yaml
``tools: http_request: egress:``). Its own policy replaces that default; non-public networks in
it are limited to what the operator permits (``allow_workspace_networks``), see
``agentmill.tools.http._operator``.
"""

from __future__ import annotations

from ipaddress import ip_network
from typing import Annotated

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError

from agentmill.api.deps import DbDep, WorkspaceAccess, require
from agentmill.api.schemas import EgressPublic, EgressUpdate
from agentmill.domain.permissions import Permission
from agentmill.engine.engine import Engine
from agentmill.store.repositories import egress
from agentmill.store.repositories.egress import EgressRecord
from agentmill.tools.http import HttpRequestTool, OperatorEgress, entry_errors

router = APIRouter(tags=["egress"])

Read = Annotated[WorkspaceAccess, require(Permission.WORKFLOW_READ)]
Manage = Annotated[WorkspaceAccess, require(Permission.EGRESS_MANAGE)]


def _operator(request: Request) -> OperatorEgress:
    engine: Engine = request.app.state.engine
    # Checked when the engine read agentmill.yaml, so this cannot fail here.
    return OperatorEgress.from_settings(engine.tools.settings_for(HttpRequestTool.name))


def _public(
    workspace_id: str, operator: OperatorEgress, record: EgressRecord | None
) -> EgressPublic:
    permitted = [str(n) for n in operator.workspace_networks]
    if record is None:
        default = operator.default
        return EgressPublic(
            workspace_id=workspace_id,
            source="operator",
            hosts=sorted(default.hosts),
            networks=[str(n) for n in default.networks],
            ports=sorted(default.ports),
            permitted_networks=permitted,
        )
    return EgressPublic(
        workspace_id=workspace_id,
        source="workspace",
        hosts=record.hosts,
        networks=[n for n in record.networks if operator.refusal(ip_network(n)) is None],
        ports=record.ports,
        permitted_networks=permitted,
        updated_at=record.updated_at,
    )


def _check(body: EgressUpdate, operator: OperatorEgress) -> None:
    """Every bad entry at once, each named by its place in the body (422); nothing is saved."""
    problems = entry_errors(body.model_dump())
    unparsable = {index for key, index, _ in problems if key == "networks"}
    for index, text in enumerate(body.networks):
        refusal = None if index in unparsable else operator.refusal(ip_network(text))
        if refusal is not None:
            problems.append(("networks", index, refusal))
    if problems:
        raise RequestValidationError(
            [
                {"loc": ("body", key, index), "msg": message, "type": "value_error"}
                for key, index, message in problems
            ]
        )


@router.get("/workspaces/{ws}/egress", response_model=EgressPublic)
async def get_egress(access: Read, db: DbDep, request: Request) -> EgressPublic:
    """The egress allowlist in effect for the workspace's agents."""
    record = await db.read(lambda tx: egress.get_egress(tx, access.workspace_id), point=True)
    return _public(access.workspace_id, _operator(request), record)


@router.put("/workspaces/{ws}/egress", response_model=EgressPublic)
async def set_egress(
    body: EgressUpdate, access: Manage, db: DbDep, request: Request
) -> EgressPublic:
    """Set the workspace's own allowlist, replacing the server's default (admins, owners)."""
    operator = _operator(request)
    _check(body, operator)
    record = await db.write(
        lambda tx: egress.set_egress(
            tx,
            access.workspace_id,
            hosts=body.hosts,
            networks=body.networks,
            ports=body.ports,
            updated_by=access.principal.user_id or None,
        )
    )
    _forget(request, access.workspace_id)
    return _public(access.workspace_id, operator, record)


@router.delete("/workspaces/{ws}/egress", status_code=204)
async def clear_egress(access: Manage, db: DbDep, request: Request) -> None:
    """Drop the workspace's own allowlist: the server's default applies again (admins, owners)."""
    await db.write(lambda tx: egress.clear_egress(tx, access.workspace_id))
    _forget(request, access.workspace_id)


def _forget(request: Request, workspace_id: str) -> None:
    """This process applies a change at once; others within their cache's few seconds."""
    engine: Engine = request.app.state.engine
    engine.egress.forget(workspace_id)
