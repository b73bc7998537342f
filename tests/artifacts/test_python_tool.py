"""The ``python`` tool's ``artifacts/`` folder: files the code leaves there become artifacts of
the run (in the real bubblewrap sandbox, and in rlimit-only mode); symlinks, unsafe names and
more than the scratch space are not. Like tests/tools/test_sandbox.py, these need unprivileged
user namespaces and fail rather than skip without them."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path
from typing import Any

import pytest

from agentmill.config import Settings
from agentmill.domain.states import RunStatus
from agentmill.domain.validation import load_workflow_text
from agentmill.engine.claims import RunCaller
from agentmill.engine.engine import Engine
from agentmill.gateway import Gateway
from agentmill.ids import new_id
from agentmill.store.db import Database
from agentmill.tools.registry import ToolRegistry
from agentmill.tools.sandbox import PythonTool, SandboxLimits, SandboxState
from agentmill.tools.sandbox._uids import DEFAULT_UID_BASE
from tests.tools.test_memory_agent import Recording

UID_COUNT = 4
# A uid range of its own (see tests/tools/test_sandbox.py), apart from that file's too.
UID_BASE = DEFAULT_UID_BASE + 300_000 + (os.getpid() % 10_000) * UID_COUNT
LIMITS = SandboxLimits(timeout_seconds=20, scratch_bytes=4 << 20, file_size_bytes=8 << 20)

CODE = """
import os
os.makedirs("artifacts/tables", exist_ok=True)
with open("artifacts/summary.txt", "w") as f:
    f.write("three rows\\n")
with open("artifacts/tables/rows.csv", "w") as f:
    f.write("a,b\\n1,2\\n")
with open("artifacts/.hidden", "w") as f:
    f.write("dot file")
os.symlink("/etc/hostname", "artifacts/host")
os.symlink("/usr", "artifacts/usr")
with open("not-an-artifact.txt", "w") as f:
    f.write("scratch only")
print("done")
"""


def flow(code: str) -> str:
    replies = [{"tool_calls": [{"name": "python", "arguments": {"code": code}}]}, "ok"]
    return textwrap.dedent(f"""
    name: code
    agents:
      coder:
        model: scripted/coder
        tools: [python]
        options: {{replies: {json.dumps(replies)}}}
    steps:
      - id: compute
        agent: coder
        prompt: Compute.
        retry: {{max_attempts: 1}}
      - id: use
        type: template
        needs: [compute]
        value: "{{{{ steps.compute.artifacts | map(attribute='name') | join(',') }}}}"
    """)


@pytest.fixture(params=["bwrap", "rlimit-only"])
async def python(request: pytest.FixtureRequest, tmp_path: Path) -> PythonTool:
    options: dict[str, Any] = {}
    if request.param == "rlimit-only":
        options = {"allow_unsandboxed": True, "bwrap": "/nonexistent/bwrap"}
    tool = PythonTool(
        limits=LIMITS,
        uid_base=UID_BASE,
        uid_count=UID_COUNT,
        uid_lock_dir=tmp_path / "locks",
        **options,
    )
    expected = SandboxState.AVAILABLE if request.param == "bwrap" else SandboxState.RLIMIT_ONLY
    status = await tool.sandbox_status()
    assert status.state is expected, status.reason
    return tool


async def run_code(
    db: Database, python: PythonTool, artifacts_dir: Path, code: str, max_bytes: int = 1 << 20
) -> tuple[Engine, str, dict[str, Any], Any]:
    model = Recording()
    engine = Engine(
        db,
        gateway=Gateway([model]),
        tools=ToolRegistry([python]),
        settings=Settings(
            artifacts_dir=artifacts_dir, artifact_max_bytes=max_bytes, poll_interval=0.05
        ),
    )
    workspace = new_id("ws")
    version = await engine.register(load_workflow_text(flow(code)), workspace_id=workspace)
    run_id = await engine.start_run(version, caller=RunCaller(workspace_id=workspace))
    run = await engine.run_until_settled(run_id)
    assert run.status == RunStatus.COMPLETED, run
    (message,) = [m.content for m in model.requests[-1].messages if m.role == "tool"]
    result = json.loads(message.removeprefix("error: "))  # how a failed call reads
    use = next(s for s in await engine.steps(run_id) if s.key == "use")
    return engine, run_id, result, use.output


async def test_files_left_in_artifacts_become_the_runs_artifacts(
    db: Database, python: PythonTool, tmp_path: Path
) -> None:
    engine, run_id, result, used = await run_code(db, python, tmp_path / "files", CODE)
    assert result["exit_code"] == 0, result
    assert result["stdout"] == "done\n"
    assert [(a["name"], a["size"], a["step"]) for a in result["artifacts"]] == [
        ("summary.txt", 11, "compute"),
        ("tables/rows.csv", 8, "compute"),
    ]
    # The dot file's name is refused; the symlinks are not followed (nor reported: not files).
    assert result["artifact_errors"] == [
        "artifact name '.hidden': part '.hidden' must start with a letter, digit or '_' and use "
        "only letters, digits, spaces and ._-+=@,()[]"
    ]
    assert used == "summary.txt,tables/rows.csv"
    _, data = await engine.artifacts.read(run_id, "tables/rows.csv", limit=100)
    assert data == b"a,b\n1,2\n"


async def test_no_folder_no_artifacts_and_a_failing_program_still_saves_its_files(
    db: Database, python: PythonTool, tmp_path: Path
) -> None:
    _, _, plain, _ = await run_code(db, python, tmp_path / "a", "print(1)")
    assert "artifacts" not in plain
    code = "import os\nos.mkdir('artifacts')\nopen('artifacts/log.txt', 'w').write('x')\n1/0\n"
    _, _, failed, used = await run_code(db, python, tmp_path / "b", code)
    assert failed["exit_code"] == 1
    assert "ZeroDivisionError" in failed["stderr"]
    assert [a["name"] for a in failed["artifacts"]] == ["log.txt"]
    assert used == "log.txt"


async def test_a_file_over_the_size_limit_is_refused_the_others_saved(
    db: Database, python: PythonTool, tmp_path: Path
) -> None:
    code = (
        "import os\nos.mkdir('artifacts')\n"
        "open('artifacts/big.bin', 'wb').write(b'x' * 11)\n"
        "open('artifacts/small.bin', 'wb').write(b'x' * 10)\n"
    )
    _, _, result, _ = await run_code(db, python, tmp_path / "files", code, max_bytes=10)
    assert [a["name"] for a in result["artifacts"]] == ["small.bin"]
    assert result["artifact_errors"] == ["artifact 'big.bin' is 11 bytes; the limit is 10"]
    assert [p.name for p in (tmp_path / "files").rglob("*.bin")] == ["small.bin"]
