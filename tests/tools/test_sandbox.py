"""The ``python`` tool against real bubblewrap: normal use, escape attempts, limits, fail-closed.

Every escape attempt runs real code in a real sandbox and asserts what it could not do. These
tests need unprivileged user namespaces (they fail, not skip, without them); the fail-closed
tests make a place where the kernel refuses namespaces themselves, with ``unshare``.
"""

from __future__ import annotations

import ast
import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from agentmill.tools.base import ToolContext, ToolResult, ToolUnavailable
from agentmill.tools.sandbox import PythonTool, SandboxLimits, SandboxState
from agentmill.tools.sandbox._seccomp import SeccompUnsupported, no_new_userns_filter
from agentmill.tools.sandbox._uids import DEFAULT_UID_BASE, can_lease_uids, live_processes

LIMITS = SandboxLimits(
    timeout_seconds=20,
    cpu_seconds=2,
    memory_bytes=512 << 20,
    max_processes=16,
    scratch_bytes=8 << 20,
    output_bytes=64 << 10,
)
CONTEXT = ToolContext(workspace_id="ws", run_id="run", step_key="step")
UID_COUNT = 16
# A uid range of this test process's own, so that sandboxes of another test run on the machine
# are never mistaken for leftovers of ours.
UID_BASE = DEFAULT_UID_BASE + 100_000 + (os.getpid() % 10_000) * UID_COUNT


MakeTool = Callable[..., PythonTool]


@pytest.fixture(scope="module")
def make_tool(tmp_path_factory: pytest.TempPathFactory) -> MakeTool:
    """Tools that lease from this test run's uids, with their lock files in a temporary place."""
    lock_dir = tmp_path_factory.mktemp("uid-locks") / "locks"

    def make(**options: Any) -> PythonTool:
        return PythonTool(uid_base=UID_BASE, uid_count=UID_COUNT, uid_lock_dir=lock_dir, **options)

    return make


@pytest.fixture(scope="module")
async def tool(make_tool: MakeTool) -> PythonTool:
    tool = make_tool(limits=LIMITS)
    status = await tool.sandbox_status()
    assert status.state is SandboxState.AVAILABLE, status.reason
    return tool


async def run(tool: PythonTool, code: str, stdin: str | None = None) -> ToolResult:
    arguments: dict[str, Any] = {"code": textwrap.dedent(code)}
    if stdin is not None:
        arguments["stdin"] = stdin
    return await tool.run(arguments, CONTEXT)


def leftover_sandbox_processes() -> list[int]:
    """Host processes still running (not zombies) under one of the leased uids."""
    return [pid for uid in range(UID_BASE, UID_BASE + UID_COUNT) for pid in live_processes(uid)]


def existing(paths: list[str]) -> list[str]:
    return [path for path in paths if os.path.lexists(path)]


def processes_with_command_line(cmdline: bytes) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                    if f.read() == cmdline:
                        found.append(int(entry.name))
            except OSError:
                continue
    return found


# -- normal use -----------------------------------------------------------------------------


async def test_prints_reads_stdin_uses_scratch_and_the_standard_library(tool: PythonTool) -> None:
    result = await run(
        tool,
        """
        import json, math, os, sys
        name = sys.stdin.read().strip()
        with open("notes.txt", "w") as f:
            f.write(json.dumps({"name": name, "root": math.isqrt(144)}))
        with open("/scratch/notes.txt") as f:
            print(json.loads(f.read()))
        print(os.getcwd(), os.getuid())
        """,
        stdin="ada\n",
    )

    assert result.is_error is False
    assert result.content == {
        "exit_code": 0,
        "stdout": "{'name': 'ada', 'root': 12}\n/scratch 65534\n",
        "stderr": "",
        "timed_out": False,
        "truncated": False,
        "killed_by": None,
    }
    assert result.size == len(result.content["stdout"])


async def test_each_call_starts_with_an_empty_scratch_directory(tool: PythonTool) -> None:
    await run(tool, "open('left-behind.txt', 'w').write('x')")

    result = await run(tool, "import os; print(sorted(os.listdir('.')))")

    assert result.content["stdout"] == "['main.py']\n"


