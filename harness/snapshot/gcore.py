"""Snapshots through gdb's gcore: what a debugger-equipped attacker, or a crash tool, would get."""
from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
from pathlib import Path

from ..model import Snapshot
from ..process import die_with_parent
from . import SnapshotError, scratch
from .elfcore import CoreFormatError, snapshot_from_core
from .procmaps import read_mappings

GDB_TIMEOUT_S = 300.0
_DEFAULT_FILTER = 0x33               # gdb's built-in coredump_filter, used with `set use-coredump-filter off`

# Keep gdb from fetching debug info over the network or running auto-loaded scripts from the target's libs.
_GDB_QUIET = ["-iex", "set debuginfod enabled off", "-iex", "set auto-load off", "-iex", "set confirm off"]


@functools.lru_cache(maxsize=1)
def gdb_version() -> str:
    gdb = shutil.which("gdb")
    if gdb is None:
        raise SnapshotError("gdb not found on PATH")
    out = subprocess.run([gdb, "--version"], capture_output=True, text=True, timeout=30).stdout
    return out.splitlines()[0] if out else "unknown gdb"


def _coredump_filter(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/coredump_filter").read_text(), 16)
    except (OSError, ValueError):
        return None


def gdb_settings(dump_all: bool, target_filter: int | None) -> list[str]:
    if not dump_all:
        return []                    # gdb defaults: honour MADV_DONTDUMP and the target's coredump_filter
    settings = ["set dump-excluded-mappings on"]
    # A target may lower its own coredump_filter (0 makes gdb dump no memory at all, even with the setting
    # above); then use gdb's built-in 0x33. A filter that already has all of 0x33's bits dumps more: keep it.
    if target_filter is None or target_filter & _DEFAULT_FILTER != _DEFAULT_FILTER:
        settings.append("set use-coredump-filter off")
    return settings


def identical_dumps(live, target_filter: int | None) -> str | None:
    """Why gcore and gcore-all write the same image of this process, or None if they may not: they differ only in
    MADV_DONTDUMP mappings and, where the target's coredump_filter lacks gdb's own 0x33 bits, in the filter. gdb
    never dumps an I/O mapping (VmFlags "io": [vvar], which the kernel also marks "dd"), excluded or not."""
    if any(m.dont_dump and "io" not in m.vm_flags for m in live):
        return None
    if target_filter is None or target_filter & _DEFAULT_FILTER != _DEFAULT_FILTER:
        return None
    return (f"no mapping is MADV_DONTDUMP (smaps VmFlags) and the coredump_filter {target_filter:#x} has gdb's "
            f"{_DEFAULT_FILTER:#x} bits, so gdb dumps the same with dump-excluded-mappings on or off")


def take_gcore(pid: int, dump_all: bool, timeout: float = GDB_TIMEOUT_S, held: bool = False) -> Snapshot:
    """`held`: the caller keeps the process stopped from before this call until after it (gdb leaves a process it
    found stopped stopped), so the mappings read here describe the dump's very moment."""
    method = "gcore-all" if dump_all else "gcore"
    gdb = shutil.which("gdb")
    if gdb is None:
        raise SnapshotError("gdb not found on PATH")
    version = gdb_version()
    live = read_mappings(pid)        # the target is blocked by the harness protocol, so these stay valid
    if not live:
        raise SnapshotError(f"process {pid} has no memory mappings (exited?)")
    target_filter = _coredump_filter(pid)
    settings = gdb_settings(dump_all, target_filter)
    core = scratch.create(f"{method}-{pid}")    # gdb opens it through /proc/<harness>/fd and writes the core there
    command = [gdb, "-nx", "-batch", *_GDB_QUIET, "-p", str(pid)]
    for setting in settings + [f"gcore {core}"]:
        command += ["-ex", setting]
    try:
        try:
            result = subprocess.run(command, capture_output=True, text=True, errors="replace", timeout=timeout,
                                    stdin=subprocess.DEVNULL, env=dict(os.environ, DEBUGINFOD_URLS=""), umask=0o077,
                                    preexec_fn=die_with_parent)
        except subprocess.TimeoutExpired as exc:
            # run() has killed gdb; the kernel detaches the target, which may stay in a stopped state.
            _resume(pid)
            raise SnapshotError(f"gdb gcore of process {pid} timed out after {timeout:g}s") from exc
        if result.returncode != 0 or "Saved corefile" not in result.stdout or core.stat().st_size == 0:
            _resume(pid)
            tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-5:])
            raise SnapshotError(f"gdb gcore of process {pid} failed (exit {result.returncode}): {tail}")
        try:
            snapshot = snapshot_from_core(core, method, live, live_while_held=held)
        except CoreFormatError as exc:
            raise SnapshotError(f"gdb wrote an unreadable core: {exc}") from exc
    except BaseException:
        scratch.discard(core)  # never keep a partial copy of the target's memory
        raise
    if why := identical_dumps(live, target_filter):
        snapshot.serves = {"gcore" if dump_all else "gcore-all": why}
    snapshot.notes[:0] = [version, "gdb settings: " + ("; ".join(settings) or "defaults"),
                          f"target coredump_filter: {target_filter:#x}" if target_filter is not None else
                          "target coredump_filter: unknown"]
    return snapshot


def _resume(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGCONT)
    except ProcessLookupError:
        pass
