"""Providers a workspace configured for itself (its own OpenAI key, its own compatible server).

API keys are encrypted before they reach a row (agentmill/crypto.py) and bound to their
workspace and name, so a ciphertext copied into another row does not decrypt. Records never
carry a key or its ciphertext: only whether there is one. :func:`workspace_provider_configs`
is the one way back to usable, decrypted :class:`ProviderConfig` values, for the gateway.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar, cast, overload

from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from agentmill.crypto import decrypt, encrypt
from agentmill.domain.providers import ProviderConfig, ProviderKind
from agentmill.errors import ConfigError, Conflict, NotFound
from agentmill.ids import new_id
from agentmill.store.db import Database, Tx
from agentmill.store.models import workspace_providers
from agentmill.store.prepared import Prepared

_T = TypeVar("_T")

_t = workspace_providers.c
_PUBLIC = [c for c in workspace_providers.c if c.key != "api_key_encrypted"]


@dataclass(frozen=True, kw_only=True)
class ProviderRecord:
    """A workspace's provider as the API shows it: never the key, only whether it has one."""

    id: str
    workspace_id: str
    name: str
    kind: ProviderKind
    base_url: str | None
    timeout: float
    headers: dict[str, str]
    has_api_key: bool
    created_at: datetime
    updated_at: datetime


# What create and update may set; api_key is the plain key (None: no key).
_FIELDS = frozenset({"kind", "base_url", "api_key", "timeout", "headers"})


def _context(workspace_id: str, name: str) -> str:
    return f"workspace_providers/{workspace_id}/{name}"


def _record(data: Mapping[Any, Any]) -> ProviderRecord:
    fields = {key: data[key] for key in _RECORD_FIELDS}
    fields["has_api_key"] = bool(fields["has_api_key"])  # SQLite answers 0 or 1
    return ProviderRecord(**fields)


_RECORD_FIELDS = tuple(ProviderRecord.__dataclass_fields__)
_SELECT = select(*_PUBLIC, _t.api_key_encrypted.is_not(None).label("has_api_key"))


def _find(tx: Tx, workspace_id: str, name: str, *, lock: bool = False) -> ProviderRecord:
    query = _SELECT.where(_t.workspace_id == workspace_id, _t.name == name)
    if lock and tx.is_postgres:  # SQLite has one writer: its transactions are serial already
        query = query.with_for_update()
    row = tx.conn.execute(query).first()
    if row is None:
        raise NotFound(f"provider {name!r} not found")
    return _record(row._mapping)


def create_provider(
    tx: Tx,
    workspace_id: str,
    *,
    name: str,
    kind: ProviderKind,
    base_url: str | None = None,
    api_key: str | None = None,
    timeout: float = 60.0,
    headers: Mapping[str, str] | None = None,
    secret_key: str | None = None,
) -> ProviderRecord:
    """Add a provider to a workspace; Conflict if the name is taken there. ``secret_key``
    (default: the process's) encrypts ``api_key``."""
    exists = select(_t.id).where(_t.workspace_id == workspace_id, _t.name == name)
    if tx.conn.scalar(exists) is not None:
        raise Conflict(f"provider {name!r} already exists in this workspace")
    values = {
        "id": new_id("prov"),
        "workspace_id": workspace_id,
        "name": name,
        "kind": kind,
        "base_url": base_url,
        "api_key_encrypted": (
            None
            if api_key is None
            else encrypt(api_key, secret_key, context=_context(workspace_id, name))
        ),
        "timeout": timeout,
        "headers": dict(headers or {}),
        "created_at": tx.now,
        "updated_at": tx.now,
    }
    try:
        tx.conn.execute(insert(workspace_providers).values(**values))
    except IntegrityError:  # a concurrent create won the race
        raise Conflict(f"provider {name!r} already exists in this workspace") from None
    return _record({**values, "has_api_key": values["api_key_encrypted"] is not None})


def list_providers(tx: Tx, workspace_id: str) -> list[ProviderRecord]:
    """A workspace's providers by name."""
    rows = tx.conn.execute(_SELECT.where(_t.workspace_id == workspace_id).order_by(_t.name))
    return [_record(row._mapping) for row in rows]


def get_provider(tx: Tx, workspace_id: str, name: str, *, lock: bool = False) -> ProviderRecord:
    """One provider; NotFound if this workspace has none by that name (decision 7). ``lock``
    holds its row until the transaction ends (to update it from what was read)."""
    return _find(tx, workspace_id, name, lock=lock)