async def test_an_exception_is_an_error_with_the_traceback_tail(tool: PythonTool) -> None:
    result = await run(tool, "print('before')\nraise ValueError('no such row: 7')")

    assert result.is_error is True
    assert result.content["exit_code"] == 1
    assert result.content["stdout"] == "before\n"
    assert result.content["killed_by"] is None
    error = result.content["error"]
    assert error.startswith("exited with status 1\nTraceback (most recent call last):")
    assert error.endswith("ValueError: no such row: 7")


async def test_sys_exit_code_is_reported(tool: PythonTool) -> None:
    result = await run(tool, "import sys; sys.exit(3)")

    assert result.is_error is True
    assert result.content["exit_code"] == 3
    assert result.content["error"] == "exited with status 3"


def test_parameters_are_a_valid_json_schema() -> None:
    tool = PythonTool()

    jsonschema.Draft202012Validator.check_schema(tool.parameters)
    validator = jsonschema.Draft202012Validator(tool.parameters)
    assert validator.is_valid({"code": "print(1)", "stdin": "x"})
    assert not validator.is_valid({"stdin": "x"})
    assert not validator.is_valid({"code": "print(1)", "network": True})
    assert tool.name == "python"
    assert "no network" in tool.description


# -- escape attempts ------------------------------------------------------------------------


async def test_no_network_not_even_the_hosts_loopback(tool: PythonTool) -> None:
    accepted: list[bool] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(True)
        writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        result = await run(
            tool,
            f"""
            import socket
            for address in [("127.0.0.1", {port}), ("1.1.1.1", 53), ("8.8.8.8", 443)]:
                try:
                    socket.create_connection(address, timeout=2).close()
                    print(address, "connected")
                except OSError as exc:
                    print(address, type(exc).__name__)
            print([name for _, name in socket.if_nameindex()])
            """,
        )

    assert result.content["stdout"] == (
        f"('127.0.0.1', {port}) ConnectionRefusedError\n"
        "('1.1.1.1', 53) OSError\n"
        "('8.8.8.8', 443) OSError\n"
        "['lo']\n"
    )
    assert accepted == []


async def test_nothing_outside_scratch_is_writable(tool: PythonTool, tmp_path: Path) -> None:
    host_file = tmp_path / "host.txt"
    host_file.write_text("original")
    host_tmp_marker = f"/tmp/agentmill-sandbox-escape-{os.getpid()}"
    targets = [
        "/escape.txt",
        "/usr/escape.txt",
        "/dev/escape.txt",
        "/dev/shm/escape.txt",
        "/proc/escape.txt",
        str(host_file),
        str(Path(sys.prefix) / "escape.txt"),
        str(Path(sys.base_prefix) / "escape.txt"),
    ]
    result = await run(
        tool,
        f"""
        import os
        for path in {targets!r}:
            try:
                with open(path, "w") as f:
                    f.write("escaped")
                print(path, "WRITTEN")
            except OSError as exc:
                print(path, type(exc).__name__)
        try:
            os.mkdir("/usr/lib/escape")
            print("mkdir WRITTEN")
        except OSError as exc:
            print("mkdir", type(exc).__name__)
        # /tmp is the scratch directory, not the host's
        open({host_tmp_marker!r}, "w").write("inside")
        print(os.path.exists("/scratch/" + os.path.basename({host_tmp_marker!r})))
        """,
    )

    lines = result.content["stdout"].splitlines()
    assert result.content["exit_code"] == 0, result.content
    for line in lines[: len(targets) + 1]:
        assert "WRITTEN" not in line
        assert line.endswith(("OSError", "PermissionError", "FileNotFoundError")), line
    assert lines[-1] == "True"
    assert host_file.read_text() == "original"
    assert existing([host_tmp_marker, "/usr/escape.txt", f"{sys.prefix}/escape.txt"]) == []


async def test_scratch_is_capped(tool: PythonTool) -> None:
    result = await run(
        tool,
        """
        block = b"x" * (1 << 20)
        written = 0
        try:
            with open("big.bin", "wb") as f:
                for _ in range(64):
                    f.write(block)
                    f.flush()
                    written += 1
        except OSError as exc:
            print("stopped at", written, "MiB:", exc.strerror)
        """,
    )

    stdout = result.content["stdout"]
    assert stdout.startswith("stopped at ")
    assert stdout.endswith("MiB: No space left on device\n")
    assert int(stdout.split()[2]) < 8


