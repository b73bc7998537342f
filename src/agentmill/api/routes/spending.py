"""Spending controls of a workspace: budgets, rate limits, price markup; and providers' health."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError

from agentmill.api.deps import (
    DbDep,
    Principal,
    PrincipalDep,
    SettingsDep,
    WorkspaceAccess,
    require,
    workspace_role,
)
from agentmill.api.schemas import (
    BudgetCreate,
    BudgetPublic,
    MarkupPublic,
    MarkupUpdate,
    ModelHealthPublic,
    ProvidersHealth,
    RateLimitCreate,
    RateLimitPublic,
)
from agentmill.config import Settings
from agentmill.domain.permissions import Permission
from agentmill.gateway import Gateway
from agentmill.store.db import Tx
from agentmill.store.gateway_policies import DatabasePolicies, as_budget, spent_this_period
from agentmill.store.repositories import spending

router = APIRouter(tags=["spending"])

Read = Annotated[WorkspaceAccess, require(Permission.USAGE_READ)]
Manage = Annotated[WorkspaceAccess, require(Permission.BUDGETS_MANAGE)]
Own = Annotated[WorkspaceAccess, require(Permission.WORKSPACE_MANAGE)]


def _forget(request: Request, workspace_id: str) -> None:
    """This process applies a change at once; others within their policy cache's few seconds."""
    gateway: Gateway = request.app.state.gateway
    if isinstance(gateway.policies, DatabasePolicies):
        gateway.policies.forget(workspace_id)


def _check_subject(tx: Tx, workspace_id: str, scope: str, subject_id: str | None) -> None:
    if scope == "workspace" and subject_id is not None:
        _invalid("subject_id", "a workspace budget or limit has no subject; leave it out")
    if subject_id is not None and not spending.subject_exists(tx, workspace_id, scope, subject_id):
        _invalid("subject_id", f"no {scope.replace('_', ' ')} {subject_id!r} in this workspace")


def _invalid(field: str, message: str) -> None:
    raise RequestValidationError([{"loc": ("body", field), "msg": message, "type": "value_error"}])


def _budget_public(tx: Tx, record: spending.BudgetRecord) -> BudgetPublic:
    subject = record.workspace_id if record.scope == "workspace" else record.subject_id
    used = spent_this_period(tx, as_budget(record), subject) if subject is not None else None
    return BudgetPublic(
        id=record.id,
        scope=record.scope,
        subject_id=record.subject_id,
        period=record.period,
        limit_usd=record.limit_usd,
        soft_ratio=record.soft_ratio,
        spent_usd=used,
        created_at=record.created_at,
    )


@router.get("/workspaces/{ws}/budgets", response_model=list[BudgetPublic])
async def list_budgets(access: Read, db: DbDep) -> list[BudgetPublic]:
    """Budgets, with what each has spent this period."""

    def read(tx: Tx) -> list[BudgetPublic]:
        return [_budget_public(tx, r) for r in spending.list_budgets(tx, access.workspace_id)]

    return await db.read(read)


@router.post("/workspaces/{ws}/budgets", status_code=201, response_model=BudgetPublic)
async def create_budget(
    body: BudgetCreate, access: Manage, db: DbDep, request: Request
) -> BudgetPublic:
    """Add a budget (admins and owners). Calls that would pass it are refused."""

    def write(tx: Tx) -> BudgetPublic:
        _check_subject(tx, access.workspace_id, body.scope, body.subject_id)
        record = spending.create_budget(
            tx,
            access.workspace_id,
            scope=body.scope,
            subject_id=body.subject_id,
            period=body.period,
            limit_usd=body.limit_usd,
            soft_ratio=body.soft_ratio,
        )
        return _budget_public(tx, record)

    created = await db.write(write)
    _forget(request, access.workspace_id)
    return created


@router.delete("/workspaces/{ws}/budgets/{budget_id}", status_code=204)
async def delete_budget(budget_id: str, access: Manage, db: DbDep, request: Request) -> None:
    """Remove a budget (admins and owners)."""
    await db.write(lambda tx: spending.delete_budget(tx, access.workspace_id, budget_id))
    _forget(request, access.workspace_id)


