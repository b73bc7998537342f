"""`agentmill dead-letters` against a real `agentmill up` server, through the Python client."""

from __future__ import annotations

import asyncio
import os
import subprocess
import textwrap
from pathlib import Path

import pytest

from agentmill.client import ApiError, AsyncClient, Client
from tests.cli.test_run import CLI
from tests.cli.test_up import free_port, start_up, stop

FAILS_ONCE = textwrap.dedent(
    """\
    name: fails-once
    agents:
      m: {model: scripted/m, options: {fail_attempts: 1, fail_with: bad_request, reply: fine}}
    steps:
      - id: call
        agent: m
        prompt: x
    outputs:
      result: "{{ steps.call.output }}"
    """
)


def test_dead_letters_are_listed_and_redriven_from_the_command_line(workdir: Path) -> None:
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
            workflow = client.push_workflow(first["workspace"], FAILS_ONCE)
            run = client.start_run(workflow["id"])
            assert client.wait(run["id"], timeout=20)["status"] == "FAILED"
            step_id = client.steps(run["id"])[0]["id"]

        listed = agentmill("dead-letters", "list")
        assert listed.returncode == 0, listed.stderr
        header, *rows = listed.stdout.splitlines()  # piped: tab-separated lines
        assert header.split("\t") == [
            "step",
            "run",
            "workflow",
            "key",
            "tries",
            "failed",
            "redrive",
            "error",
        ]
        assert len(rows) == 1
        cells = rows[0].split("\t")
        assert cells[:5] == [step_id, run["id"], "fails-once", "call", "1"]
        assert cells[6:] == ["yes", "400 Bad Request (scripted failure)"]

        redriven = agentmill("dead-letters", "redrive", step_id)
        assert redriven.returncode == 0, redriven.stderr
        assert redriven.stdout.startswith(f"{step_id} re-driven · run {run['id']} · ")
        with Client(server, api_key=first["API key"]) as client:
            done = client.wait(run["id"], timeout=20)
        assert (done["status"], done["outputs"]) == ("COMPLETED", {"result": "fine"})

        again = agentmill("dead-letters", "redrive", step_id)
        assert again.returncode == 1
        assert "step 'call' is SUCCEEDED, not FAILED" in again.stderr
        assert "(409 conflict)" in again.stderr
        assert agentmill("dead-letters", "list").stdout.splitlines()[1:] == []

        async def use_async() -> tuple[list[str], int]:
            async with AsyncClient(server, api_key=first["API key"]) as client:
                page = await client.dead_letters(first["workspace"])
                with pytest.raises(ApiError) as caught:
                    await client.redrive("stp_nope")
            return [d["step_id"] for d in page["dead_letters"]], caught.value.status

        assert asyncio.run(use_async()) == ([], 404)
    finally:
        stop(proc)
