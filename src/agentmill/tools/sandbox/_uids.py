"""Host uids for sandboxed runs when the server runs as root.

Why not just run as root: inside bwrap the code is uid 65534, but that uid maps back to the host
uid that started bwrap, and the kernel never enforces RLIMIT_NPROC for host root, so a fork bomb
would only stop at the machine's pid limit. Why not one shared uid such as ``nobody``: the process
count behind RLIMIT_NPROC is per host uid, so concurrent runs (and anything else running as
nobody) would share one budget and a fork bomb in one run would starve the others.

So each run leases its own uid from a range nothing else uses, guarded by ``flock`` on one lock
file per uid (released by the kernel if the holder dies), and every process left with that uid
is killed when the lease ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import signal
import stat
from collections.abc import AsyncIterator
from pathlib import Path

from agentmill.tools.sandbox._process import HostUser

# Above systemd-nspawn's container range (524288–1879048191), below 2**31 and systemd's
# dynamic container range, so no login, service or container uid collides with it.
DEFAULT_UID_BASE = 1_900_000_000
_RETRY_SECONDS = 0.05


class UidPool:
    """``size`` host uids from ``base``; ``lease()`` holds one exclusively for a run."""

    def __init__(self, *, base: int, size: int, lock_dir: Path) -> None:
        self.base = base
        self.size = size
        self.lock_dir = lock_dir
        self._next = 0

    def prepare(self) -> None:
        """Create the lock directory, refusing one that someone else could have planted."""
        with contextlib.suppress(FileExistsError):
            os.mkdir(self.lock_dir, 0o700)
        info = os.lstat(self.lock_dir)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o022:
            raise PermissionError(
                f"uid lock directory {str(self.lock_dir)!r} must be a directory owned by uid "
                f"{os.geteuid()} and not writable by others"
            )

    @contextlib.asynccontextmanager
    async def lease(self) -> AsyncIterator[HostUser]:
        """Hold a free uid for the duration of the block (waiting while all are in use)."""
        while True:
            leased = self._try_lock()
            if leased is not None:
                break
            await asyncio.sleep(_RETRY_SECONDS)
        uid, fd = leased
        try:
            yield HostUser(uid=uid, gid=uid)
        finally:
            os.close(fd)

    def _try_lock(self) -> tuple[int, int] | None:
        for step in range(self.size):
            # rotate the starting point so parallel leases do not all contend for the first uid
            slot = (self._next + step) % self.size
            uid = self.base + slot
            fd = os.open(
                self.lock_dir / f"{uid}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
            )
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    continue
                raise
            self._next = slot + 1
            return uid, fd
        return None


def can_lease_uids() -> bool:
    """Whether we are root in the initial user namespace: able to become any uid, and the one
    identity RLIMIT_NPROC is never enforced for. (Root in a container's user namespace is an
    ordinary host uid: the limit applies, and unmapped uids cannot be used.)"""
    if os.geteuid() != 0:
        return False
    try:
        with open("/proc/self/uid_map") as f:
            return f.read().split() == ["0", "0", "4294967295"]
    except OSError:
        return False


def count_tasks(uid: int) -> int:
    """Processes and threads owned by ``uid`` on this host (what RLIMIT_NPROC counts)."""
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid == uid:
                total += len(os.listdir(f"/proc/{entry.name}/task"))
        except OSError:
            continue  # exited while we looked
    return total


def live_processes(uid: int) -> list[int]:
    """Pids of processes owned by ``uid`` that still run (zombies wait for the host's init to
    reap them; they hold no memory, files or CPU)."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid != uid:
                continue
            with open(f"/proc/{entry.name}/stat") as f:
                state = f.read().rpartition(")")[2].split()[0]
        except (OSError, IndexError):
            continue
        if state not in ("Z", "X"):
            found.append(int(entry.name))
    return found


def kill_all(uid: int) -> int:
    """SIGKILL every live process owned by ``uid``; returns how many were signalled.

    Each pid is pinned with a pidfd before its owner is checked, so a pid that was reused by
    someone else's process between the scan and the signal is never hit.
    """
    killed = 0
    for pid in live_processes(uid):
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            continue  # already gone
        try:
            if os.stat(f"/proc/{pid}").st_uid == uid:
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                killed += 1
        except OSError:
            continue
        finally:
            os.close(pidfd)
    return killed