def update_provider(
    tx: Tx,
    workspace_id: str,
    name: str,
    changes: Mapping[str, Any],
    *,
    secret_key: str | None = None,
) -> ProviderRecord:
    """Change some of kind, base_url, api_key, timeout and headers (only those given; an
    ``api_key`` of None removes the key). NotFound if this workspace has no such provider."""
    unknown = set(changes) - _FIELDS
    if unknown:
        raise ValueError(f"cannot change {', '.join(sorted(unknown))}")
    values: dict[str, Any] = {k: v for k, v in changes.items() if k != "api_key"}
    if "headers" in values:
        values["headers"] = dict(values["headers"])
    if "api_key" in changes:
        plain = changes["api_key"]
        values["api_key_encrypted"] = (
            None
            if plain is None
            else encrypt(plain, secret_key, context=_context(workspace_id, name))
        )
    result = tx.conn.execute(
        update(workspace_providers)
        .where(_t.workspace_id == workspace_id, _t.name == name)
        .values(**values, updated_at=tx.now)
    )
    if result.rowcount != 1:
        raise NotFound(f"provider {name!r} not found")
    return _find(tx, workspace_id, name)


def reseal_keys(tx: Tx, *, old_secret: str, new_secret: str) -> int:
    """Encrypt again under ``new_secret`` every key that ``old_secret`` opens; the number done.
    Keys under any other secret are left as they are."""
    rows = tx.conn.execute(
        select(_t.id, _t.workspace_id, _t.name, _t.api_key_encrypted).where(
            _t.api_key_encrypted.is_not(None)
        )
    ).all()
    done = 0
    for row in rows:
        context = _context(row.workspace_id, row.name)
        try:
            plain = decrypt(row.api_key_encrypted, old_secret, context=context)
        except ConfigError:
            continue
        tx.conn.execute(
            update(workspace_providers)
            .where(_t.id == row.id)
            .values(api_key_encrypted=encrypt(plain, new_secret, context=context))
        )
        done += 1
    return done


def delete_provider(tx: Tx, workspace_id: str, name: str) -> None:
    """Remove a provider and its key; NotFound if this workspace has none by that name."""
    result = tx.conn.execute(
        delete(workspace_providers).where(_t.workspace_id == workspace_id, _t.name == name)
    )
    if result.rowcount != 1:
        raise NotFound(f"provider {name!r} not found")


# Prepared: the gateway may read a workspace's providers for every model call.
_CONFIG_ROWS = Prepared(
    select(_t.name, _t.kind, _t.base_url, _t.api_key_encrypted, _t.timeout, _t.headers).where(
        _t.workspace_id == bindparam("workspace_id")
    )
)


class WorkspaceProviderConfigs(Mapping[str, ProviderConfig]):
    """A workspace's providers by name. Each key is decrypted when its provider is looked up,
    so a key that no longer decrypts (the secret key changed) fails calls to that provider
    only, with a :class:`ConfigError` naming it, and not the workspace's other models."""

    def __init__(self, workspace_id: str, rows: list[Any], secret_key: str | None) -> None:
        self._workspace_id = workspace_id
        self._rows = {row.name: row for row in rows}
        self._secret_key = secret_key
        self._configs: dict[str, ProviderConfig] = {}

    def __getitem__(self, name: str) -> ProviderConfig:
        config = self._configs.get(name)
        if config is None:
            config = self._configs[name] = self._config(self._rows[name])
        return config

    @overload
    def get(self, name: str, /) -> ProviderConfig | None: ...
    @overload
    def get(self, name: str, /, default: ProviderConfig | _T) -> ProviderConfig | _T: ...
    def get(self, name: str, /, default: Any = None) -> Any:
        # Without Mapping.get's KeyError for a miss: the gateway asks for every call, and most
        # calls go to the server's own providers (the exception showed in profiles).
        return self[name] if name in self._rows else default

    def __iter__(self) -> Iterator[str]:
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, name: object) -> bool:
        return name in self._rows  # without decrypting

    def _config(self, row: Any) -> ProviderConfig:
        api_key = None
        if row.api_key_encrypted is not None:
            try:
                api_key = decrypt(
                    row.api_key_encrypted,
                    self._secret_key,
                    context=_context(self._workspace_id, row.name),
                )
            except ConfigError as exc:
                raise ConfigError(f"workspace provider {row.name!r}: {exc}") from None
        return ProviderConfig(
            name=row.name,
            kind=cast(ProviderKind, row.kind),
            base_url=row.base_url,
            api_key=api_key,
            timeout=float(row.timeout),
            headers=dict(row.headers or {}),
        )


async def workspace_provider_configs(
    db: Database, workspace_id: str, *, secret_key: str | None = None
) -> Mapping[str, ProviderConfig]:
    """The providers ``workspace_id`` configured, by name, with their keys decrypted under
    ``secret_key`` (default: the process's ``AGENTMILL_SECRET_KEY``) as each is looked up.

    The gateway's per-workspace hook: ``lambda ws: workspace_provider_configs(db, ws,
    secret_key=settings.secret())``."""
    rows = await db.read(
        lambda tx: _CONFIG_ROWS.rows(tx.conn, {"workspace_id": workspace_id}), point=True
    )
    return WorkspaceProviderConfigs(workspace_id, rows, secret_key)
