"""Snapshot methods: copy a live target's memory into a scratch file (memory, never disk: scratch.py)
described by a `Snapshot`.

Each is registered once in methods.py. kernel-core and exit need the target's lifecycle, so the runner drives
them through an Occasion; take_snapshot covers the live methods.
"""
from __future__ import annotations

import contextlib

import os
import platform
import shutil
from pathlib import Path
from typing import Callable

from ..model import Snapshot
from ..process import alive
from .methods import Occasion, live_names, method, names

LIVE_METHODS = live_names()
METHODS = names()


class SnapshotError(Exception):
    """The snapshot could not be taken (target gone, access denied, gdb failed, ...)."""


CAP_SYS_PTRACE = 19
CAP_SYS_RESOURCE = 24


def ptrace_scope() -> int:
    try:
        return int(Path("/proc/sys/kernel/yama/ptrace_scope").read_text())
    except (OSError, ValueError):
        return 0                     # no Yama: classic same-uid rules


def has_capability(bit: int) -> bool:
    """Whether the harness holds capability `bit` in its effective set."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return False
    for line in status.splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> bit & 1)
    return False


def method_unavailable(name: str) -> str | None:
    """None if this machine can take snapshots with method `name`, else why not."""
    return method(name).unavailable()


def resume(pid: int) -> None:
    """SIGCONT, if the process still exists."""
    from .procmem import resume as send_continue
    send_continue(pid)


@contextlib.contextmanager
def held_still(pid: int, members: Callable[[], list[int]] | None = None):
    """Keep process `pid` stopped (SIGSTOP, every thread) for the block, so several methods see one moment;
    live snapshots taken inside must be told `held=True`. gdb leaves a process it found stopped stopped.
    With `members` (a listing of a process tree, `pid` first), every process it lists is held too, listed again
    until no new one appears (one may fork as it is stopped); one that is gone by the time it is stopped is left
    out. Yields the processes held, `pid` first; they are resumed in reverse order, the parents last, so none
    sees a child stopped."""
    from .procmem import freeze
    held: list[int] = []
    try:
        pending = [pid]
        while pending:
            for member in pending:
                held.append(member)
                try:
                    freeze(member)
                except SnapshotError:
                    if member == pid or alive(member):
                        raise
                    held.remove(member)   # it ended (or is a zombie) between the listing and the stop
            pending = [p for p in members() if p not in held] if members else []
        yield held
    finally:
        for member in reversed(held):
            resume(member)




def dispose_snapshot(snapshot: Snapshot, keep_in: Path | None, stem: str) -> None:
    """Free the snapshot (it holds the secret), or, if `keep_in` is given, write it there as STEM.METHOD.ext:
    the file 0600 from its first byte, its folder and the folder above 0700."""
    from . import scratch
    if keep_in is None or not snapshot.path.exists():
        scratch.discard(snapshot.path)
        return
    keep_in.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(keep_in.parent, 0o700)
    kept = keep_in / f"{stem}.{snapshot.method}{method(snapshot.method).kept_suffix}"
    with open(snapshot.path, "rb") as source, open(os.open(kept, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as copy:
        shutil.copyfileobj(source, copy, 8 << 20)
    os.chmod(kept, 0o600)
    scratch.discard(snapshot.path)
    snapshot.path = kept


def take_snapshot(name: str, pid: int, *, held: bool = False) -> Snapshot:
    """Snapshot process `pid` with a live method into a scratch file (the CLI's `scan --pid`, tests).
    `held`: the caller keeps the process stopped (held_still) and resumes it itself."""
    chosen = method(name)
    if not chosen.live:
        raise ValueError(f"{name} is driven by the runner, not take_snapshot")
    if reason := chosen.unavailable():
        raise SnapshotError(f"{name} unavailable: {reason}")
    snapshot, _ = chosen.capture(Occasion(pid, held=held, keep=True), lambda taken: None)
    return snapshot


def machine_facts() -> dict:
    """What a results document records about the machine the snapshots were taken on."""
    from .gcore import gdb_version
    from .kernelcore import read_core_pattern
    try:
        gdb = gdb_version()
    except SnapshotError:
        gdb = None
    try:
        core_pattern = read_core_pattern()[0]
    except OSError:
        core_pattern = None
    return {"kernel": platform.release(), "arch": platform.machine(), "python": platform.python_version(),
            "gdb": gdb, "core_pattern": core_pattern}
