"""`agentmill run` and `agentmill validate`, driven as a user would: a real subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import select
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from agentmill.domain.states import RunStatus, StepStatus
from agentmill.engine.engine import Engine
from agentmill.store.db import Database
from tests.waiting import until_sync

T = TypeVar("T")
CLI = [sys.executable, "-m", "agentmill"]


def agentmill(
    *args: str, cwd: Path, db: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("AGENTMILL_DATABASE_URL", None)
    extra = ["--db", db] if db else []
    return subprocess.run(
        [*CLI, *args, *extra],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def with_engine(url: str, use: Callable[[Engine], Awaitable[T]]) -> T:
    """Look at a database the CLI wrote, through the engine's read API."""

    async def main() -> T:
        db = Database(url)
        await db.start()
        try:
            return await use(Engine(db))
        finally:
            await db.close()

    return asyncio.run(main())


def test_run_prints_progress_and_outputs_and_stores_the_run(
    workdir: Path, examples_dir: Path
) -> None:
    result = agentmill(
        "run", str(examples_dir / "research-brief.yaml"), "-i", "topic=tidal energy", cwd=workdir
    )

    assert result.returncode == 0, result.stderr
    assert "brief: [offline: scripted/writer is scripted, no model was called]" in result.stdout
    assert "tidal energy" in result.stdout
    for step in ("history", "economics", "risks", "brief"):
        assert f"✓ {step} succeeded" in result.stderr
    assert "completed in" in result.stderr
    assert (workdir / ".agentmill" / "agentmill.db").is_file()


def test_run_json_gives_one_machine_readable_result(workdir: Path, examples_dir: Path) -> None:
    result = agentmill("run", str(examples_dir / "planner-map.yaml"), "--json", cwd=workdir)

    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["status"] == "COMPLETED"
    assert payload["workflow"] == "plan-and-execute"
    assert len(payload["outputs"]["tasks"]) == 5
    assert [s["key"] for s in payload["steps"] if s["key"].startswith("work[")] == [
        f"work[{i}]" for i in range(5)
    ]
    assert payload["usage"]["input_tokens"] > 0


def test_the_supervisor_example_delegates_and_counts_every_agents_calls(
    workdir: Path, examples_dir: Path
) -> None:
    result = agentmill("run", str(examples_dir / "supervisor.yaml"), "--json", cwd=workdir)

    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["status"] == "COMPLETED"
    assert payload["outputs"]["brief"] == (
        "Checked and approved.\n"
        "Brief on the notes below.\n"
        "- What is the history of the topic? One sentence. (scripted notes: no model was called)\n"
        "- What does it cost to start? One sentence. (scripted notes: no model was called)"
    )
    assert [s["key"] for s in payload["steps"]] == ["lead"]

    def calls(engine: Engine) -> Awaitable[list[dict[str, Any]]]:
        return engine.events(run_id=payload["run_id"])

    events = with_engine(f"sqlite:///{workdir / '.agentmill' / 'agentmill.db'}", calls)
    audit = [e["data"] for e in events if e["data"].get("topic") == "tool"]
    assert [(a["agent"], a["tool"]) for a in audit] == [
        ("supervisor", "researcher"),
        ("supervisor", "researcher"),
        ("supervisor", "writer"),
    ]


def test_an_invalid_workflow_exits_2_with_the_line_and_column(workdir: Path) -> None:
    flow = write(
        workdir / "bad.yaml",
        """\
        name: bad
        steps:
          - id: a
            value: 1
          - id: b
            needs: [c]
            value: 2
        """,
    )
    result = agentmill("run", str(flow), cwd=workdir)

    assert result.returncode == 2
    assert (
        f"{flow}:6:13: steps[1].needs[0]: step 'b' needs 'c', which is not a step" in result.stderr
    )
    assert "Traceback" not in result.stderr


def test_invalid_inputs_exit_2_and_name_the_input(workdir: Path, examples_dir: Path) -> None:
    result = agentmill(
        "run", str(examples_dir / "research-brief.yaml"), "-i", "topik=x", cwd=workdir
    )

    assert result.returncode == 2
    assert "unknown input 'topik' (inputs: topic)" in result.stderr


def test_validate_reports_each_file(workdir: Path, examples_dir: Path) -> None:
    bad = write(
        workdir / "cycle.yaml",
        "name: c\nsteps:\n  - {id: a, needs: [b], value: 1}\n  - {id: b, needs: [a], value: 2}\n",
    )
    result = agentmill("validate", str(examples_dir / "approval.yaml"), str(bad), cwd=workdir)

    assert result.returncode == 1
    assert "✓" in result.stderr
    assert "workflow 'reviewed-announcement' is valid (5 steps)" in result.stderr
    assert "cycle: " in result.stderr
    assert agentmill("validate", str(examples_dir / "approval.yaml"), cwd=workdir).returncode == 0


