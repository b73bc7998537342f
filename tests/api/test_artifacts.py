"""/api/v1/runs/{id}/artifacts: what a run's steps wrote, listed and downloaded byte for byte,
only by those who may read the run; deleting the workspace deletes the files."""

from __future__ import annotations

import base64
import hashlib
import json
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from agentmill.api.app import create_app
from agentmill.config import Settings
from tests.api.conftest import new_workspace, signup
from tests.api.test_workflows_and_runs import create, settle

BLOB = bytes(range(256)) * 5


def _call(tool: str, **arguments: object) -> dict[str, object]:
    return {"tool_calls": [{"name": tool, "arguments": arguments}]}


REPLIES = [
    _call("artifact_write", name="report.md", content="# Report\n\nAll good.\n"),
    _call(
        "artifact_write",
        name="data/blob.bin",
        content=base64.b64encode(BLOB).decode(),
        encoding="base64",
    ),
    "written",
]

FLOW = textwrap.dedent(f"""\
    name: files
    agents:
      maker:
        model: scripted/maker
        tools: [artifact_write]
        options: {{replies: {json.dumps(REPLIES)}}}
    steps:
      - id: make
        agent: maker
        prompt: Write the files.
      - id: summary
        needs: [make]
        value: "{{% for a in steps.make.artifacts %}}{{{{ a.name }}}}={{{{ a.size }}}} {{% endfor %}}"
    outputs:
      summary: "{{{{ steps.summary.output }}}}"
    """)


@pytest.fixture
def artifacts_dir(tmp_path: Path) -> Path:
    return tmp_path / "shared-artifacts"


@pytest.fixture
async def app(database_url: str, artifacts_dir: Path) -> AsyncIterator[FastAPI]:
    settings = Settings(artifacts_dir=artifacts_dir)
    application = create_app(settings, database_url=database_url)
    async with application.router.lifespan_context(application):
        yield application


async def test_a_runs_files_are_listed_and_downloaded_only_by_its_workspace(
    client: httpx.AsyncClient, artifacts_dir: Path
) -> None:
    ana, bob = await signup(client, "Ana"), await signup(client, "Bob")
    ws = await new_workspace(client, ana)
    await new_workspace(client, bob, "Bob's")
    workflow = await create(client, ana, ws, FLOW)
    started = await client.post(
        f"/api/v1/workflows/{workflow['id']}/runs", json={}, headers=ana.headers
    )
    run_id = started.json()["id"]
    run = await settle(client, ana, run_id)
    assert run["status"] == "COMPLETED", run
    # The later step saw references to what the agent wrote.
    assert run["outputs"] == {"summary": f"data/blob.bin={len(BLOB)} report.md=20 "}

    listed = await client.get(f"/api/v1/runs/{run_id}/artifacts", headers=ana.headers)
    assert listed.status_code == 200, listed.text
    body = listed.json()
    assert [(a["name"], a["step"], a["size"], a["media_type"]) for a in body] == [
        ("data/blob.bin", "make", len(BLOB), "application/octet-stream"),
        ("report.md", "make", 20, "text/markdown"),
    ]
    assert body[0]["sha256"] == hashlib.sha256(BLOB).hexdigest()
    assert body[0]["url"] == f"/api/v1/runs/{run_id}/artifacts/data/blob.bin"

    blob = await client.get(body[0]["url"], headers=ana.headers)
    assert blob.status_code == 200
    assert blob.content == BLOB
    assert blob.headers["content-type"] == "application/octet-stream"
    assert blob.headers["etag"] == f'"{hashlib.sha256(BLOB).hexdigest()}"'
    assert blob.headers["content-disposition"] == 'attachment; filename="blob.bin"'
    assert blob.headers["x-content-type-options"] == "nosniff"
    report = await client.get(body[1]["url"], headers=ana.headers)
    assert report.text == "# Report\n\nAll good.\n"
    assert report.headers["content-type"].startswith("text/markdown")
    again = await client.get(
        body[1]["url"], headers={**ana.headers, "If-None-Match": report.headers["etag"]}
    )
    assert again.status_code == 304
    assert again.content == b""

    missing = await client.get(f"/api/v1/runs/{run_id}/artifacts/nope.txt", headers=ana.headers)
    assert missing.status_code == 404
    assert missing.json()["error"]["message"] == f"run {run_id!r} has no artifact 'nope.txt'"
    escape = await client.get(
        f"/api/v1/runs/{run_id}/artifacts/..%2F..%2Fagentmill.db", headers=ana.headers
    )
    assert escape.status_code == 404

    # Another workspace's member: the run does not exist for them.
    for url in (f"/api/v1/runs/{run_id}/artifacts", body[1]["url"]):
        response = await client.get(url, headers=bob.headers)
        assert response.status_code == 404, url
        assert response.json()["error"]["message"] == f"run {run_id!r} not found"
    assert (await client.get(body[1]["url"])).status_code == 401

    files = artifacts_dir / ws / run_id
    assert (files / "data" / "blob.bin").read_bytes() == BLOB
    deleted = await client.delete(f"/api/v1/workspaces/{ws}", headers=ana.headers)
    assert deleted.status_code == 204
    assert not (artifacts_dir / ws).exists()
