"""Snapshot storage that dies with the harness: anonymous memory files (memfd), never a file on disk.

A scratch file is named by a path every process of ours can open, `/proc/<harness pid>/fd/<n>`: the harness's
readers open it like any file, and gdb (root, or our own uid) writes its gcore there. Closing the descriptor
frees the memory; so does the harness's death, however it dies.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

_SCRATCH = re.compile(r"/proc/(\d+)/fd/(\d+)")


def create(name: str) -> Path:
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    os.fchmod(fd, 0o600)    # reachable only through our /proc/PID/fd anyway; private like any snapshot file
    return Path(f"/proc/{os.getpid()}/fd/{fd}")


def is_scratch(path: Path) -> bool:
    match = _SCRATCH.fullmatch(str(path))
    return bool(match) and int(match[1]) == os.getpid()


def adopt(path: Path) -> Path:
    """Move a file on disk (a kernel core) into scratch: open it, unlink it at once, keep only the descriptor."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    os.unlink(path)
    return Path(f"/proc/{os.getpid()}/fd/{fd}")


def discard(path: Path) -> None:
    """Free a scratch file, or delete a file on disk; anything else under /proc (a process's memory a streamed
    snapshot was read from) is no file of ours and is left alone."""
    if is_scratch(path):
        try:
            os.close(int(_SCRATCH.fullmatch(str(path))[2]))
        except OSError:
            pass
    elif not Path(path).is_relative_to("/proc"):
        Path(path).unlink(missing_ok=True)