def test_a_human_step_waits_then_resume_with_auto_approve_finishes(
    workdir: Path, examples_dir: Path
) -> None:
    db_url = f"sqlite:///{workdir / 'runs.db'}"
    waiting = agentmill(
        "run", str(examples_dir / "approval.yaml"), "--json", cwd=workdir, db=db_url
    )

    assert waiting.returncode == 3, waiting.stderr
    run_id = json.loads(waiting.stdout)["run_id"]
    assert json.loads(waiting.stdout)["status"] == "WAITING"

    done = agentmill("run", "--resume", run_id, "--auto-approve", "--json", cwd=workdir, db=db_url)

    assert done.returncode == 0, done.stderr
    payload = json.loads(done.stdout)
    assert payload["outputs"] == {"decision": True, "result": "published"}
    events = with_engine(db_url, lambda engine: engine.events(run_id=run_id))
    assert [e["step_key"] for e in events if e["type"] == "step.started"].count("draft") == 1
    assert any(e["type"] == "step.approved" and e["data"]["by"] == "auto-approve" for e in events)


def test_ctrl_c_cancels_the_run_cleanly(workdir: Path) -> None:
    flow = write(
        workdir / "slow.yaml",
        """\
        name: slow
        agents:
          m: {model: scripted/m, options: {latency: 30}}
        steps:
          - id: wait
            agent: m
            prompt: x
        """,
    )
    db_url = f"sqlite:///{workdir / 'runs.db'}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [*CLI, "run", str(flow), "--db", db_url],
        cwd=workdir,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    run_id = _wait_for_run_id(proc)
    _wait_for_line(proc, "▶ wait running")
    proc.send_signal(signal.SIGINT)
    stderr = proc.communicate(timeout=20)[1]

    assert proc.returncode == 130
    assert f"interrupted: run {run_id} cancelled" in stderr
    assert "Traceback" not in stderr
    run = with_engine(db_url, lambda engine: engine.get_run(run_id))
    assert run.status == RunStatus.CANCELLED
    assert [s.status for s in with_engine(db_url, lambda engine: engine.steps(run_id))] == [
        StepStatus.CANCELLED
    ]


CRASH_FLOW = """\
name: crash-test
agents:
  slow: {model: scripted/slow, options: {latency: 0.4}}
steps:
  - id: s1
    agent: slow
    prompt: one
  - id: s2
    needs: [s1]
    agent: slow
    prompt: "two after {{ steps.s1.output }}"
  - id: side
    needs: [s1]
    value: side
  - id: s3
    needs: [s2, side]
    agent: slow
    prompt: three
  - id: s4
    needs: [s3]
    agent: slow
    prompt: four
  - id: s5
    needs: [s4]
    value: "{{ steps.s4.output }}"
outputs:
  last: "{{ steps.s5.output }}"
"""


@pytest.mark.slow
def test_a_killed_run_resumes_without_redoing_finished_steps(
    workdir: Path, database_url: str
) -> None:
    flow = write(workdir / "crash.yaml", CRASH_FLOW)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [*CLI, "run", str(flow), "--db", database_url],
        cwd=workdir,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    run_id = _wait_for_run_id(proc)
    _wait_for_line(proc, "✓ s2 succeeded")

    def s3_started() -> bool:
        events = with_engine(database_url, lambda engine: engine.events(run_id=run_id))
        return any(e["type"] == "step.started" and e["step_key"] == "s3" for e in events)

    until_sync(s3_started, message="s3 never started")  # kill it mid-run
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert proc.stderr is not None
    proc.stderr.close()

    before = with_engine(database_url, lambda engine: engine.events(run_id=run_id))
    done_before = {e["step_key"] for e in before if e["type"] == "step.succeeded"}
    assert {"s1", "s2", "side"} <= done_before
    assert "s5" not in done_before
    assert (
        with_engine(database_url, lambda engine: engine.get_run(run_id)).status == RunStatus.RUNNING
    )

    resumed = agentmill("run", "--resume", run_id, "--json", cwd=workdir, db=database_url)

    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["status"] == "COMPLETED"
    events = with_engine(database_url, lambda engine: engine.events(run_id=run_id))
    started = [e["step_key"] for e in events if e["type"] == "step.started"]
    succeeded = [e["step_key"] for e in events if e["type"] == "step.succeeded"]
    for key in done_before:  # nothing that had succeeded ran again
        assert started.count(key) == 1, key
    for key in ("s1", "s2", "side", "s3", "s4", "s5"):  # and every step succeeded once
        assert succeeded.count(key) == 1, key
    steps = {s.key: s for s in with_engine(database_url, lambda engine: engine.steps(run_id))}
    if "s3" not in done_before:  # s3 was cut off mid-call: it ran again as attempt 2
        assert steps["s3"].attempt == 2
        assert any(e["type"] == "step.lease_expired" and e["step_key"] == "s3" for e in events)


def _wait_for_run_id(proc: subprocess.Popen[str]) -> str:
    line = _wait_for_line(proc, "· run ")
    return line.rsplit("· run ", 1)[1].strip()


