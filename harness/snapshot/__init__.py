"""Snapshot methods: copy a live target's memory into a scratch file (memory, never disk: scratch.py)
described by a `Snapshot`.

procmem    /proc/PID/mem under SIGSTOP: everything readable, including PROT_NONE and MADV_DONTDUMP pages.
gcore      gdb's gcore with gdb's defaults: honours MADV_DONTDUMP and the target's coredump_filter.
gcore-all  gcore with excluded mappings dumped too (what an attacker with gdb would get).
kernel-core  the kernel's own core dump of the target (SIGABRT); ends the target.
exit       /proc/PID/mem at the target's final exit_group, after its exit-time wipes (ptrace exit stop).

kernel-core and exit need the target's lifecycle, so the runner drives them (kernelcore.py, exitstop.py);
take_snapshot covers the live methods.
"""
from __future__ import annotations

import contextlib

import os
import platform
import shutil
import time
from pathlib import Path
from typing import Callable

from ..model import Snapshot
from ..process import alive


class SnapshotError(Exception):
    """The snapshot could not be taken (target gone, access denied, gdb failed, ...)."""


LIVE_METHODS = ("procmem", "gcore", "gcore-all")
METHODS = (*LIVE_METHODS, "kernel-core", "exit")

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


def method_unavailable(method: str) -> str | None:
    """None if this machine can run `method`, else why not."""
    if method not in METHODS:
        raise ValueError(f"unknown snapshot method {method!r}; known: {', '.join(METHODS)}")
    if not os.path.exists("/proc/self/mem"):
        return "/proc is not mounted (no /proc/PID/mem)"
    scope = ptrace_scope()
    if scope >= 3:
        return "Yama ptrace_scope=3 forbids all ptrace access, /proc/PID/mem and gdb attach included"
    privileged = has_capability(CAP_SYS_PTRACE)
    if method == "kernel-core":
        from .kernelcore import kernel_core_unavailable
        return kernel_core_unavailable()
    if method == "exit":
        from .exitstop import exit_unavailable
        return exit_unavailable()
    if method == "procmem":
        # ptrace_scope 1 still lets the harness read its own children's memory; 2 needs the capability.
        if scope == 2 and not privileged:
            return "Yama ptrace_scope=2 requires CAP_SYS_PTRACE to read /proc/PID/mem"
        return None
    if shutil.which("gdb") is None:
        return "gdb not found on PATH"
    if scope >= 1 and not privileged:
        return f"Yama ptrace_scope={scope}: gdb cannot attach to a process it did not start without CAP_SYS_PTRACE"
    return None


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


SNAPSHOT_SUFFIXES = {"procmem": ".raw", "exit": ".raw"}    # the others are ELF cores


def dispose_snapshot(snapshot: Snapshot, keep_in: Path | None, stem: str) -> None:
    """Free the snapshot (it holds the secret), or, if `keep_in` is given, write it there as STEM.METHOD.ext:
    the file 0600 from its first byte, its folder and the folder above 0700."""
    from . import scratch
    if keep_in is None or not snapshot.path.exists():
        scratch.discard(snapshot.path)
        return
    keep_in.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(keep_in.parent, 0o700)
    kept = keep_in / f"{stem}.{snapshot.method}{SNAPSHOT_SUFFIXES.get(snapshot.method, '.core')}"
    with open(snapshot.path, "rb") as source, open(os.open(kept, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as copy:
        shutil.copyfileobj(source, copy, 8 << 20)
    os.chmod(kept, 0o600)
    scratch.discard(snapshot.path)
    snapshot.path = kept


def take_snapshot(method: str, pid: int, *, held: bool = False) -> Snapshot:
    """Snapshot process `pid` with a live method (procmem, gcore, gcore-all) into a scratch file.
    `held`: the caller keeps the process stopped (held_still) and resumes it itself."""
    reason = method_unavailable(method)
    if reason:
        raise SnapshotError(f"{method} unavailable: {reason}")
    started = time.monotonic()
    if method in ("kernel-core", "exit"):
        raise ValueError(f"{method} is driven by the runner, not take_snapshot")
    if method == "procmem":
        from .procmem import take_procmem
        snapshot = take_procmem(pid, held=held)
    else:
        from .gcore import take_gcore
        snapshot = take_gcore(pid, dump_all=method == "gcore-all")
    snapshot.duration_s = time.monotonic() - started
    snapshot.pid = pid
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
