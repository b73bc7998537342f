"""One cgroup per ``python`` call, so that its memory and process count are capped as a whole.

RLIMIT_AS caps each process; a call that forks N children could hold N times the limit. A
cgroup caps the sum, whatever the number of processes (the kernel's OOM killer ends a process
of the call when the call is over its limit, and the supervisor then ends the whole call).

Where one can be had: cgroup v2 when its memory and pids controllers are delegated to our own
cgroup (its ``cgroup.subtree_control`` has them, or we may enable them there), else cgroup v1's
memory (and pids) hierarchies when we may create cgroups below our own. The detection creates
and removes a probe cgroup, so it proves we can; when none can be had, ``find_parent`` says why
and the caller falls back to watching the call's processes (see ``_memory``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
from dataclasses import dataclass
from pathlib import Path

_PREFIX = "agentmill-sandbox"
_counter = itertools.count()
_REMOVE_POLLS = 200
_REMOVE_INTERVAL = 0.01


class CgroupError(Exception):
    """A call's cgroup could not be created, joined or removed."""


@dataclass(frozen=True, kw_only=True)
class CgroupParent:
    """Where call cgroups are created: one v2 directory, or v1 memory (and pids) directories."""

    version: int
    memory_dir: Path
    pids_dir: Path | None  # v1 only; v2 has both controllers in ``memory_dir``

    def describe(self) -> str:
        """For the log and /health: which cgroups cap a call."""
        if self.version == 2:
            return f"cgroup v2 below {str(self.memory_dir)!r} (memory.max, pids.max)"
        pids = f", pids below {str(self.pids_dir)!r}" if self.pids_dir else ", no pids controller"
        return f"cgroup v1: memory below {str(self.memory_dir)!r}{pids}"

    def create(self, *, memory_bytes: int, max_tasks: int) -> CallCgroup:
        """A new, empty cgroup with the call's limits (removed again if a limit cannot be set)."""
        name = f"{_PREFIX}-{os.getpid()}-{next(_counter)}"
        dirs = [self.memory_dir / name]
        if self.pids_dir is not None:
            dirs.append(self.pids_dir / name)
        created: list[Path] = []
        try:
            for path in dirs:
                path.mkdir(mode=0o755)
                created.append(path)
            memory, pids = dirs[0], dirs[-1]
            if self.version == 2:
                _write(memory / "memory.max", str(memory_bytes))
                # swap would let the call hold more than the limit; one OOM ends the whole call
                _write_if_present(memory / "memory.swap.max", "0")
                _write_if_present(memory / "memory.oom.group", "1")
                _write(pids / "pids.max", str(max_tasks))
            else:
                _write(memory / "memory.limit_in_bytes", str(memory_bytes))
                # memsw is memory plus swap; absent when swap accounting is off
                _write_if_present(memory / "memory.memsw.limit_in_bytes", str(memory_bytes))
                if self.pids_dir is not None:
                    _write(pids / "pids.max", str(max_tasks))
        except OSError as exc:
            for path in reversed(created):
                with contextlib.suppress(OSError):
                    path.rmdir()
            raise CgroupError(f"cannot create the call's cgroup {str(dirs[0])!r}: {exc}") from exc
        return CallCgroup(version=self.version, dirs=dirs)


@dataclass(frozen=True, kw_only=True)
class CallCgroup:
    """One call's cgroup (two directories in v1)."""

    version: int
    dirs: list[Path]

    def enroll(self, pid: int) -> None:
        """Move ``pid`` (not yet running the code) into the cgroup."""
        try:
            for path in self.dirs:
                _write(path / "cgroup.procs", str(pid))
        except OSError as exc:
            raise CgroupError(f"cannot move pid {pid} into {str(path)!r}: {exc}") from exc

    def oom_kills(self) -> int:
        """How many of the call's processes the kernel killed for the memory limit."""
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        try:
            text = (self.dirs[0] / name).read_text()
        except OSError:
            return 0
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def pids(self) -> list[int]:
        """The processes in the cgroup."""
        try:
            text = (self.dirs[0] / "cgroup.procs").read_text()
        except OSError:
            return []
        return [int(pid) for pid in text.split()]

    def kill(self) -> None:
        """SIGKILL everything in the cgroup (``cgroup.kill`` where the kernel has it)."""
        kill_file = self.dirs[0] / "cgroup.kill"
        if self.version == 2 and kill_file.exists():
            with contextlib.suppress(OSError):
                _write(kill_file, "1")
            return
        # v1: the processes cannot leave the cgroup on their own, so a pid read here is ours
        # until it is reaped; a loop catches what forked meanwhile
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    async def remove(self) -> None:
        """Kill what is left, wait until the cgroup is empty, and remove it."""
        for _ in range(_REMOVE_POLLS):
            self.kill()
            if not self.pids():
                break
            await asyncio.sleep(_REMOVE_INTERVAL)
        for path in reversed(self.dirs):
            for _ in range(_REMOVE_POLLS):
                try:
                    path.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:  # EBUSY while the last process is being torn down
                    await asyncio.sleep(_REMOVE_INTERVAL)