def _wait_for_line(proc: subprocess.Popen[str], needle: str, timeout: float = 30) -> str:
    assert proc.stderr is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            raise AssertionError(f"process ended before printing {needle!r} (exit {proc.poll()})")
        if needle in line:
            return line
    raise AssertionError(f"no {needle!r} within {timeout}s")


def _read_until(fd: int, needle: bytes, seen: bytearray, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while needle not in seen:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(
                f"no {needle!r} on the terminal; it showed:\n{seen.decode(errors='replace')}"
            )
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # the program exited and closed the terminal
                chunk = b""
            if not chunk:
                raise AssertionError(
                    f"terminal closed before {needle!r}:\n{seen.decode(errors='replace')}"
                )
            seen.extend(chunk)


def test_on_a_terminal_the_run_asks_for_approval_and_follows_the_answer(
    workdir: Path, examples_dir: Path
) -> None:
    db_url = f"sqlite:///{workdir / 'runs.db'}"
    master, slave = pty.openpty()
    env = {**os.environ, "TERM": "xterm", "COLUMNS": "120", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [*CLI, "run", str(examples_dir / "approval.yaml"), "--db", db_url],
        cwd=workdir,
        env=env,
        stdin=slave,
        stdout=slave,
        stderr=slave,
        close_fds=True,
    )
    os.close(slave)
    seen = bytearray()
    try:
        _read_until(master, b"Approve?", seen)
        assert b"Publish this announcement?" in seen  # the step's message is shown,
        assert b"[offline: scripted/writer" in seen  # verbatim: data is never read as markup
        os.write(master, b"n\n")
        _read_until(master, b"Comment", seen)
        os.write(master, b"too formal\n")
        _read_until(master, b"sent back for revision", seen)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)

    runs = with_engine(
        db_url,
        lambda engine: engine.db.read(
            lambda tx: tx.conn.exec_driver_sql("select id from runs").scalars().all()
        ),
    )
    steps = {s.key: s for s in with_engine(db_url, lambda engine: engine.steps(runs[0]))}
    assert steps["review"].output == {"approved": False, "by": "terminal", "comment": "too formal"}
    assert steps["publish"].status == StepStatus.SKIPPED
    assert steps["revise"].status == StepStatus.SUCCEEDED


def test_on_a_terminal_a_running_agent_step_shows_its_model_writing(workdir: Path) -> None:
    words = " ".join(f"streamed{i}" for i in range(40))
    flow = workdir / "live.yaml"
    flow.write_text(
        textwrap.dedent(
            f"""\
            name: live
            agents:
              m: {{model: scripted/m, options: {{stream_delay: 0.1, reply: "{words}"}}}}
            steps:
              - {{id: write, agent: m, prompt: Write.}}
            outputs:
              length: "{{{{ steps.write.output | length }}}}"
            """
        )
    )
    master, slave = pty.openpty()
    env = {**os.environ, "TERM": "xterm", "COLUMNS": "160", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [*CLI, "run", str(flow), "--db", f"sqlite:///{workdir / 'runs.db'}"],
        cwd=workdir,
        env=env,
        stdin=slave,
        stdout=slave,
        stderr=slave,
        close_fds=True,
    )
    os.close(slave)
    seen = bytearray()
    try:
        # The words are not in the outputs (only their length is): they can only come from
        # the running step's note, as its model wrote them.
        _read_until(master, b"streamed", seen)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)


def test_an_in_memory_run_completes_and_keeps_nothing(workdir: Path, examples_dir: Path) -> None:
    flow = str(examples_dir / "research-brief.yaml")
    result = agentmill("run", flow, "--json", cwd=workdir, db="sqlite:///:memory:")
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout)
    assert outcome["status"] == "COMPLETED"
    assert "urban beekeeping" in outcome["outputs"]["brief"]
    assert not (workdir / ".agentmill" / "agentmill.db").exists()  # nothing stored here

    # ... nor anywhere: a later command cannot find the run
    again = agentmill("run", "--resume", outcome["run_id"], cwd=workdir, db="sqlite:///:memory:")
    assert again.returncode == 2
    assert "in-memory database keeps nothing" in again.stderr
    assert "Traceback" not in again.stderr


def test_an_in_memory_run_that_waits_says_it_cannot_be_resumed(
    workdir: Path, examples_dir: Path
) -> None:
    result = agentmill("run", str(examples_dir / "approval.yaml"), cwd=workdir, db="sqlite://")
    assert result.returncode == 3, result.stderr
    assert "an in-memory run cannot be resumed" in result.stderr
    assert "--resume" not in result.stderr
    approved = agentmill(
        "run", str(examples_dir / "approval.yaml"), "--auto-approve", cwd=workdir, db="sqlite://"
    )
    assert approved.returncode == 0, approved.stderr


def test_run_help_documents_in_memory_runs(workdir: Path) -> None:
    result = agentmill("run", "--help", cwd=workdir)
    assert "sqlite:///:memory:" in result.stdout
    assert "cannot be resumed" in " ".join(result.stdout.split())
