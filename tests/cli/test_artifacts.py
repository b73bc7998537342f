"""`agentmill artifacts list|get` against a real `agentmill up` server (embedded mode: the files
are kept next to its SQLite database)."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

from agentmill.client import Client
from tests.cli.test_run import CLI
from tests.cli.test_up import free_port, start_up, stop

REPLIES = [
    {
        "tool_calls": [
            {
                "name": "artifact_write",
                "arguments": {"name": "out/table.csv", "content": "a,b\n1,2\n"},
            }
        ]
    },
    "saved",
]
WRITES = textwrap.dedent(f"""\
    name: writes
    agents:
      m: {{model: scripted/m, tools: [artifact_write], options: {{replies: {json.dumps(REPLIES)}}}}}
    steps:
      - id: make
        agent: m
        prompt: x
    """)


def test_artifacts_are_listed_and_downloaded_from_the_command_line(workdir: Path) -> None:
    port = free_port()
    proc, first = start_up(workdir, port)
    server = f"http://127.0.0.1:{port}"
    env = {**os.environ, "AGENTMILL_SERVER": server, "AGENTMILL_API_KEY": first["API key"]}

    def agentmill(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CLI, *args], cwd=workdir, env=env, capture_output=True, text=True, timeout=30
        )

    try:
        with Client(server, api_key=first["API key"]) as client:
            workflow = client.push_workflow(first["workspace"], WRITES)
            run = client.start_run(workflow["id"])
            assert client.wait(run["id"], timeout=20)["status"] == "COMPLETED"
        run_id = run["id"]
        stored = workdir / ".agentmill" / "artifacts" / first["workspace"] / run_id
        assert (stored / "out" / "table.csv").read_text() == "a,b\n1,2\n"

        listed = agentmill("artifacts", "list", run_id)
        assert listed.returncode == 0, listed.stderr
        header, row = listed.stdout.splitlines()  # piped: tab-separated lines
        assert header.split("\t") == ["name", "bytes", "type", "step", "sha256"]
        assert row.split("\t")[:4] == ["out/table.csv", "8", "text/csv", "make"]

        saved = agentmill("artifacts", "get", run_id, "out/table.csv")
        assert saved.returncode == 0, saved.stderr
        assert (workdir / "table.csv").read_text() == "a,b\n1,2\n"
        assert "saved out/table.csv (8 bytes) to table.csv" in saved.stderr
        to_stdout = agentmill("artifacts", "get", run_id, "out/table.csv", "-o", "-")
        assert to_stdout.stdout == "a,b\n1,2\n"
        elsewhere = agentmill("artifacts", "get", run_id, "out/table.csv", "-o", "copy.csv")
        assert elsewhere.returncode == 0, elsewhere.stderr
        assert (workdir / "copy.csv").read_text() == "a,b\n1,2\n"

        missing = agentmill("artifacts", "get", run_id, "nope.txt")
        assert missing.returncode == 1
        assert f"run {run_id!r} has no artifact 'nope.txt'" in missing.stderr
        assert not (workdir / "nope.txt").exists()
    finally:
        stop(proc)
