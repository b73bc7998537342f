"""Agents keep files with their run: artifact_write stores them (bytes on disk, a row in the
database), artifact_read and artifact_list find them again, and a later step gets references
to them in its templates. Unsafe names and oversized files are refused with a clear message
and nothing is written."""

from __future__ import annotations

import base64
import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from agentmill.artifacts import ArtifactStore
from agentmill.config import Settings
from agentmill.domain.states import RunStatus
from agentmill.domain.validation import load_workflow_text
from agentmill.engine.claims import RunCaller
from agentmill.engine.engine import Engine
from agentmill.errors import InvalidArtifact
from agentmill.ids import new_id
from agentmill.store.db import Database
from tests.tools.test_memory_agent import Recording, tool_results

TOOLS = "[artifact_write, artifact_read, artifact_list]"


def call(tool: str, **arguments: Any) -> dict[str, Any]:
    return {"tool_calls": [{"name": tool, "arguments": arguments}]}


def flow(replies: list[Any], later: str = "{{ steps.work.artifacts }}") -> str:
    return textwrap.dedent(f"""
    name: files
    agents:
      maker:
        model: scripted/maker
        tools: {TOOLS}
        options: {{replies: {json.dumps(replies)}}}
    steps:
      - id: work
        agent: maker
        prompt: Write the report.
        retry: {{max_attempts: 1}}
      - id: later
        type: template
        needs: [work]
        value: {json.dumps(later)}
    """)


async def run_flow(engine: Engine, workspace: str, text: str) -> tuple[str, Any]:
    version = await engine.register(load_workflow_text(text), workspace_id=workspace)
    run_id = await engine.start_run(version, caller=RunCaller(workspace_id=workspace))
    run = await engine.run_until_settled(run_id)
    assert run.status == RunStatus.COMPLETED, run
    later = next(s for s in await engine.steps(run_id) if s.key == "later")
    return run_id, later.output


@pytest.fixture
def artifacts_dir(tmp_path: Path) -> Path:
    return tmp_path / "files"


@pytest.fixture
def model() -> Recording:
    return Recording()


@pytest.fixture
def engine(db: Database, artifacts_dir: Path, model: Recording) -> Engine:
    from agentmill.gateway import Gateway

    settings = Settings(artifacts_dir=artifacts_dir, artifact_max_bytes=1000, poll_interval=0.05)
    return Engine(db, gateway=Gateway([model]), settings=settings)


async def test_an_agent_writes_reads_and_lists_and_a_later_step_gets_references(
    engine: Engine, model: Recording, artifacts_dir: Path
) -> None:
    workspace = new_id("ws")
    png = bytes([137, 80, 78, 71, 0, 255])
    run_id, refs = await run_flow(
        engine,
        workspace,
        flow(
            [
                call("artifact_write", name="report.md", content="# Findings\n"),
                call(
                    "artifact_write",
                    name="charts/q1.png",
                    content=base64.b64encode(png).decode(),
                    encoding="base64",
                ),
                call("artifact_write", name="report.md", content="# Findings, revised\n"),
                call("artifact_read", name="report.md"),
                call("artifact_read", name="charts/q1.png"),
                call("artifact_list"),
                "done",
            ]
        ),
    )
    *_, last = model.requests
    first, chart, revised, read_text, read_png, listed = tool_results(last)
    assert (first["name"], first["media_type"]) == ("report.md", "text/markdown")
    assert (chart["media_type"], chart["size"]) == ("image/png", len(png))
    assert revised["size"] == len("# Findings, revised\n")
    assert read_text["content"] == "# Findings, revised\n"
    assert (read_text["encoding"], read_text["truncated"]) == ("text", False)
    assert base64.b64decode(read_png["content"]) == png
    assert read_png["encoding"] == "base64"
    assert [a["name"] for a in listed] == ["charts/q1.png", "report.md"]  # replaced, not added

    # The later step's template got references, with where to download each.
    assert [(r["name"], r["step"], r["size"]) for r in refs] == [
        ("charts/q1.png", "work", len(png)),
        ("report.md", "work", len("# Findings, revised\n")),
    ]
    assert refs[1]["url"] == f"/api/v1/runs/{run_id}/artifacts/report.md"
    assert refs[1]["id"] == revised["id"]
    on_disk = artifacts_dir / workspace / run_id
    assert (on_disk / "report.md").read_text() == "# Findings, revised\n"
    assert (on_disk / "charts" / "q1.png").read_bytes() == png
    assert sorted(p.name for p in on_disk.iterdir()) == ["charts", "report.md"]  # no temp files


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("../x", "may not contain empty, '.' or '..' parts"),
        ("/etc/passwd", "must be a relative path"),
        ("a/../../b", "may not contain empty, '.' or '..' parts"),
        ("a\\b", "must be a relative path"),
        (".env", "must start with a letter, digit or '_'"),
        ("a//b", "may not contain empty"),
    ],
)
async def test_unsafe_names_are_refused_and_nothing_is_written(
    engine: Engine, model: Recording, artifacts_dir: Path, name: str, message: str
) -> None:
    _, refs = await run_flow(
        engine, new_id("ws"), flow([call("artifact_write", name=name, content="x"), "ok"])
    )
    (result,) = [m.content for m in model.requests[-1].messages if m.role == "tool"]
    assert message in result
    assert "InvalidArtifact" in result
    assert refs == []
    written = [p for p in artifacts_dir.parent.rglob("*") if p.is_file() and p.suffix != ".db"]
    assert [p for p in written if "agentmill.db" not in p.name] == []


async def test_size_limit_and_bad_arguments_come_back_to_the_model(
    engine: Engine, model: Recording
) -> None:
    await run_flow(
        engine,
        new_id("ws"),
        flow(
            [
                call("artifact_write", name="big.txt", content="x" * 1001),
                call("artifact_write", name="ok.txt", content="x" * 1000),
                call("artifact_write", name="b.bin", content="not base64!", encoding="base64"),
                call("artifact_write", name="c.txt", content="c", media_type="text/html\r\nX: y"),
                call("artifact_read", name="missing.txt"),
                "ok",
            ]
        ),
    )
    big, ok, bad64, header, missing = [
        m.content for m in model.requests[-1].messages if m.role == "tool"
    ]
    assert "artifact 'big.txt' is 1001 bytes; the limit is 1000" in big
    assert json.loads(ok)["size"] == 1000
    assert bad64 == "error: 'content' is not valid base64"
    assert "is not a type/subtype like text/csv" in header
    assert "has no artifact 'missing.txt'" in missing


async def test_the_store_refuses_a_name_that_clashes_with_a_folder(
    engine: Engine, db: Database
) -> None:
    run_id, _ = await run_flow(engine, new_id("ws"), flow(["ok"]))
    store: ArtifactStore = engine.artifacts
    await store.write(run_id, "a/b.txt", b"1")
    with pytest.raises(InvalidArtifact, match="'a' is already a folder of other artifacts"):
        await store.write(run_id, "a", b"2")
    with pytest.raises(InvalidArtifact, match="a part of its folder is already an artifact"):
        await store.write(run_id, "a/b.txt/c", b"3")
    assert [r.name for r in await store.list(run_id)] == ["a/b.txt"]


def test_the_spec_knows_every_built_in_tool() -> None:
    from agentmill.domain.validation import KNOWN_TOOLS
    from agentmill.tools.registry import BUILTINS

    assert set(BUILTINS) == KNOWN_TOOLS
