"""A mistake in agentmill.yaml or an AGENTMILL_* variable: one clear line and exit code 2, before
anything is created, for every command that starts work."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.cli.test_run import CLI, write
from tests.cli.test_up import free_port

FLOW = """\
name: hello
agents:
  greeter: {model: scripted/greeter}
steps:
  - id: greet
    agent: greeter
    prompt: Say hello.
"""


def cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    full.pop("AGENTMILL_DATABASE_URL", None)
    return subprocess.run(
        [*CLI, *args],
        cwd=cwd,
        env=full,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def assert_one_clear_error(result: subprocess.CompletedProcess[str], *expected: str) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output
    assert output.strip().startswith("error:"), output
    assert len(output.strip().splitlines()) == 1, output
    for text in expected:
        assert text in output, output


@pytest.mark.parametrize(
    "command",
    [
        ["up", "--port", "0"],
        ["run", "flow.yaml"],
        ["worker"],
    ],
)
def test_malformed_agentmill_yaml_is_one_line_naming_file_and_position(
    workdir: Path, command: list[str]
) -> None:
    write(workdir / "flow.yaml", FLOW)
    (workdir / "agentmill.yaml").write_text("providers:\n  groq: [\n")
    if command[0] == "up":
        command = ["up", "--port", str(free_port())]
    result = cli(*command, cwd=workdir)
    assert_one_clear_error(result, "agentmill.yaml", "not valid YAML", "line 3")
    # nothing was created: no owner whose password would be lost
    assert not (workdir / ".agentmill" / "first-start-credentials.txt").exists()
    if command[0] == "up":
        assert not (workdir / ".agentmill" / "agentmill.db").exists()


def test_a_wrong_field_in_agentmill_yaml_names_the_field(workdir: Path) -> None:
    (workdir / "agentmill.yaml").write_text(
        "providers:\n  groq: {kind: openai_compatible, base_url: 'https://x', timeout: soon}\n"
    )
    result = cli("up", "--port", str(free_port()), cwd=workdir)
    assert_one_clear_error(result, "agentmill.yaml", "providers.groq.timeout", "'soon'")
    (workdir / "agentmill.yaml").write_text("providers:\n  groq: {kind: openai_compatible}\n")
    result = cli("up", "--port", str(free_port()), cwd=workdir)
    assert_one_clear_error(result, "agentmill.yaml", "groq", "needs a base_url")


@pytest.mark.parametrize(
    "command", [["up"], ["run", "flow.yaml"], ["worker"], ["validate", "flow.yaml"]]
)
def test_a_bad_setting_names_its_variable(workdir: Path, command: list[str]) -> None:
    write(workdir / "flow.yaml", FLOW)
    result = cli(*command, cwd=workdir, env={"AGENTMILL_LEASE_SECONDS": "-1"})
    if command[0] == "validate":  # validate reads settings only for the model checks
        assert result.returncode in (0, 2), result.stderr
        if result.returncode == 0:
            return
    assert_one_clear_error(result, "AGENTMILL_LEASE_SECONDS", "greater than 0", "'-1'")


def test_a_bad_secret_setting_is_not_echoed(workdir: Path) -> None:
    result = cli("up", cwd=workdir, env={"AGENTMILL_OPS_NETWORKS": "not json"})
    assert_one_clear_error(result, "AGENTMILL_OPS_NETWORKS")
    result = cli("worker", cwd=workdir, env={"AGENTMILL_SECRET_KEY": "short-and-weak"})
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output
    assert "short-and-weak" not in output
