"""Files the ``python`` tool's code leaves in ``artifacts/`` become the run's artifacts.

The scratch folder lives only inside the sandbox (a tmpfs in its own mount namespace), so the
files are collected from inside, after the code ends: a shell runs the code, then a small
collector (a second interpreter, same sandbox, same limits) that writes the regular files
under ``artifacts/`` (symlinks and special files skipped, symlinked folders not entered) as a
tar stream to an in-memory file the parent passed in. The parent reads at most
``limit`` bytes of it and trusts nothing in it: each member must be a regular file with a
valid artifact name, and there are at most ``MAX_FILES`` of them. The code could write to
that file itself; it only ever becomes artifacts of its own run, checked the same way.
"""

from __future__ import annotations

import io
import os
import tarfile
from dataclasses import dataclass

from agentmill.artifacts.names import check_name
from agentmill.errors import InvalidArtifact

FOLDER = "artifacts"  # relative to the code's working directory (/scratch in the sandbox)
MAX_FILES = 100
# The shell the wrapper needs counts against RLIMIT_NPROC like any process of the run.
EXTRA_PROCESSES = 1

_COLLECTOR = """\
import os, stat, sys, tarfile
out = os.fdopen(int(sys.argv[1]), "wb")
try:
    top = os.lstat("artifacts")
except OSError:
    sys.exit(0)
if stat.S_ISDIR(top.st_mode):
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for base, dirs, files in os.walk("artifacts"):
            dirs.sort()
            for name in sorted(files):
                path = os.path.join(base, name)
                if stat.S_ISREG(os.lstat(path).st_mode):
                    tar.add(path, arcname=os.path.relpath(path, "artifacts"), recursive=False)
"""

# $1 the interpreter, $2 the collector's fd, $3 the collector; then the code's own flags and
# script. The code's exit status (128 + N for a signal, like bwrap's) is the sandbox's.
_SCRIPT = (
    'py="$1"; fd="$2"; collect="$3"; shift 3; "$py" "$@"; status=$?; '
    '"$py" -E -s -B -X utf8 -c "$collect" "$fd" </dev/null >/dev/null 2>&1; exit $status'
)


def collecting(command: list[str], fd: int) -> list[str]:
    """``command`` (interpreter, flags, script) run by a shell that collects afterwards."""
    interpreter, *rest = command
    return ["/bin/sh", "-c", _SCRIPT, "sh", interpreter, str(fd), _COLLECTOR, *rest]


@dataclass(frozen=True, kw_only=True)
class Collected:
    """The files found, and what was refused (name and why)."""

    files: list[tuple[str, bytes]]
    problems: list[str]


def read_collected(fd: int, limit: int) -> Collected:
    """The files in the tar stream written to ``fd`` (an in-memory file), checked."""
    size = os.fstat(fd).st_size
    if size == 0:
        return Collected(files=[], problems=[])
    if size > limit:
        return Collected(
            files=[], problems=[f"{FOLDER}/ holds more than {limit} bytes; nothing was saved"]
        )
    data = os.pread(fd, size, 0)
    files: list[tuple[str, bytes]] = []
    problems: list[str] = []
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for member in tar:
                if not member.isreg():
                    continue
                if len(files) == MAX_FILES:
                    problems.append(f"more than {MAX_FILES} files in {FOLDER}/; the rest skipped")
                    break
                try:
                    name = check_name(member.name)
                except InvalidArtifact as exc:
                    problems.append(str(exc))
                    continue
                extracted = tar.extractfile(member)
                if extracted is not None:
                    files.append((name, extracted.read()))
    except tarfile.TarError as exc:
        problems.append(f"the files in {FOLDER}/ could not be collected: {exc}")
    return Collected(files=files, problems=problems)
