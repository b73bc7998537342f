"""A run's artifacts over HTTP: list them, download one (streamed from the artifacts folder).

Access is the run's: whoever may read the run may read its files; another workspace's run (or
a run that does not exist) is 404 (decision 7).
"""

from __future__ import annotations

from pathlib import PurePosixPath

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse

from agentmill.api.deps import DbDep, PrincipalDep
from agentmill.api.routes.runs import run_access
from agentmill.api.schemas import ArtifactPublic
from agentmill.artifacts import ArtifactRecord, ArtifactStore, artifact_ref
from agentmill.domain.permissions import Permission
from agentmill.engine.engine import Engine
from agentmill.errors import NotFound

router = APIRouter(tags=["artifacts"])

# A file a model wrote is served as a download, never rendered by the browser in our origin.
_SAFE_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "sandbox; default-src 'none'",
    "Cache-Control": "private, no-cache",
}


def _store(request: Request) -> ArtifactStore:
    engine: Engine = request.app.state.engine
    return engine.artifacts


def _public(record: ArtifactRecord) -> ArtifactPublic:
    return ArtifactPublic(
        id=record.id,
        run_id=record.run_id,
        name=record.name,
        step=record.step_key,
        size=record.size,
        sha256=record.sha256,
        media_type=record.media_type,
        url=str(artifact_ref(record)["url"]),
        created_at=record.created_at,
    )


@router.get("/runs/{run_id}/artifacts", response_model=list[ArtifactPublic])
async def list_artifacts(
    run_id: str, request: Request, db: DbDep, principal: PrincipalDep
) -> list[ArtifactPublic]:
    """The run's artifacts, by name."""
    await run_access(db, principal, run_id, Permission.WORKFLOW_READ)
    return [_public(record) for record in await _store(request).list(run_id)]


@router.get(
    "/runs/{run_id}/artifacts/{name:path}",
    response_class=FileResponse,
    responses={200: {"content": {"application/octet-stream": {}}}, 304: {}},
)
async def download_artifact(
    run_id: str, name: str, request: Request, db: DbDep, principal: PrincipalDep
) -> Response:
    """Download one artifact (ETag = its SHA-256)."""
    await run_access(db, principal, run_id, Permission.WORKFLOW_READ)
    store = _store(request)
    record = await store.get(run_id, name)
    etag = f'"{record.sha256}"'
    headers = {**_SAFE_HEADERS, "ETag": etag}
    if etag in [tag.strip() for tag in request.headers.get("if-none-match", "").split(",")]:
        return Response(status_code=304, headers=headers)
    path = store.path(record)
    if not path.is_file():
        raise NotFound(f"the file of artifact {name!r} is missing from the artifacts folder")
    return FileResponse(
        path,
        media_type=record.media_type,
        filename=PurePosixPath(record.name).name,
        headers=headers,
    )