@router.get("/workspaces/{ws}/rate-limits", response_model=list[RateLimitPublic])
async def list_rate_limits(access: Read, db: DbDep) -> list[RateLimitPublic]:
    """Rate limits on model calls."""
    records = await db.read(lambda tx: spending.list_rate_limits(tx, access.workspace_id))
    return [RateLimitPublic(**r.__dict__) for r in records]


@router.post("/workspaces/{ws}/rate-limits", status_code=201, response_model=RateLimitPublic)
async def create_rate_limit(
    body: RateLimitCreate, access: Manage, db: DbDep, request: Request
) -> RateLimitPublic:
    """Limit requests and/or tokens per minute (admins and owners)."""
    if body.requests_per_minute is None and body.tokens_per_minute is None:
        _invalid("requests_per_minute", "give requests_per_minute, tokens_per_minute or both")

    def write(tx: Tx) -> spending.RateLimitRecord:
        _check_subject(tx, access.workspace_id, body.scope, body.subject_id)
        return spending.create_rate_limit(
            tx,
            access.workspace_id,
            scope=body.scope,
            subject_id=body.subject_id,
            requests_per_minute=body.requests_per_minute,
            tokens_per_minute=body.tokens_per_minute,
        )

    record = await db.write(write)
    _forget(request, access.workspace_id)
    return RateLimitPublic(**record.__dict__)


@router.delete("/workspaces/{ws}/rate-limits/{limit_id}", status_code=204)
async def delete_rate_limit(limit_id: str, access: Manage, db: DbDep, request: Request) -> None:
    """Remove a rate limit (admins and owners)."""
    await db.write(lambda tx: spending.delete_rate_limit(tx, access.workspace_id, limit_id))
    _forget(request, access.workspace_id)


@router.get("/workspaces/{ws}/markup", response_model=MarkupPublic)
async def get_markup(access: Read, db: DbDep) -> MarkupPublic:
    """The markup: price = cost × (1 + markup)."""
    markup = await db.read(lambda tx: spending.get_markup(tx, access.workspace_id))
    return MarkupPublic(workspace_id=access.workspace_id, markup=markup)


@router.put("/workspaces/{ws}/markup", response_model=MarkupPublic)
async def set_markup(body: MarkupUpdate, access: Own, db: DbDep, request: Request) -> MarkupPublic:
    """Set the markup charged over providers' cost (owners)."""
    await db.write(lambda tx: spending.set_markup(tx, access.workspace_id, body.markup))
    _forget(request, access.workspace_id)
    return MarkupPublic(workspace_id=access.workspace_id, markup=body.markup)


@router.get("/providers/health", response_model=ProvidersHealth)
async def providers_health(
    request: Request, principal: PrincipalDep, settings: SettingsDep, workspace: str | None = None
) -> ProvidersHealth:
    """Each model's circuit breaker, error rate and latency percentiles, as this process saw
    them, for one workspace's own calls: ``?workspace=`` (its members), an API key's own
    workspace. Its own providers, and the server's models it called (their circuit's state is
    shared; the figures are its own). Operators (AGENTMILL_OPERATOR_EMAILS) asking without a
    workspace see every caller's figures for the server's models; anyone else, none."""
    gateway: Gateway = request.app.state.gateway
    if workspace is None:
        workspace = principal.key_workspace_id
    if workspace is not None:
        await workspace_role(request.app.state.db, principal, workspace)  # 404 for strangers
        health = gateway.health(workspace)
    else:
        health = gateway.health() if _is_operator(principal, settings) else []
    models = [ModelHealthPublic(**{**h.__dict__, "state": h.state.value}) for h in health]
    return ProvidersHealth(providers=gateway.provider_names(), models=models)


def _is_operator(principal: Principal, settings: Settings) -> bool:
    operators = {e.strip().lower() for e in settings.operator_emails.split(",") if e.strip()}
    return principal.user is not None and principal.user.email.lower() in operators
