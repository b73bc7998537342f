"""`agentmill up` as a user starts it: a real server process on a free loopback port."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.cli.test_run import CLI


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_up(
    workdir: Path, port: int, *extra: str, command: str = "up"
) -> tuple[subprocess.Popen[str], dict[str, str]]:
    """Start ``agentmill up`` (or ``api``) and wait until it serves; returns what it printed."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("AGENTMILL_DATABASE_URL", None)
    proc = subprocess.Popen(
        [*CLI, command, "--port", str(port), *extra],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        return proc, _wait_until_serving(proc, port)
    except BaseException:
        _kill_if_running(proc)  # a server that never came up must not outlive the test
        raise


def _wait_until_serving(proc: subprocess.Popen[str], port: int) -> dict[str, str]:
    printed: dict[str, str] = {}
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"agentmill up exited early ({proc.poll()}): {printed}")
        key, sep, value = line.strip().partition(":")
        if sep and key in ("email", "password", "workspace", "API key"):
            printed[key] = value.strip()
        if "/steps/" in line:  # the demo's steps that wait for a person
            printed["waiting"] = printed.get("waiting", "") + line
        if "Press Ctrl-C to stop." in line:
            break
    for _ in range(100):  # the banner comes just before the socket opens
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return printed
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError("server never became healthy")


def stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=20)[0]
    return out


def test_up_serves_the_api_runs_workflows_and_restarts_cleanly(
    workdir: Path, examples_dir: Path
) -> None:
    port = free_port()
    proc, first = start_up(workdir, port)
    base = f"http://127.0.0.1:{port}"
    try:
        assert set(first) == {"email", "password", "workspace", "API key"}
        saved = workdir / ".agentmill" / "first-start-credentials.txt"
        assert saved.stat().st_mode & 0o777 == 0o600  # the owner's only
        for name, value in first.items():
            assert f"{name}:".ljust(11) + value in saved.read_text()
        key = {"Authorization": f"Bearer {first['API key']}"}
        with httpx.Client(base_url=base, timeout=10) as http:
            login = http.post(
                "/api/v1/auth/login", json={"email": first["email"], "password": first["password"]}
            )
            assert login.status_code == 200
            flow = (examples_dir / "planner-map.yaml").read_text()
            created = http.post(
                f"/api/v1/workspaces/{first['workspace']}/workflows",
                content=flow,
                headers={**key, "Content-Type": "application/yaml"},
            )
            assert created.status_code == 201, created.text
            run = http.post(
                f"/api/v1/workflows/{created.json()['id']}/runs", json={}, headers=key
            ).json()
            for _ in range(200):
                status = http.get(f"/api/v1/runs/{run['id']}", headers=key).json()["status"]
                if status == "COMPLETED":
                    break
                time.sleep(0.05)
            assert status == "COMPLETED"
            assert run["id"] in http.get("/").text  # the home page lists it
    finally:
        out = stop(proc)
    assert proc.returncode == 0, out
    assert "stopped." in out
    assert "Traceback" not in out

    proc, second = start_up(workdir, port)
    try:
        assert second == {}  # credentials are printed on the first start only
    finally:
        stop(proc)


def test_ctrl_c_ends_open_event_streams_instead_of_waiting_for_them(
    workdir: Path, examples_dir: Path
) -> None:
    port = free_port()
    proc, first = start_up(workdir, port, "--examples", str(examples_dir))
    base = f"http://127.0.0.1:{port}"
    key = {"Authorization": f"Bearer {first['API key']}"}
    following = threading.Event()
    received: list[bytes] = []
    try:
        with httpx.Client(base_url=base, timeout=10) as http:
            for _ in range(300):  # a demo run that waits for a person: its stream stays open
                runs = http.get(
                    f"/api/v1/workspaces/{first['workspace']}/runs", headers=key
                ).json()["runs"]
                waiting = [r["id"] for r in runs if r["status"] == "WAITING"]
                if waiting:
                    break
                time.sleep(0.05)
        assert waiting

        def follow() -> None:
            url = f"{base}/api/v1/runs/{waiting[0]}/events"
            with httpx.stream("GET", url, headers=key, timeout=30) as stream:
                following.set()
                received.extend(stream.iter_bytes())  # returns when the server ends it

        reader = threading.Thread(target=follow, daemon=True)
        reader.start()
        assert following.wait(10)
        socket_url = f"ws://127.0.0.1:{port}/api/v1/runs/{waiting[0]}/ws"
        with connect(socket_url, additional_headers=key) as websocket:
            websocket.recv(timeout=10)  # replaying: it is open
            proc.send_signal(signal.SIGINT)
            with pytest.raises(ConnectionClosed) as closed:
                _read_until_closed(websocket)
        out = proc.communicate(timeout=30)[0]
        reader.join(timeout=10)
    finally:
        _kill_if_running(proc)
    _assert_stopped_cleanly(proc, out)
    assert "graceful shutdown exceeded" not in out  # ended by the server, not cut off at 10 s
    assert not reader.is_alive()
    assert b"event: run.waiting" in b"".join(received)  # the stream had its replay, then ended
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1012  # "service restart": come back, the run goes on


