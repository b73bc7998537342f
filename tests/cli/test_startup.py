"""The CLI starts fast because a command imports only what it uses: no provider SDK, no MCP,
no web server for `--help`, `validate` or a `run` of a workflow that needs none of them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

HEAVY = ("openai", "anthropic", "google.genai", "ollama", "mcp", "fastapi", "uvicorn")
MARKER = "--- modules ---"

# Invoke the app as the `agentmill` entry point does, then list every module it loaded.
PROBE = textwrap.dedent(
    f"""
    import json, sys
    from agentmill.cli.app import app
    try:
        app(sys.argv[1:], prog_name="agentmill")
    except SystemExit:
        pass
    print({MARKER!r})
    print(json.dumps(sorted(sys.modules)))
    """
)

FLOW = textwrap.dedent(
    """
    name: startup
    agents:
      m: {model: scripted/quick, options: {reply: ok}}
    steps:
      - id: a
        agent: m
        prompt: hello
      - id: b
        needs: [a]
        value: "{{ steps.a.output }}!"
    outputs:
      out: "{{ steps.b.output }}"
    """
)


def loaded_modules(*args: str, cwd: Path) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    env = {**os.environ}
    env.pop("AGENTMILL_DATABASE_URL", None)
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    _head, sep, tail = done.stdout.rpartition(MARKER)
    assert sep, done.stderr
    return done, json.loads(tail)


def heavy(modules: list[str]) -> list[str]:
    return sorted(
        name for name in modules if any(name == h or name.startswith(h + ".") for h in HEAVY)
    )


def test_help_loads_no_sdk_mcp_or_web_server(tmp_path: Path) -> None:
    done, modules = loaded_modules("--help", cwd=tmp_path)
    assert "validate" in done.stdout  # the help was printed
    assert heavy(modules) == []
    assert "agentmill.engine.engine" not in modules
    assert "sqlalchemy" not in modules


def test_validate_loads_no_sdk_mcp_engine_or_database(tmp_path: Path) -> None:
    (tmp_path / "flow.yaml").write_text(FLOW)
    done, modules = loaded_modules("validate", "flow.yaml", cwd=tmp_path)
    assert "workflow 'startup' is valid (2 steps)" in done.stderr
    assert heavy(modules) == []
    assert "agentmill.engine.engine" not in modules
    assert "sqlalchemy" not in modules


def test_run_of_a_scripted_workflow_loads_no_sdk_mcp_or_web_server(tmp_path: Path) -> None:
    (tmp_path / "flow.yaml").write_text(FLOW)
    db = f"sqlite:///{tmp_path}/run.db"
    done, modules = loaded_modules("run", "flow.yaml", "--json", "--db", db, cwd=tmp_path)
    result = json.loads(done.stdout.rpartition(MARKER)[0])
    assert result["status"] == "COMPLETED"
    assert result["outputs"] == {"out": "ok!"}
    assert heavy(modules) == []
    assert "agentmill.tools.sandbox" not in modules  # no step runs `python`
    assert "agentmill.engine.engine" in modules  # the probe did run the workflow here


# What a local run on SQLite never needs: the Redis client, the PostgreSQL driver, the price
# tables (a scripted model has no price), provider-secret crypto, form schemas, and alembic once
# the database is at the newest migration.
NOT_FOR_A_LOCAL_RUN = ("redis", "asyncpg", "genai_prices", "cryptography", "jsonschema", "alembic")


def test_second_run_on_sqlite_loads_no_redis_driver_prices_or_alembic(tmp_path: Path) -> None:
    (tmp_path / "flow.yaml").write_text(FLOW)
    db = f"sqlite:///{tmp_path}/run.db"
    loaded_modules("run", "flow.yaml", "--json", "--db", db, cwd=tmp_path)  # creates the schema
    done, modules = loaded_modules("run", "flow.yaml", "--json", "--db", db, cwd=tmp_path)
    assert json.loads(done.stdout.rpartition(MARKER)[0])["status"] == "COMPLETED"
    loaded = {name.partition(".")[0] for name in modules}
    assert sorted(loaded & set(NOT_FOR_A_LOCAL_RUN)) == []


@pytest.mark.parametrize("name", ["Engine", "Database", "upgrade", "__version__"])
def test_the_library_names_load_on_first_use_without_mcp(name: str) -> None:
    code = f"import agentmill, sys; agentmill.{name}; print('mcp' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