def find_parent(configured: Path | None = None) -> tuple[CgroupParent | None, str]:
    """Where call cgroups can be created here, or None; and what was found (for the log).

    ``configured`` is a cgroup v2 directory an administrator prepared (no processes of its own,
    memory and pids in its ``cgroup.subtree_control``, or the right to enable them); then only
    it is tried. Otherwise our own cgroup is (enabling the controllers there is refused while
    it holds processes, unless it is the root), then cgroup v1.
    """
    if configured is not None:
        parent = _v2_parent(configured)
        if isinstance(parent, CgroupParent):
            return parent, parent.describe()
        return None, f"cgroup v2 {str(configured)!r}: {parent}"
    mounts = _cgroup_mounts()
    own = _own_cgroups()
    reasons: list[str] = []
    v2_mount = mounts.get("cgroup2")
    if v2_mount is not None and "" in own:
        parent = _v2_parent(v2_mount / own[""].lstrip("/"))
        if isinstance(parent, CgroupParent):
            return parent, parent.describe()
        reasons.append(f"cgroup v2: {parent}")
    else:
        reasons.append("cgroup v2: not mounted")
    memory = mounts.get("memory")
    if memory is not None and "memory" in own:
        pids = mounts.get("pids")
        candidate = CgroupParent(
            version=1,
            memory_dir=memory / own["memory"].lstrip("/"),
            pids_dir=pids / own["pids"].lstrip("/") if pids and "pids" in own else None,
        )
        problem = _try(candidate)
        if problem is None:
            return candidate, candidate.describe()
        reasons.append(f"cgroup v1: {problem}")
    else:
        reasons.append("cgroup v1: no memory controller")
    return None, "; ".join(reasons)


def _v2_parent(own: Path) -> CgroupParent | str:
    try:
        available = (own / "cgroup.controllers").read_text().split()
    except OSError as exc:
        return f"cannot read {str(own)!r}: {exc.strerror}"
    missing = [c for c in ("memory", "pids") if c not in available]
    if missing:
        return f"controllers {missing!r} not available in {str(own)!r}"
    control = own / "cgroup.subtree_control"
    try:
        enabled = control.read_text().split()
        if not {"memory", "pids"} <= set(enabled):
            # refused (EBUSY) when our cgroup holds processes and is not the root
            _write(control, "+memory +pids")
    except OSError as exc:
        return f"cannot enable memory and pids below {str(own)!r}: {exc.strerror}"
    candidate = CgroupParent(version=2, memory_dir=own, pids_dir=None)
    problem = _try(candidate)
    return candidate if problem is None else problem


def _try(parent: CgroupParent) -> str | None:
    try:
        probe = parent.create(memory_bytes=64 << 20, max_tasks=8)
    except CgroupError as exc:
        return str(exc.__cause__ or exc)
    for path in reversed(probe.dirs):  # empty: nothing ever joined it
        with contextlib.suppress(OSError):
            path.rmdir()
    return None


def _cgroup_mounts() -> dict[str, Path]:
    """``cgroup2`` and each v1 controller (``memory``, ``pids``) to its mount point."""
    found: dict[str, Path] = {}
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        fields, _, tail = line.partition(" - ")
        parts, rest = fields.split(), tail.split()
        if len(parts) < 5 or len(rest) < 3:
            continue
        mount_point = Path(parts[4].replace("\\040", " "))
        if rest[0] == "cgroup2":
            found.setdefault("cgroup2", mount_point)
        elif rest[0] == "cgroup":
            for option in rest[2].split(","):
                if option in ("memory", "pids"):
                    found.setdefault(option, mount_point)
    return found


def _own_cgroups() -> dict[str, str]:
    """Our cgroup per controller (``""`` for v2), from /proc/self/cgroup."""
    own: dict[str, str] = {}
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return own
    for line in lines:
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            own[controller] = path
    return own


def _write(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _write_if_present(path: Path, value: str) -> None:
    if path.exists():
        _write(path, value)
