"""The snapshot methods, each registered once: its name, what it sees, when it may be taken, what it needs, and how
it is taken. Scenario validation, the plan, the runner, `doctor`, the CLI and the reports read this registry.

A method's `capture` is given an `Occasion` (the process, whether it is held still, whether the user keeps
snapshots, the run's lifecycle hooks) and an `inspect` callback (the scan): it returns the snapshot and what
`inspect` made of it, so a method that reads live memory can scan it while the process is still held.
"""
from __future__ import annotations

import enum
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

from ..model import Snapshot

T = TypeVar("T")


class Timing(str, enum.Enum):
    LIVE = "live"                # of the running target at any checkpoint it announces; it goes on afterwards
    ENDS_TARGET = "ends-target"  # makes the target dump core, so only at the last checkpoint it announces
    AT_EXIT = "at-exit"          # at the target's own final exit (after its exit-time wipes): the `exit` checkpoint


@dataclass
class Occasion:
    """What a method may use to take its snapshot of one process at one checkpoint."""

    pid: int
    held: bool = False                       # the caller keeps the process stopped and resumes it itself
    keep: bool = False                       # the user keeps snapshots: the image must be a file
    workdir: Path | None = None              # the run's private folder (kernel cores land there)
    wait_exit: Callable[[float], int] | None = None   # the runner owns the target's waitpid
    resume_target: Callable[[], None] | None = None
    exit_stop: object | None = None          # snapshot.exitstop.ExitStop, armed and stopped at the exit
    # An expected crash: lets the held target go on to crash by itself (kernel-core then takes the core that crash
    # leaves instead of sending SIGABRT), waiting at most `timeout` seconds for it.
    crash: Callable[[], None] | None = None
    timeout: float = 120


@dataclass(frozen=True)
class SnapshotMethod:
    name: str
    sees: str                                # one line: what this method's image holds
    timing: Timing
    needs: tuple[str, ...]                   # "ptrace", "gdb", "core dumps": what doctor checks for it
    kept_suffix: str                         # a kept snapshot's file suffix
    unavailable: Callable[[], str | None]    # None if this machine can take it, else why not
    # Takes the snapshot and calls `inspect` on it (procmem: while the process is still stopped); returns both.
    capture: Callable[[Occasion, Callable[[Snapshot], T]], tuple[Snapshot, T]]
    by_default: bool = True                  # a scenario that names no methods gets it (live methods only)

    @property
    def live(self) -> bool:
        return self.timing is Timing.LIVE


_REGISTRY: dict[str, SnapshotMethod] = {}


def register(method: SnapshotMethod) -> SnapshotMethod:
    if method.name in _REGISTRY:
        raise ValueError(f"snapshot method {method.name!r} registered twice")
    _REGISTRY[method.name] = method
    return method


def method(name: str) -> SnapshotMethod:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown snapshot method {name!r}; known: {', '.join(_REGISTRY)}") from None


def names() -> tuple[str, ...]:
    """Every method, in the order reports and help texts list them."""
    return tuple(_REGISTRY)


def live_names() -> tuple[str, ...]:
    return tuple(name for name, m in _REGISTRY.items() if m.live)


def default_names() -> tuple[str, ...]:
    """The methods of a scenario that names none."""
    return tuple(name for name, m in _REGISTRY.items() if m.live and m.by_default)


# --- what each method needs of the machine ----------------------------------------------------------------------

def _ptrace_forbidden() -> str | None:
    from . import ptrace_scope
    if not os.path.exists("/proc/self/mem"):
        return "/proc is not mounted (no /proc/PID/mem)"
    if ptrace_scope() >= 3:
        return "Yama ptrace_scope=3 forbids all ptrace access, /proc/PID/mem and gdb attach included"
    return None


def _proc_mem_unavailable() -> str | None:
    from . import CAP_SYS_PTRACE, has_capability, ptrace_scope
    if reason := _ptrace_forbidden():
        return reason
    scope = ptrace_scope()
    # ptrace_scope 1 still lets the harness read its own children's memory; 2 needs the capability.
    if scope == 2 and not has_capability(CAP_SYS_PTRACE):
        return "Yama ptrace_scope=2 requires CAP_SYS_PTRACE to read /proc/PID/mem"
    return None


def _gdb_unavailable() -> str | None:
    from . import CAP_SYS_PTRACE, has_capability, ptrace_scope
    if reason := _ptrace_forbidden():
        return reason
    if shutil.which("gdb") is None:
        return "gdb not found on PATH"
    scope = ptrace_scope()
    if scope >= 1 and not has_capability(CAP_SYS_PTRACE):
        return f"Yama ptrace_scope={scope}: gdb cannot attach to a process it did not start without CAP_SYS_PTRACE"
    return None


