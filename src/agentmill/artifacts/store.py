"""Artifacts: files a run's steps write, kept per run and handed to later steps by reference.

The bytes live in a directory, ``<root>/<workspace>/<run>/<name>``; the ``artifacts`` table
lists them. A write puts the bytes in a temporary file in the run's folder, renames it over
the name (atomic: a reader sees the old file or the new one, never half of one), and only then
records the row, so every listed artifact has its file. Writing a name again in the same run
replaces it (a retried step writes its files again). Nothing here trusts a name: each is
checked (``names.check_name``) and the final path must lie inside the run's folder.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import quote

from sqlalchemy.engine import make_url

from agentmill.artifacts.names import check_name, media_type_for
from agentmill.config import Settings
from agentmill.errors import InvalidArtifact, NotFound
from agentmill.store.db import Database
from agentmill.store.repositories import artifacts as repo
from agentmill.store.repositories.artifacts import ArtifactRecord

__all__ = ["ArtifactRecord", "ArtifactStore", "artifact_ref", "artifacts_root"]

_TEMP_PREFIX = ".tmp-"  # names never start with "." (check_name), so temp files never clash


def artifacts_root(settings: Settings, database_url: str) -> Path:
    """``AGENTMILL_ARTIFACTS_DIR``, else ``artifacts`` next to a SQLite database file, else
    ``<home>/artifacts``."""
    if settings.artifacts_dir is not None:
        return settings.artifacts_dir.resolve()
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        return Path(url.database).resolve().parent / "artifacts"
    return (settings.home / "artifacts").resolve()


def artifact_ref(record: ArtifactRecord) -> dict[str, object]:
    """How a step, a model or a client refers to an artifact (JSON-ready)."""
    return {
        "id": record.id,
        "name": record.name,
        "size": record.size,
        "media_type": record.media_type,
        "sha256": record.sha256,
        "step": record.step_key,
        "url": f"/api/v1/runs/{record.run_id}/artifacts/{quote(record.name)}",
    }


class ArtifactStore:
    """A run's files on disk and their rows in the database."""

    def __init__(self, db: Database, root: Path, *, max_bytes: int) -> None:
        self.db = db
        self.root = root.resolve()
        self.max_bytes = max_bytes

    async def write(
        self,
        run_id: str,
        name: str,
        data: bytes,
        *,
        step_key: str | None = None,
        media_type: str | None = None,
    ) -> ArtifactRecord:
        """Store ``data`` as the run's artifact ``name`` (replacing one of that name)."""
        check_name(name)
        media = media_type_for(name, media_type)
        if len(data) > self.max_bytes:
            raise InvalidArtifact(
                f"artifact {name!r} is {len(data)} bytes; the limit is {self.max_bytes}"
            )
        place = await self.db.read(lambda tx: repo.run_place(tx, run_id), point=True)
        if place is None:
            raise NotFound(f"run {run_id!r} not found")
        target = self._path(place.workspace_id, run_id, name)
        digest = await asyncio.to_thread(
            _write_atomically, self._run_dir(place, run_id), target, data
        )
        return await self.db.write(
            lambda tx: repo.put(
                tx,
                run_id=run_id,
                place=place,
                step_key=step_key,
                name=name,
                size=len(data),
                sha256=digest,
                media_type=media,
            )
        )

    async def list(
        self, run_id: str, step_keys: Iterable[str] | None = None
    ) -> list[ArtifactRecord]:
        """The run's artifacts by name (only those ``step_keys`` wrote, when given)."""
        keys = None if step_keys is None else list(step_keys)
        return await self.db.read(lambda tx: repo.list_for_run(tx, run_id, keys))

    async def get(self, run_id: str, name: str) -> ArtifactRecord:
        """The run's artifact ``name``; NotFound when it has none of that name."""
        record = await self.db.read(lambda tx: repo.find(tx, run_id, name), point=True)
        if record is None:
            raise NotFound(f"run {run_id!r} has no artifact {name!r}")
        return record

    def path(self, record: ArtifactRecord) -> Path:
        """Where the artifact's bytes are."""
        return self._path(record.workspace_id, record.run_id, record.name)

    async def read(self, run_id: str, name: str, *, limit: int) -> tuple[ArtifactRecord, bytes]:
        """The artifact and its first ``limit`` bytes."""
        record = await self.get(run_id, name)
        path = self.path(record)

        def read_head() -> bytes:
            with path.open("rb") as file:
                return file.read(limit)

        try:
            return record, await asyncio.to_thread(read_head)
        except FileNotFoundError:
            raise NotFound(f"the file of artifact {name!r} is missing from {path}") from None

    async def remove_workspace(self, workspace_id: str) -> None:
        """Delete every file of a workspace (after its rows are gone)."""
        folder = self.root / _segment(workspace_id)
        await asyncio.to_thread(shutil.rmtree, folder, ignore_errors=True)

    def _run_dir(self, place: repo.RunPlace, run_id: str) -> Path:
        return self.root / _segment(place.workspace_id) / _segment(run_id)

    def _path(self, workspace_id: str, run_id: str, name: str) -> Path:
        folder = self.root / _segment(workspace_id) / _segment(run_id)
        path = folder.joinpath(*check_name(name).split("/"))
        # Belt and braces: whatever the name, the file lies inside the run's folder.
        if not os.path.normpath(path).startswith(os.path.normpath(folder) + os.sep):
            raise InvalidArtifact(f"artifact name {name!r} leaves the run's folder")
        return path


def _segment(value: str) -> str:
    """A workspace or run id as one path segment (ids are ours, but checked all the same)."""
    if not value or "/" in value or "\\" in value or value in (".", ".."):
        raise InvalidArtifact(f"{value!r} cannot name an artifacts folder")
    return value


def _write_atomically(run_dir: Path, target: Path, data: bytes) -> str:
    """Write ``data`` to ``target`` through a temporary file and a rename; its SHA-256."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise InvalidArtifact(
            f"artifact {_relative(run_dir, target)!r}: a part of its folder is already "
            "an artifact (a file)"
        ) from None
    if target.is_dir():
        raise InvalidArtifact(
            f"artifact {_relative(run_dir, target)!r} is already a folder of other artifacts"
        )
    # Symlinks are never made here; one in the tree means someone else wrote there.
    if target.parent.resolve() != target.parent or target.is_symlink():
        raise InvalidArtifact(f"artifact {_relative(run_dir, target)!r}: unexpected symlink")
    temp = target.parent / f"{_TEMP_PREFIX}{os.urandom(8).hex()}"
    try:
        with temp.open("xb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)
    return hashlib.sha256(data).hexdigest()


def _relative(run_dir: Path, target: Path) -> str:
    return target.relative_to(run_dir).as_posix()