def _kill_if_running(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=10)


def _assert_stopped_cleanly(proc: subprocess.Popen[str], out: str) -> None:
    assert proc.returncode == 0, out
    assert "stopped." in out
    assert "Traceback" not in out


def _read_until_closed(websocket: ClientConnection) -> None:
    while True:
        websocket.recv(timeout=30)


def test_a_second_ctrl_c_stops_at_once_and_the_app_still_shuts_down(workdir: Path) -> None:
    port = free_port()
    proc, _ = start_up(workdir, port)
    try:
        # A request whose body never finishes: the first Ctrl-C waits for it (up to 10 s).
        hanging = socket.create_connection(("127.0.0.1", port))
        hanging.sendall(
            b"POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
        )
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        time.sleep(1.0)
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=30)[0]
        hanging.close()
    finally:
        _kill_if_running(proc)
    _assert_stopped_cleanly(proc, out)
    # The app's own shutdown still ran: its worker reported that it stopped.
    db = sqlite3.connect(workdir / ".agentmill" / "agentmill.db")
    try:
        stopped = db.execute("SELECT stopped_at FROM workers WHERE name = 'embedded'").fetchall()
    finally:
        db.close()
    assert stopped
    assert all(at is not None for (at,) in stopped)


def test_up_refuses_the_old_built_in_secret_beyond_loopback(workdir: Path) -> None:
    # There is no built-in key any more; the old one is refused everywhere (tests/security).
    env = {**os.environ, "AGENTMILL_SECRET_KEY": "agentmill-insecure-development-secret"}
    result = subprocess.run(
        [*CLI, "up", "--host", "0.0.0.0", "--port", str(free_port())],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "AGENTMILL_SECRET_KEY is refused: it is the development key" in result.stderr
    assert sys.executable  # the command ran through the same interpreter


def test_up_with_examples_loads_them_and_runs_each(workdir: Path, examples_dir: Path) -> None:
    port = free_port()
    proc, first = start_up(workdir, port, "--examples", str(examples_dir))
    try:
        # The banner says which demo runs wait for a person, and how to answer each.
        runs = f"http://127.0.0.1:{port}/api/v1/runs/<run id>/steps"
        assert f"reviewed-announcement: POST {runs}/review/approve" in first["waiting"]
        assert f"ticket-triage: POST {runs}/triage/respond" in first["waiting"]
        key = {"Authorization": f"Bearer {first['API key']}"}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            names = {
                w["name"]
                for w in http.get(
                    f"/api/v1/workspaces/{first['workspace']}/workflows", headers=key
                ).json()
            }
            assert names == {
                "research-brief",
                "plan-and-execute",
                "reviewed-announcement",
                "digest",
                "supervised-brief",
                "ticket-triage",
            }
            for _ in range(300):
                runs = http.get(
                    f"/api/v1/workspaces/{first['workspace']}/runs", headers=key
                ).json()["runs"]
                statuses = sorted(r["status"] for r in runs)
                if statuses == ["COMPLETED"] * 4 + ["WAITING"] * 2:
                    break
                time.sleep(0.05)
            # The approval and the triage form wait for a person; the others complete.
            assert statuses == ["COMPLETED"] * 4 + ["WAITING"] * 2
    finally:
        stop(proc)


def test_the_client_and_remote_commands_drive_a_server(workdir: Path, examples_dir: Path) -> None:
    import asyncio
    import json

    from agentmill.client import ApiError, AsyncClient, Client

    port = free_port()
    proc, first = start_up(workdir, port)
    server = f"http://127.0.0.1:{port}"
    env = {**os.environ, "AGENTMILL_SERVER": server, "AGENTMILL_API_KEY": first["API key"]}
    try:
        pushed = subprocess.run(
            [*CLI, "workflows", "push", str(examples_dir / "approval.yaml")],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert pushed.returncode == 0, pushed.stderr
        assert pushed.stdout.startswith("reviewed-announcement v1 · wf_")
        again = subprocess.run(
            [*CLI, "workflows", "push", str(examples_dir / "approval.yaml")],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert "v1" in again.stdout  # an identical file is the same version

        with Client(server, api_key=first["API key"]) as client:
            workflow = client.workflows(first["workspace"])[0]
            run = client.start_run(workflow["id"])
            assert client.wait(run["id"], timeout=20)["status"] == "WAITING"
            client.decide(run["id"], "review", approved=True, comment="ok")
            assert client.wait(run["id"], timeout=20)["outputs"]["result"] == "published"
            types = [e["type"] for e in client.events(run["id"])]
            assert types[0] == "run.created"
            assert types[-1] == "run.completed"
            with pytest.raises(ApiError) as caught:
                client.run("run_doesnotexist")
            assert (caught.value.status, caught.value.code) == (404, "not_found")

        async def use_async() -> str:
            async with AsyncClient(server, api_key=first["API key"]) as client:
                started = await client.start_run(workflow["id"])
                cancelled = await client.cancel(started["id"])
                return str(cancelled["status"])

        assert asyncio.run(use_async()) == "CANCELLED"

        listed = subprocess.run(
            [*CLI, "runs", "list"], cwd=workdir, env=env, capture_output=True, text=True, timeout=30
        )
        assert listed.returncode == 0, listed.stderr
        assert run["id"] in listed.stdout
        shown = subprocess.run(
            [*CLI, "runs", "show", run["id"], "--json"],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert json.loads(shown.stdout)["status"] == "COMPLETED"
        followed = subprocess.run(
            [*CLI, "runs", "logs", run["id"]],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert "run.completed" in followed.stdout
        missing = subprocess.run(
            [*CLI, "runs", "show", "run_nope"],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert missing.returncode == 1
        assert "run 'run_nope' not found" in missing.stderr
    finally:
        stop(proc)


@pytest.mark.slow
def test_a_server_killed_mid_run_finishes_it_after_a_restart(workdir: Path) -> None:
    from tests.cli.test_run import CRASH_FLOW

    port = free_port()
    proc, first = start_up(workdir, port)
    key = {"Authorization": f"Bearer {first['API key']}"}
    base = f"http://127.0.0.1:{port}/api/v1"
    with httpx.Client(base_url=base, headers=key, timeout=10) as http:
        workflow = http.post(
            f"/workspaces/{first['workspace']}/workflows",
            content=CRASH_FLOW,
            headers={"Content-Type": "application/yaml"},
        ).json()
        run_id = http.post(f"/workflows/{workflow['id']}/runs", json={}).json()["id"]
        for _ in range(200):  # wait until s2 has succeeded
            steps = {s["key"]: s["status"] for s in http.get(f"/runs/{run_id}/steps").json()}
            if steps.get("s2") == "SUCCEEDED":
                break
            time.sleep(0.02)
        done_before = {k for k, v in steps.items() if v == "SUCCEEDED"}
    proc.kill()  # SIGKILL: no cleanup at all
    proc.wait(timeout=10)
    assert proc.stdout is not None
    proc.stdout.close()

    proc, again = start_up(workdir, port)
    try:
        assert again == {}
        with httpx.Client(base_url=base, headers=key, timeout=10) as http:
            for _ in range(300):
                run = http.get(f"/runs/{run_id}").json()
                if run["status"] == "COMPLETED":
                    break
                time.sleep(0.05)
            assert run["status"] == "COMPLETED"
            with http.stream("GET", f"/runs/{run_id}/events") as response:
                events = [
                    json.loads(line[6:])
                    for line in response.iter_lines()
                    if line.startswith("data: ")
                ]
    finally:
        stop(proc)
    started = [e["step"] for e in events if e["type"] == "step.started"]
    assert {"s1", "s2"} <= done_before
    for key_ in done_before:
        assert started.count(key_) == 1, key_  # nothing that had succeeded ran again
    assert [e["step"] for e in events if e["type"] == "step.succeeded"].count("s5") == 1
