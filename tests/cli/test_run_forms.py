"""`agentmill run` with a form step: --auto-approve answers with the default; a terminal asks."""

from __future__ import annotations

import json
import os
import pty
import subprocess
from pathlib import Path

from agentmill.domain.states import RunStatus
from tests.cli.test_run import CLI, _read_until, agentmill, with_engine, write

NO_DEFAULT = """\
    name: no-default
    steps:
      - id: ask
        type: human
        form: {type: object, properties: {n: {type: integer}}, required: [n]}
    """


def test_auto_approve_answers_a_form_with_its_default(workdir: Path, examples_dir: Path) -> None:
    done = agentmill(
        "run", str(examples_dir / "form-approval.yaml"), "--auto-approve", "--json", cwd=workdir
    )

    assert done.returncode == 0, done.stderr
    outputs = json.loads(done.stdout)["outputs"]
    assert (outputs["priority"], outputs["team"]) == ("normal", "support")
    assert "triage: answered with its default (--auto-approve)" in done.stderr


def test_auto_approve_cannot_answer_a_form_without_a_default(workdir: Path) -> None:
    flow = write(workdir / "flow.yaml", NO_DEFAULT)
    db_url = f"sqlite:///{workdir / 'runs.db'}"

    result = agentmill("run", str(flow), "--auto-approve", cwd=workdir, db=db_url)

    assert result.returncode == 1
    assert (
        "step 'ask' asks for a form and has no 'default' answer, so --auto-approve cannot "
        "answer it" in " ".join(result.stderr.split())
    )
    runs = with_engine(
        db_url,
        lambda engine: engine.db.read(
            lambda tx: tx.conn.exec_driver_sql("select status from runs").scalars().all()
        ),
    )
    assert runs == [RunStatus.WAITING]  # left for a person: agentmill run --resume


def test_on_a_terminal_each_field_of_a_flat_form_is_asked(
    workdir: Path, examples_dir: Path
) -> None:
    db_url = f"sqlite:///{workdir / 'runs.db'}"
    master, slave = pty.openpty()
    env = {**os.environ, "TERM": "xterm", "COLUMNS": "120", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [*CLI, "run", str(examples_dir / "form-approval.yaml"), "--db", db_url],
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
        assert b"Triage this ticket" in seen
        os.write(master, b"y\n")
        _read_until(master, b"priority", seen)
        os.write(master, b"whenever\n")  # not one of the choices: asked again
        _read_until(master, b"Please select one of the available options", seen)
        os.write(master, b"urgent\n")
        _read_until(master, b"team", seen)
        os.write(master, b"web\n")
        _read_until(master, b"customer_visible", seen)
        os.write(master, b"n\n")
        _read_until(master, b"Comment", seen)
        os.write(master, b"\n")
        _read_until(master, b"completed", seen)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)

    runs = with_engine(
        db_url,
        lambda engine: engine.db.read(
            lambda tx: tx.conn.exec_driver_sql("select outputs from runs").scalars().all()
        ),
    )
    outputs = json.loads(runs[0]) if isinstance(runs[0], str) else runs[0]
    assert (outputs["priority"], outputs["team"]) == ("urgent", "web")
