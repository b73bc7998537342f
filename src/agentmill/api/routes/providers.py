"""A workspace's own model providers: its own keys, its own OpenAI-compatible servers.

Keys are write-only: stored encrypted (agentmill/crypto.py), answered as ``has_api_key``.
Anyone who can read the workspace's workflows sees which providers exist (the names their
models use); admins and owners change them.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter
from fastapi.exceptions import RequestValidationError

from agentmill.api.deps import DbDep, SettingsDep, WorkspaceAccess, require
from agentmill.api.schemas import PROVIDER_NAME, ProviderCreate, ProviderPublic, ProviderUpdate
from agentmill.config import Settings
from agentmill.domain.permissions import Permission
from agentmill.errors import NotFound
from agentmill.store.db import Tx
from agentmill.store.repositories import providers
from agentmill.store.repositories.providers import ProviderRecord
from agentmill.tools.http import Refused, check_public_url

router = APIRouter(tags=["providers"])

Read = Annotated[WorkspaceAccess, require(Permission.WORKFLOW_READ)]
Manage = Annotated[WorkspaceAccess, require(Permission.PROVIDERS_MANAGE)]

_NAME = re.compile(PROVIDER_NAME)
# Without a key of their own, these kinds' SDKs fall back to the server's environment
# (OPENAI_API_KEY, ANTHROPIC_API_KEY, GEMINI_API_KEY …) and would send the operator's key to
# the workspace's base URL.
_NEEDS_KEY = frozenset({"openai", "openai_compatible", "anthropic", "gemini"})
# A workspace's Ollama or compatible server is its own: without a URL there is nothing to call.
_NEEDS_URL = frozenset({"openai_compatible", "ollama"})


def _public(record: ProviderRecord) -> ProviderPublic:
    return ProviderPublic(**record.__dict__)


def _check(kind: str, base_url: str | None, has_api_key: bool) -> None:
    """Refuse a combination of fields no provider of ``kind`` can work with (422)."""
    errors: list[dict[str, Any]] = []
    if kind in _NEEDS_URL and not base_url:
        errors.append({"loc": ("body", "base_url"), "msg": f"required for kind {kind!r}"})
    if kind in _NEEDS_KEY and not has_api_key:
        hint = " (any placeholder for a server without keys)" if kind == "openai_compatible" else ""
        errors.append({"loc": ("body", "api_key"), "msg": f"required for kind {kind!r}{hint}"})
    if errors:
        raise RequestValidationError(errors)


async def _check_destination(base_url: str | None, settings: Settings) -> None:
    """Refuse a base URL on a non-public address (422) unless the operator allows them: the
    server would otherwise call, for a workspace, its own network or a metadata endpoint."""
    if base_url is None or settings.allow_private_provider_urls:
        return
    try:
        await check_public_url(base_url)
    except Refused as exc:
        message = (
            f"refused: {exc}; this server only calls providers on public addresses "
            "(the operator can allow others with AGENTMILL_ALLOW_PRIVATE_PROVIDER_URLS)"
        )
        raise RequestValidationError(
            [{"loc": ("body", "base_url"), "msg": message, "type": "value_error"}]
        ) from None


def _known(name: str) -> str:
    # A name no provider can have is not looked up (nor sent to the database as it is).
    if not _NAME.match(name) or len(name) > 64:
        raise NotFound(f"provider {name!r} not found")
    return name


@router.get("/workspaces/{ws}/providers", response_model=list[ProviderPublic])
async def list_providers(access: Read, db: DbDep) -> list[ProviderPublic]:
    """The workspace's own providers (never their keys)."""
    records = await db.read(lambda tx: providers.list_providers(tx, access.workspace_id))
    return [_public(r) for r in records]


@router.post("/workspaces/{ws}/providers", status_code=201, response_model=ProviderPublic)
async def create_provider(
    body: ProviderCreate, access: Manage, db: DbDep, settings: SettingsDep
) -> ProviderPublic:
    """Add a provider; its models are then ``name/model`` in this workspace (admins, owners)."""
    _check(body.kind, body.base_url, body.api_key is not None)
    await _check_destination(body.base_url, settings)
    api_key = body.api_key.get_secret_value() if body.api_key is not None else None
    record = await db.write(
        lambda tx: providers.create_provider(
            tx,
            access.workspace_id,
            name=body.name,
            kind=body.kind,
            base_url=body.base_url,
            api_key=api_key,
            timeout=body.timeout,
            headers=body.headers,
            secret_key=settings.secret(),
        )
    )
    return _public(record)


@router.get("/workspaces/{ws}/providers/{name}", response_model=ProviderPublic)
async def get_provider(name: str, access: Read, db: DbDep) -> ProviderPublic:
    """One provider (never its key)."""
    _known(name)
    return _public(await db.read(lambda tx: providers.get_provider(tx, access.workspace_id, name)))


@router.patch("/workspaces/{ws}/providers/{name}", response_model=ProviderPublic)
async def update_provider(
    name: str, body: ProviderUpdate, access: Manage, db: DbDep, settings: SettingsDep
) -> ProviderPublic:
    """Change some fields; only those sent change, ``"api_key": null`` removes the key."""
    _known(name)
    changes = {key: getattr(body, key) for key in body.model_fields_set}
    if changes.get("api_key") is not None:
        changes["api_key"] = changes["api_key"].get_secret_value()
    await _check_destination(changes.get("base_url"), settings)

    def update(tx: Tx) -> ProviderRecord:
        # Checked against the stored row in the same transaction, so two PATCHes cannot
        # together leave a provider that cannot work.
        current = providers.get_provider(tx, access.workspace_id, name, lock=True)
        _check(
            changes.get("kind", current.kind),
            changes.get("base_url", current.base_url),
            changes["api_key"] is not None if "api_key" in changes else current.has_api_key,
        )
        return providers.update_provider(
            tx, access.workspace_id, name, changes, secret_key=settings.secret()
        )

    return _public(await db.write(update))


@router.delete("/workspaces/{ws}/providers/{name}", status_code=204)
async def delete_provider(name: str, access: Manage, db: DbDep) -> None:
    """Remove a provider and its key (admins, owners)."""
    _known(name)
    await db.write(lambda tx: providers.delete_provider(tx, access.workspace_id, name))
