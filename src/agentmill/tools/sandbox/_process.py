"""Run one command with a wall-clock limit and capped output, and kill all of it when it is over.

stdout and stderr are our own pipes read by a protocol that keeps the first N bytes and discards
the rest, rather than asyncio's subprocess pipes: those make ``Process.wait()`` wait for the
pipes to close, so a process that escaped the kill while holding a pipe (possible in rlimit-only
mode) would hang the call forever, and a stream nobody reads stops being read at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# After a kill, how long to wait for the pipes to reach end of file before closing them anyway.
_DRAIN_SECONDS = 2.0
# The gate: argv[1] is its read end; the command waits there until the parent has put it in its
# cgroup (so not one of its processes starts outside), then drops to the host user (argv[2],
# "-" for none) and becomes the real command. It starts as the server's uid, because a leased
# uid may not be able to run the server's interpreter (say, under /root). Python rather than
# sh: dash cannot name an fd above 9. Python's start-up adds LC_CTYPE to a C locale's
# environment, which the command must not inherit.
_GATE = """\
import os, sys
fd, user, keep_ctype, argv = int(sys.argv[1]), sys.argv[2], sys.argv[3] == "1", sys.argv[4:]
if os.read(fd, 3) != b"go\\n":
    sys.exit(125)
os.close(fd)
env = dict(os.environ)
if not keep_ctype:
    env.pop("LC_CTYPE", None)
if user != "-":
    uid = int(user)
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
os.execve(argv[0], argv, env)
"""


@dataclass(frozen=True, kw_only=True)
class Outcome:
    """How a command ended, from the parent's side."""

    returncode: int
    stdout: bytes
    stderr: bytes
    timed_out: bool
    truncated: bool
    over_memory: bool = False
    """Killed because the call as a whole held more memory than its limit."""


@dataclass(frozen=True, kw_only=True)
class HostUser:
    """The unprivileged host identity a child is started as (only possible when we are root)."""

    uid: int
    gid: int


class _Capture(asyncio.Protocol):
    """Keeps the first ``limit`` bytes of a pipe; sets ``overflow`` when more arrive."""

    def __init__(self, limit: int, overflow: asyncio.Event) -> None:
        self.data = bytearray()
        self.limit = limit
        self.overflow = overflow
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        room = self.limit - len(self.data)
        if len(data) > room:
            self.overflow.set()
        if room > 0:
            self.data += data[:room]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


async def run_capped(
    argv: Sequence[str],
    *,
    stdin: int,
    pass_fds: Sequence[int] = (),
    env: Mapping[str, str],
    cwd: str | None = None,
    user: HostUser | None = None,
    wall_seconds: float,
    output_bytes: int,
    enroll: Callable[[int], None] | None = None,
    watch: Callable[[int], Awaitable[None]] | None = None,
) -> Outcome:
    """Run ``argv`` in a new session; kill its process group after ``wall_seconds``, on too
    much output, or when ``watch(pid)`` returns (the call is over its memory limit).

    At most ``output_bytes`` of each of stdout and stderr are kept; one byte more kills the
    command and marks the outcome truncated. With ``enroll``, the command is held at a gate
    until ``enroll(pid)`` (which puts it in a cgroup) returns; if it raises, the command is
    killed before it ran and the exception propagates. The gate is a few lines of this process's
    own interpreter, which switches to ``user`` itself once enrolled.
    """
    loop = asyncio.get_running_loop()
    overflow = asyncio.Event()
    captures = [_Capture(output_bytes, overflow), _Capture(output_bytes, overflow)]
    transports: list[asyncio.BaseTransport] = []
    kwargs: dict[str, Any] = {}
    gate: tuple[int, int] | None = None
    if enroll is not None:
        gate = os.pipe2(os.O_CLOEXEC)
        assert user is None or user.uid == user.gid  # the gate takes one id for both
        who = "-" if user is None else str(user.uid)
        keep_ctype = "1" if "LC_CTYPE" in env else "0"
        argv = [sys.executable, "-I", "-S", "-c", _GATE, str(gate[0]), who, keep_ctype, *argv]
        pass_fds = (*pass_fds, gate[0])
    elif user is not None:
        kwargs.update(user=user.uid, group=user.gid, extra_groups=[])
    try:
        writers = []
        for capture in captures:
            read_end, write_end = os.pipe2(os.O_CLOEXEC)
            writers.append(write_end)
            transport, _ = await loop.connect_read_pipe(
                _factory(capture), os.fdopen(read_end, "rb", buffering=0)
            )
            transports.append(transport)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=stdin,
                stdout=writers[0],
                stderr=writers[1],
                pass_fds=tuple(pass_fds),
                env=dict(env),
                cwd=cwd,
                start_new_session=True,
                **kwargs,
            )
        finally:
            # only the child keeps the write ends, so end of file means every writer is gone
            for write_end in writers:
                os.close(write_end)
            if gate is not None:
                os.close(gate[0])
        if gate is not None and enroll is not None:
            try:
                enroll(proc.pid)
            except BaseException:
                _kill_group(proc.pid)
                await proc.wait()
                raise
            os.write(gate[1], b"go\n")
            os.close(gate[1])
            gate = None
        watching = None if watch is None else asyncio.ensure_future(watch(proc.pid))
        timed_out, over_memory = await _supervise(proc, captures, overflow, wall_seconds, watching)
    finally:
        if gate is not None:
            os.close(gate[1])
        for opened in transports:
            opened.close()
    assert proc.returncode is not None
    return Outcome(
        returncode=proc.returncode,
        stdout=bytes(captures[0].data),
        stderr=bytes(captures[1].data),
        timed_out=timed_out,
        truncated=overflow.is_set(),
        over_memory=over_memory,
    )


async def _supervise(
    proc: asyncio.subprocess.Process,
    captures: list[_Capture],
    overflow: asyncio.Event,
    wall_seconds: float,
    watching: asyncio.Future[None] | None,
) -> tuple[bool, bool]:
    """Wait for exit, too much output, the memory watch or the wall clock; returns whether the
    clock ran out and whether the memory watch fired.

    The run ends when the command exits; output still in the pipes is collected for at most
    ``_DRAIN_SECONDS`` (a leftover process holding a pipe must not extend the run). Leftovers
    are the caller's to end: bwrap's exit ends its pid namespace, and a leased uid is swept.
    The group is only killed while its leader is unreaped, as a reaped leader's pid (and so
    the group id) may already belong to someone else.
    """
    exited = asyncio.ensure_future(proc.wait())
    overflowed = asyncio.ensure_future(overflow.wait())
    drained = asyncio.gather(*(c.closed for c in captures))
    watched: set[asyncio.Future[Any]] = {exited, overflowed}
    if watching is not None:
        watched.add(watching)
    try:
        await asyncio.wait(watched, timeout=wall_seconds, return_when=asyncio.FIRST_COMPLETED)
        over_memory = (
            watching is not None
            and watching.done()
            and watching.exception() is None
            and not exited.done()
        )
        timed_out = not exited.done() and not overflow.is_set() and not over_memory
        if not exited.done():
            _kill_group(proc.pid)
        await exited
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(drained), _DRAIN_SECONDS)
        return timed_out, over_memory
    finally:
        overflowed.cancel()
        if watching is not None:
            watching.cancel()
        if proc.returncode is None:  # cancelled from outside: leave nothing running
            _kill_group(proc.pid)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        exited.cancel()
        drained.cancel()


def _factory(capture: _Capture) -> Callable[[], _Capture]:
    return lambda: capture


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