def _kernel_core_unavailable() -> str | None:
    from .kernelcore import kernel_core_unavailable
    return _ptrace_forbidden() or kernel_core_unavailable()


def _exit_unavailable() -> str | None:
    from .exitstop import exit_unavailable
    return _ptrace_forbidden() or exit_unavailable()


def _swap_unavailable() -> str | None:
    from .swap import swap_unavailable
    return _ptrace_forbidden() or swap_unavailable()


# --- how each is taken ---------------------------------------------------------------------------------------------

def _inspected_afterwards(take: Callable[[Occasion], Snapshot]):
    """The capture of a method whose image is a file taken first and inspected afterwards; an image whose
    inspection fails is freed at once."""
    def capture(occasion: Occasion, inspect: Callable[[Snapshot], T]) -> tuple[Snapshot, T]:
        started = time.monotonic()
        snapshot = take(occasion)
        snapshot.duration_s = snapshot.duration_s or time.monotonic() - started
        if snapshot.pid is None:
            snapshot.pid = occasion.pid
        try:
            return snapshot, inspect(snapshot)
        except BaseException:
            from . import dispose_snapshot
            dispose_snapshot(snapshot, None, "")
            raise
    return capture


def _capture_procmem(occasion: Occasion, inspect: Callable[[Snapshot], T]) -> tuple[Snapshot, T]:
    from .procmem import capture_procmem
    return capture_procmem(occasion.pid, inspect, held=occasion.held, keep=occasion.keep)


def _take_gcore(dump_all: bool) -> Callable[[Occasion], Snapshot]:
    def take(occasion: Occasion) -> Snapshot:
        from .gcore import take_gcore
        return take_gcore(occasion.pid, dump_all=dump_all, held=occasion.held)
    return take


def _take_kernel_core(occasion: Occasion) -> Snapshot:
    from . import scratch
    from .kernelcore import take_kernel_core
    occasion.resume_target()     # the abort (or the crash) must happen: let the target run again if it is held
    snapshot = take_kernel_core(occasion.pid, occasion.workdir, occasion.wait_exit, occasion.timeout, occasion.crash)
    if snapshot.not_produced is None:   # off the disk at once: from here on it lives as long as we do
        snapshot.path = scratch.adopt(snapshot.path)
    return snapshot


def _take_swap(occasion: Occasion) -> Snapshot:
    from .swap import take_swap
    from ..workspace import workspace
    return take_swap(occasion.pid, occasion.workdir or workspace().root)


def _take_at_exit(occasion: Occasion) -> Snapshot:
    return occasion.exit_stop.snapshot()


register(SnapshotMethod(
    "procmem", "/proc/PID/mem with every thread stopped: everything readable, PROT_NONE and MADV_DONTDUMP pages included",
    Timing.LIVE, ("ptrace",), ".raw", _proc_mem_unavailable, _capture_procmem))
register(SnapshotMethod(
    "gcore", "gdb's gcore with gdb's defaults: honours MADV_DONTDUMP and the target's coredump_filter",
    Timing.LIVE, ("ptrace", "gdb"), ".core", _gdb_unavailable, _inspected_afterwards(_take_gcore(dump_all=False))))
register(SnapshotMethod(
    "gcore-all", "gdb's gcore with excluded mappings dumped too: what an attacker with gdb gets",
    Timing.LIVE, ("ptrace", "gdb"), ".core", _gdb_unavailable, _inspected_afterwards(_take_gcore(dump_all=True))))
register(SnapshotMethod(
    "kernel-core", "the kernel's own core dump of the target (SIGABRT): what a crash leaves on disk; ends the target",
    Timing.ENDS_TARGET, ("ptrace", "core dumps"), ".core", _kernel_core_unavailable,
    _inspected_afterwards(_take_kernel_core)))
register(SnapshotMethod(
    "exit", "/proc/PID/mem and registers at the target's final exit_group, after its exit-time wipes (ptrace exit stop)",
    Timing.AT_EXIT, ("ptrace",), ".raw", _exit_unavailable, _inspected_afterwards(_take_at_exit)))
register(SnapshotMethod(
    "swap", "what reaches swap: the target paged out (MADV_PAGEOUT) to a private swap file read back past the page cache; "
    "mlocked pages stay in RAM", Timing.LIVE, ("ptrace", "root", "swapon", "process_madvise"), ".raw", _swap_unavailable,
    _inspected_afterwards(_take_swap), by_default=False))   # it pages the whole target out: only where asked for