async def test_server_environment_and_secrets_are_invisible(
    tool: PythonTool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "sk-test-4f1c2e9a7b"
    monkeypatch.setenv("AGENTMILL_TEST_API_KEY", secret)
    secret_file = tmp_path / "secrets.env"
    secret_file.write_text(f"API_KEY={secret}\n")
    result = await run(
        tool,
        f"""
        import glob, os
        print("env", dict(os.environ))
        for path in sorted(glob.glob("/proc/*/environ")) + sorted(glob.glob("/proc/*/cmdline")):
            try:
                print(path, open(path, "rb").read())
            except OSError as exc:
                print(path, type(exc).__name__)
        for path in [{str(secret_file)!r}, "/proc/1/root{secret_file}", "/etc/shadow",
                     "/root/.bash_history", "/work"]:
            try:
                print(path, open(path).read())
            except OSError as exc:
                print(path, type(exc).__name__)
        print(sorted(os.listdir("/proc")))
        """,
    )

    stdout = result.content["stdout"]
    assert result.content["exit_code"] == 0, result.content
    assert secret not in stdout
    assert "AGENTMILL" not in stdout
    assert "/proc/1/environ b'PATH=/usr/bin:/bin\\x00'" in stdout  # bwrap's init: nothing else
    assert f"{secret_file} FileNotFoundError" in stdout
    assert "/etc/shadow FileNotFoundError" in stdout
    # only the sandbox's own processes exist: bwrap's init (1) and the code (2)
    pids = [name for name in ast.literal_eval(stdout.splitlines()[-1]) if name.isdigit()]
    assert pids == ["1", "2"]


async def test_new_user_namespaces_are_refused_by_seccomp(tool: PythonTool) -> None:
    result = await run(
        tool,
        """
        import ctypes, errno, os
        libc = ctypes.CDLL(None, use_errno=True)
        for name, flag in [("user", 0x10000000), ("mount", 0x00020000), ("net", 0x40000000)]:
            ok = libc.unshare(flag) == 0
            print(name, "unshared" if ok else errno.errorcode[ctypes.get_errno()])
        # clone3 cannot be inspected by the filter, so it is refused outright: libc falls back
        libc.syscall(435, 0, 0)
        print("clone3", errno.errorcode[ctypes.get_errno()])
        import threading, subprocess
        t = threading.Thread(target=print, args=("thread ran",)); t.start(); t.join()
        print(subprocess.run(["/bin/echo", "subprocess ran"], capture_output=True).stdout)
        """,
    )

    assert result.content["stdout"] == (
        "user EPERM\nmount EPERM\nnet EPERM\nclone3 ENOSYS\nthread ran\nb'subprocess ran\\n'\n"
    )


# -- resource limits ------------------------------------------------------------------------


async def test_rlimits_are_set_inside(tool: PythonTool) -> None:
    result = await run(
        tool,
        """
        import resource
        for name in ["AS", "CPU", "FSIZE", "NOFILE", "CORE"]:
            print(name, resource.getrlimit(getattr(resource, "RLIMIT_" + name)))
        """,
    )

    assert result.content["stdout"] == (
        f"AS ({512 << 20}, {512 << 20})\n"
        "CPU (2, 3)\n"
        f"FSIZE ({32 << 20}, {32 << 20})\n"
        "NOFILE (128, 128)\n"
        "CORE (0, 0)\n"
    )


async def test_fork_bomb_is_contained_and_cleaned_up(tool: PythonTool, make_tool: MakeTool) -> None:
    bomb_tool = make_tool(limits=SandboxLimits(timeout_seconds=3, max_processes=16))
    bomb = run(
        bomb_tool,
        """
        import os, time
        first = os.getpid()
        forks = 0
        while True:
            try:
                os.fork()
                forks += 1
            except OSError as exc:
                if os.getpid() == first:
                    print("fork refused after", forks, "forks:", exc.strerror, flush=True)
                time.sleep(60)
        """,
    )
    # a normal run at the same time is unaffected: the process limit is per run
    normal = run(tool, "import subprocess; print(subprocess.run(['/bin/echo', 'ok']).returncode)")

    bombed, ok = await asyncio.gather(bomb, normal)

    assert ok.content["stdout"] == "ok\n0\n"
    assert bombed.is_error is True
    assert bombed.content["killed_by"] == "timeout"
    assert bombed.content["timed_out"] is True
    assert "Resource temporarily unavailable" in bombed.content["stdout"]
    assert int(bombed.content["stdout"].split()[3]) < 16
    if can_lease_uids():
        assert leftover_sandbox_processes() == []


async def test_processes_started_by_the_code_do_not_outlive_it(tool: PythonTool) -> None:
    result = await run(
        tool,
        """
        import subprocess
        # a daemon in its own session, detached from the code's process group
        p = subprocess.Popen(["/bin/sleep", "300"], start_new_session=True)
        print("started", p.pid)
        """,
    )

    assert result.content["stdout"].startswith("started ")
    assert processes_with_command_line(b"/bin/sleep\x00300\x00") == []
    if can_lease_uids():
        assert leftover_sandbox_processes() == []


async def test_allocating_4_gib_fails_inside_the_sandbox(tool: PythonTool) -> None:
    result = await run(tool, "data = bytearray(4 << 30)\nprint('allocated', len(data))")

    assert result.is_error is True
    assert result.content["exit_code"] == 1
    assert result.content["stdout"] == ""
    assert result.content["stderr"].rstrip().endswith("MemoryError")


async def test_cpu_bound_loop_is_killed_by_the_cpu_limit(make_tool: MakeTool) -> None:
    tool = make_tool(limits=SandboxLimits(cpu_seconds=1, timeout_seconds=30))

    result = await run(tool, "print('spinning', flush=True)\nwhile True:\n    pass")

    assert result.is_error is True
    assert result.content["stdout"] == "spinning\n"
    assert result.content["killed_by"] == "cpu_limit"
    assert result.content["exit_code"] == -signal.SIGXCPU
    assert result.content["timed_out"] is False
    assert result.content["error"] == "killed: used 1 s of CPU"


async def test_sleeping_loop_is_killed_by_the_wall_clock(make_tool: MakeTool) -> None:
    tool = make_tool(limits=SandboxLimits(timeout_seconds=2))

    result = await run(
        tool, "import time\nprint('waiting', flush=True)\nwhile True:\n    time.sleep(1)"
    )

    assert result.is_error is True
    assert result.content["stdout"] == "waiting\n"
    assert result.content["timed_out"] is True
    assert result.content["killed_by"] == "timeout"
    assert result.content["error"] == "killed: still running after 2 s (wall clock)"


async def test_100_mb_of_output_is_truncated_and_killed(tool: PythonTool) -> None:
    result = await run(
        tool,
        """
        import sys
        line = "x" * 1023 + "\\n"
        for _ in range(100 * 1024):
            sys.stdout.write(line)
        sys.stderr.write("finished\\n")
        """,
    )

    assert result.is_error is True
    assert result.content["truncated"] is True
    assert result.content["killed_by"] == "output_limit"
    assert result.content["timed_out"] is False
    assert result.content["stdout"] == ("x" * 1023 + "\n") * 64
    assert "finished" not in result.content["stderr"]


# -- fail closed ----------------------------------------------------------------------------

# Runs in a user namespace where /proc/sys/user/max_user_namespaces is 0, so bwrap's attempt to
# create its namespaces is refused by the kernel, exactly as on a host that disables them.
NO_NAMESPACES_SCRIPT = """
import asyncio, json, sys
from agentmill.tools.base import ToolContext, ToolUnavailable
from agentmill.tools.sandbox import PythonTool

async def main():
    report = {}
    for allow in (False, True):
        tool = PythonTool(allow_unsandboxed=allow)
        status = await tool.sandbox_status()
        try:
            result = await tool.run({"code": "import os; print(os.getcwd() != '/scratch')"},
                                    ToolContext())
            outcome = result.content
        except ToolUnavailable as exc:
            outcome = "ToolUnavailable: " + str(exc)
        report[str(allow)] = {"status": status.to_dict(), "outcome": outcome}
    print(json.dumps(report))

asyncio.run(main())
"""


@pytest.fixture(scope="module")
def no_namespaces_report() -> dict[str, Any]:
    """What the tool says and does where the kernel refuses namespaces, without and with
    ``allow_unsandboxed``."""
    return run_without_namespaces(NO_NAMESPACES_SCRIPT)


def run_without_namespaces(script: str) -> dict[str, Any]:
    shell = 'echo 0 > /proc/sys/user/max_user_namespaces && exec "$0" -c "$1"'
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        ["unshare", "--user", "--map-root-user", "sh", "-c", shell, sys.executable, script],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def test_fails_closed_when_the_kernel_refuses_namespaces(
    no_namespaces_report: dict[str, Any],
) -> None:
    refused = no_namespaces_report["False"]
    assert refused["status"]["state"] == "unavailable"
    assert "Creating new namespace failed" in refused["status"]["reason"]
    assert refused["outcome"].startswith("ToolUnavailable: the python tool is unavailable: ")
    assert "Creating new namespace failed" in refused["outcome"]


def test_rlimit_only_when_the_administrator_allows_it(
    no_namespaces_report: dict[str, Any],
) -> None:
    allowed = no_namespaces_report["True"]
    assert allowed["status"]["state"] == "rlimit-only"
    assert "Creating new namespace failed" in allowed["status"]["reason"]
    assert allowed["outcome"]["exit_code"] == 0
    assert allowed["outcome"]["stdout"] == "True\n"  # ran, but not in the sandbox's /scratch


async def test_unavailable_without_bwrap(tmp_path: Path) -> None:
    missing = str(tmp_path / "bwrap")
    tool = PythonTool(bwrap=missing)

    status = await tool.sandbox_status()

    assert status.state is SandboxState.UNAVAILABLE
    assert status.reason == f"bwrap {missing!r} is not an executable file"
    assert tool.status == status
    with pytest.raises(ToolUnavailable, match="is not an executable file"):
        await tool.run({"code": "print(1)"}, CONTEXT)


def test_seccomp_filter_is_defined_per_architecture() -> None:
    x86 = no_new_userns_filter("x86_64")
    arm = no_new_userns_filter("aarch64")

    # struct sock_filter is 8 bytes; x86_64 has one more check (the x32 ABI)
    assert len(x86) == 8 * 19
    assert len(arm) == 8 * 18
    with pytest.raises(SeccompUnsupported, match="'riscv64'"):
        no_new_userns_filter("riscv64")


@pytest.mark.skipif(not can_lease_uids(), reason="needs root in the initial user namespace")
async def test_rlimit_only_as_root_still_runs_as_a_leased_uid_and_leaves_nothing_behind(
    monkeypatch: pytest.MonkeyPatch, make_tool: MakeTool
) -> None:
    monkeypatch.setenv("AGENTMILL_TEST_API_KEY", "sk-test-rlimit-only")
    # /bin/false stands in for a bwrap that cannot create namespaces
    tool = make_tool(bwrap="/bin/false", allow_unsandboxed=True)
    status = await tool.sandbox_status()
    assert status.state is SandboxState.RLIMIT_ONLY
    assert status.reason == "a trivial sandboxed run failed: exit status 1: no output"

    result = await run(
        tool,
        """
        import os, resource, subprocess
        subprocess.Popen(["/bin/sleep", "301"], start_new_session=True)
        print(os.getuid(), os.getgid(), os.getgroups())
        print(os.path.basename(os.getcwd()).startswith("agentmill-python-"))
        print("AGENTMILL_TEST_API_KEY" in os.environ, resource.getrlimit(resource.RLIMIT_NPROC))
        """,
    )

    assert result.content["timed_out"] is False  # the detached sleep did not hold the run open
    assert result.content["killed_by"] is None
    uid, gid, groups = result.content["stdout"].splitlines()[0].split(" ", 2)
    assert UID_BASE <= int(uid) < UID_BASE + UID_COUNT
    assert gid == uid
    assert groups == "[]"
    assert result.content["stdout"].splitlines()[1:] == ["True", "False (34, 34)"]
    assert processes_with_command_line(b"/bin/sleep\x00301\x00") == []
    assert leftover_sandbox_processes() == []
