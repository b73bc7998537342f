"""WebSockets, against a real server: a run's stream (replay, live, resume with ?after=) and a
workspace's run feed; credentials required, other tenants' runs hidden."""

from __future__ import annotations

import json
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.api.test_events import SLOW
from tests.cli.test_up import free_port, start_up, stop
from tests.conftest import BACKENDS


@pytest.fixture(scope="module", params=BACKENDS)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A real server on SQLite, then on PostgreSQL (where other processes' commits arrive
    through NOTIFY)."""
    workdir: Path = tmp_path_factory.mktemp("ws")
    port = free_port()
    database = [] if request.param == "sqlite" else ["--db", request.getfixturevalue("pg_database")]
    proc, _ = start_up(workdir, port, *database)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        stop(proc)


def account(host: str) -> tuple[dict[str, str], str]:
    email = f"ws-{uuid.uuid4().hex[:8]}@example.com"
    with httpx.Client(base_url=f"http://{host}/api/v1") as http:
        http.post("/auth/register", json={"email": email, "name": "W", "password": "correct horse"})
        token = http.post("/auth/login", json={"email": email, "password": "correct horse"}).json()[
            "access_token"
        ]
        headers = {"Authorization": f"Bearer {token}"}
        ws = http.post("/workspaces", json={"name": "W"}, headers=headers).json()["id"]
    return headers, ws


def start_run(host: str, headers: dict[str, str], ws: str, text: str = SLOW) -> str:
    with httpx.Client(base_url=f"http://{host}/api/v1", headers=headers) as http:
        workflow = http.post(
            f"/workspaces/{ws}/workflows",
            content=text,
            headers={"Content-Type": "application/yaml"},
        ).json()
        return str(http.post(f"/workflows/{workflow['id']}/runs", json={}).json()["id"])


def receive_all(connection: ClientConnection) -> list[dict[str, Any]]:
    messages = []
    try:
        while True:
            messages.append(json.loads(connection.recv(timeout=20)))
    except ConnectionClosed:
        return messages


def test_a_run_stream_replays_follows_and_resumes(server: str) -> None:
    headers, ws = account(server)
    run_id = start_run(server, headers, ws)

    with connect(
        f"ws://{server}/api/v1/runs/{run_id}/ws", additional_headers=headers
    ) as connection:
        # The server closes it when the run ends. Live deltas (no id) are checked below.
        everything = [m for m in receive_all(connection) if not m.get("ephemeral")]
    middle = everything[len(everything) // 2]["id"]
    token = headers["Authorization"].split()[1]
    with connect(
        f"ws://{server}/api/v1/runs/{run_id}/ws?after={middle}&token={token}"
    ) as connection:
        rest = [m for m in receive_all(connection) if not m.get("ephemeral")]

    ids = [m["id"] for m in everything]
    assert ids == sorted(ids)
    assert everything[0]["type"] == "run.created"
    assert everything[-1]["type"] == "run.completed"
    assert rest == [m for m in everything if m["id"] > middle]


def test_the_workspace_feed_shows_run_status_changes(server: str) -> None:
    headers, ws = account(server)
    with connect(
        f"ws://{server}/api/v1/workspaces/{ws}/runs/ws", additional_headers=headers
    ) as connection:
        # The feed starts from "now", a moment the client cannot see: a first run, followed
        # through to its end, shows the feed is live before the run under test starts.
        quick = SLOW.replace("latency: 0.15", "latency: 0")
        probe = start_run(server, headers, ws, quick.replace("name: slow", "name: probe", 1))
        while True:
            message = json.loads(connection.recv(timeout=20))
            if message["run_id"] == probe and message["type"] == "run.completed":
                break
        run_id = start_run(server, headers, ws, quick)
        seen: list[str] = []
        while "run.completed" not in seen:
            message = json.loads(connection.recv(timeout=20))
            assert message["run_id"] == run_id
            assert message["workflow"] == "slow"
            seen.append(message["type"])
    assert seen[0] == "run.created"
    assert all(t.startswith("run.") for t in seen)


def test_websockets_need_credentials_and_hide_other_tenants(server: str) -> None:
    headers, ws = account(server)
    run_id = start_run(server, headers, ws)
    other_headers, _ = account(server)

    with (
        connect(f"ws://{server}/api/v1/runs/{run_id}/ws") as connection,
        pytest.raises(ConnectionClosed) as closed,
    ):
        connection.recv(timeout=10)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1008
    assert closed.value.rcvd.reason == "missing bearer token (a login access token or an API key)"

    with connect(
        f"ws://{server}/api/v1/runs/{run_id}/ws", additional_headers=other_headers
    ) as connection:
        assert json.loads(connection.recv(timeout=10))["error"]["code"] == "not_found"
    with connect(
        f"ws://{server}/api/v1/workspaces/{ws}/runs/ws", additional_headers=other_headers
    ) as connection:
        assert json.loads(connection.recv(timeout=10))["error"]["code"] == "not_found"


def test_a_run_stream_carries_live_deltas_marked_ephemeral(server: str) -> None:
    headers, ws = account(server)
    answer = " ".join(f"w{i}" for i in range(45))
    text = textwrap.dedent(
        f"""\
        name: live
        agents:
          m: {{model: scripted/m, options: {{stream_delay: 0.02, reply: "{answer}"}}}}
        steps:
          - id: go
            type: human
          - id: write
            needs: [go]
            agent: m
            prompt: Write.
        """
    )
    run_id = start_run(server, headers, ws, text)
    messages: list[dict[str, Any]] = []
    with connect(
        f"ws://{server}/api/v1/runs/{run_id}/ws", additional_headers=headers
    ) as connection:
        while not messages or messages[-1]["type"] != "step.waiting":
            messages.append(json.loads(connection.recv(timeout=20)))
        with httpx.Client(base_url=f"http://{server}/api/v1", headers=headers) as http:
            assert http.post(f"/runs/{run_id}/steps/go/approve", json={}).status_code == 200
        messages += receive_all(connection)

    deltas = [m for m in messages if m["type"] == "step.delta"]
    done = next(m for m in messages if m["type"] == "step.succeeded" and m["step"] == "write")
    assert len(deltas) >= 2
    assert all(messages.index(m) < messages.index(done) for m in deltas)
    assert "".join(m["data"]["text"] for m in deltas) == answer
    assert all(m["ephemeral"] is True and "id" not in m for m in deltas)
    assert all("ephemeral" not in m for m in messages if m not in deltas)
