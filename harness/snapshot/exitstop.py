"""exit: what is left in memory after the target's own exit-time wipes.

The harness PTRACE_SEIZEs the target's thread-group leader with PTRACE_O_TRACEEXIT once its last live
snapshot is taken, lets it run to its end, and copies /proc/PID/mem while the leader sits in its
PTRACE_EVENT_EXIT stop: after atexit handlers, signal handlers and deferred wipes have run, before the kernel
tears the address space down (the stop comes before exit_mm, so the memory stays whole even when the
other threads have already died).

Rules for the caller (the runner):
- Every ptrace and waitpid call for the target is made from the thread that called arm(); use one
  ExitStop per target from a single thread.
- Between arm() and release() the caller must not waitpid the target (nor Popen.poll()/wait()): a ptraced
  child's stops are reported to any waitpid of the parent, and one taken by the caller is lost to us.
- After release(), reap the target as usual, unless `exit_status` is set: then wait_for_exit_stop() already
  reaped it (it died without an exit stop) and that is its wait status.
- gdb cannot attach while we trace the target: arm() only after the last gcore.
"""
from __future__ import annotations

import collections
import ctypes
import errno
import os
import signal
import threading
import time
from pathlib import Path

from ..model import Region, RegionKind, Snapshot
from . import CAP_SYS_PTRACE, SnapshotError, has_capability, ptrace_scope, scratch
from ..process import describe_status, signal_name
from .procmem import copy_stopped_memory, open_mem, thread_states

METHOD = "exit"

PTRACE_CONT = 7
PTRACE_DETACH = 17
PTRACE_GETEVENTMSG = 0x4201
PTRACE_GETREGSET = 0x4204
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
PTRACE_LISTEN = 0x4208
PTRACE_O_TRACEEXIT = 0x40
PTRACE_EVENT_EXIT = 6
PTRACE_EVENT_STOP = 128
WALL = 0x40000000                    # __WALL
_STOP_SIGNALS = frozenset({signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU})
# Register sets read from the stopped leader (x86-64 names; a set the kernel lacks is skipped).
_REGISTER_SETS = (("NT_PRSTATUS", 1), ("NT_FPREGSET", 2), ("NT_X86_XSTATE", 0x202))
_REGSET_BUFFER = 64 << 10


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


_libc = None


def _ptrace(request: int, pid: int, addr: int = 0, data=0) -> int:
    global _libc
    if _libc is None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
        libc.ptrace.restype = ctypes.c_long
        _libc = libc
    ctypes.set_errno(0)
    result = _libc.ptrace(request, pid, addr, data)
    if result == -1:
        err = ctypes.get_errno()
        if err:
            raise OSError(err, os.strerror(err))
    return result


def exit_unavailable() -> str | None:
    """None if this machine lets the harness ptrace its own children, else why not."""
    if not os.path.exists("/proc/self/mem"):
        return "/proc is not mounted (no /proc/PID/mem)"
    scope = ptrace_scope()
    if scope >= 3:
        return "Yama ptrace_scope=3 forbids all ptrace, PTRACE_SEIZE of the harness's own children included"
    if scope == 2 and not has_capability(CAP_SYS_PTRACE):
        return "Yama ptrace_scope=2 requires CAP_SYS_PTRACE to PTRACE_SEIZE a process"
    # scope 0 and 1 both let a parent trace its own child.
    return None


class ExitStop:
    """Stop the target at its final exit and snapshot it there. See the module docstring for the rules."""

    def __init__(self, pid: int):
        self.pid = pid
        self.exit_status: int | None = None   # raw wait status, when we reaped the target ourselves
        self.exit_code: int | None = None     # PTRACE_GETEVENTMSG at the exit stop (wait-status form)
        self.at_exit_stop = False
        self.reinjected: collections.Counter[int] = collections.Counter()
        self.group_stops = 0
        self._armed = False
        self._thread: int | None = None
        self._armed_at = 0.0
        self._stopped_at: float | None = None
        self._threads_at_stop: dict[int, str] = {}

    # --- ptrace plumbing -------------------------------------------------------------------------------

    def _check_thread(self) -> None:
        if self._thread != threading.get_ident():
            raise RuntimeError("ExitStop: every ptrace/waitpid call must come from the thread that called arm()")

    def arm(self) -> None:
        """PTRACE_SEIZE the leader with PTRACE_O_TRACEEXIT. The target keeps running (or stays blocked)."""
        if self._armed:
            raise RuntimeError("ExitStop already armed")
        reason = exit_unavailable()
        if reason:
            raise SnapshotError(f"exit unavailable: {reason}")
        try:
            _ptrace(PTRACE_SEIZE, self.pid, 0, PTRACE_O_TRACEEXIT)
        except OSError as exc:
            if exc.errno == errno.ESRCH:
                raise SnapshotError(f"process {self.pid} does not exist (exited?)") from exc
            if exc.errno == errno.EPERM:
                tracer = _tracer_of(self.pid)
                detail = f"already traced by process {tracer}" if tracer else "not permitted (zombie, Yama, or no CAP_SYS_PTRACE)"
                raise SnapshotError(f"cannot PTRACE_SEIZE process {self.pid}: {detail}") from exc
            raise SnapshotError(f"cannot PTRACE_SEIZE process {self.pid}: {exc.strerror}") from exc
        self._armed = True
        self._thread = threading.get_ident()
        self._armed_at = time.monotonic()

    def _restart(self, request: int, sig: int = 0) -> None:
        try:
            _ptrace(request, self.pid, 0, sig)
        except OSError as exc:
            if exc.errno != errno.ESRCH:  # killed (SIGKILL) meanwhile: the next waitpid tells
                raise

    def _handle_stop(self, status: int) -> bool:
        """Deal with one ptrace stop; True when it is the exit stop (left stopped)."""
        event = status >> 16
        sig = os.WSTOPSIG(status)
        if event == PTRACE_EVENT_EXIT:
            message = ctypes.c_ulong()
            _ptrace(PTRACE_GETEVENTMSG, self.pid, 0, ctypes.addressof(message))
            self.exit_code = message.value
            self.at_exit_stop = True
            self._stopped_at = time.monotonic()
            self._threads_at_stop = thread_states(self.pid)
            return True
        if event == PTRACE_EVENT_STOP:
            if sig in _STOP_SIGNALS:      # group-stop (SIGSTOP/SIGTSTP...): stay stopped until SIGCONT
                self.group_stops += 1
                self._restart(PTRACE_LISTEN)
            else:                         # PTRACE_INTERRUPT or the end of a listened group-stop
                self._restart(PTRACE_CONT)
            return False
        if event == 0:                    # signal-delivery-stop: deliver it (SIGURG, a self-sent SIGINT, ...)
            self.reinjected[sig] += 1
            self._restart(PTRACE_CONT, sig)
            return False
        self._restart(PTRACE_CONT)        # an event we did not ask for
        return False

    def wait_for_exit_stop(self, timeout: float) -> bool:
        """Let the target run to its exit. True at its PTRACE_EVENT_EXIT stop (it stays stopped there);
        False if it is gone without one (then `exit_status` holds the wait status we reaped).
        SnapshotError on timeout (the target is left traced and running: call release())."""
        self._check_thread()
        if self.at_exit_stop:
            return True
        if self.exit_status is not None:
            return False
        deadline = time.monotonic() + timeout
        delay = 0.0002
        while True:
            try:
                pid, status = os.waitpid(self.pid, WALL | os.WNOHANG)
            except ChildProcessError as exc:
                raise SnapshotError(f"process {self.pid} is not our child or was reaped by someone else "
                                    "(the caller must not waitpid it between arm() and release())") from exc
            if pid == 0:
                if time.monotonic() >= deadline:
                    raise SnapshotError(f"process {self.pid} did not reach its exit within {timeout:g}s")
                time.sleep(delay)
                delay = min(delay * 2, 0.01)
                continue
            delay = 0.0002                # signals come in bursts (Go's SIGURG): poll fast again
            if os.WIFSTOPPED(status):
                if self._handle_stop(status):
                    return True
                continue
            self.exit_status = status     # exited or killed without an exit stop
            return False

    def snapshot(self) -> Snapshot:
        """Copy the target's memory (every mapping, as procmem) and the leader's register sets while it sits
        in its exit stop."""
        self._check_thread()
        if not self.at_exit_stop:
            raise SnapshotError(f"process {self.pid} is not in its exit stop (call wait_for_exit_stop first)")
        started = time.monotonic()
        mem_fd = open_mem(self.pid)
        try:
            snapshot, mappings = copy_stopped_memory(self.pid, METHOD, mem_fd)
        finally:
            os.close(mem_fd)
        try:
            register_notes = self._append_registers(snapshot)
        except BaseException:
            scratch.discard(snapshot.path)
            raise
        others = {tid: s for tid, s in self._threads_at_stop.items() if tid != self.pid}
        notes = [
            f"exit reached: {describe_status(self.exit_code)} (PTRACE_GETEVENTMSG {self.exit_code:#x}), "
            f"{(self._stopped_at or started) - self._armed_at:.3f}s after arm",
            f"threads at the exit stop: leader {self.pid}"
            + (", others " + ", ".join(f"{t} ({s})" for t, s in sorted(others.items())) if others else ", no other thread left"),
            f"{len(mappings)} mappings, {snapshot.captured_bytes} bytes read, {len(snapshot.gaps)} gaps",
        ]
        if self.reinjected:
            notes.append("signals delivered while armed: " + ", ".join(
                f"{signal_name(s)} x{n}" for s, n in sorted(self.reinjected.items())))
        if self.group_stops:
            notes.append(f"group-stops while armed: {self.group_stops}")
        notes += register_notes
        snapshot.notes = notes
        snapshot.duration_s = time.monotonic() - started
        return snapshot

    def _append_registers(self, snapshot: Snapshot) -> list[str]:
        """PTRACE_GETREGSET of the leader (only it is traced) appended to the snapshot file as REGISTERS regions."""
        notes = []
        buffer = ctypes.create_string_buffer(_REGSET_BUFFER)
        with open(snapshot.path, "ab") as out:
            for name, note_type in _REGISTER_SETS:
                iov = _IoVec(ctypes.cast(buffer, ctypes.c_void_p), _REGSET_BUFFER)
                try:
                    _ptrace(PTRACE_GETREGSET, self.pid, note_type, ctypes.addressof(iov))
                except OSError as exc:
                    notes.append(f"{name} of the leader not read: {errno.errorcode.get(exc.errno, exc.errno)}")
                    continue
                offset = out.tell()
                out.write(buffer.raw[: iov.len])
                snapshot.regions.append(Region(start=0, size=iov.len, perms="", kind=RegionKind.REGISTERS,
                                               name=f"thread {self.pid} {name}", file_offset=offset,
                                               thread=self.pid, register_set=name))
        return notes

    def release(self) -> None:
        """Let the target finish its exit and stop tracing it. The caller then reaps it with its own waitpid
        (unless `exit_status` is set: then it is already reaped)."""
        if not self._armed or self.exit_status is not None:
            self._armed = False
            return
        self._check_thread()
        if self.at_exit_stop:
            self._restart(PTRACE_DETACH)
            self.at_exit_stop = False
            self._armed = False
            return
        # Running (e.g. after a timeout): PTRACE_DETACH needs a ptrace-stop, so interrupt it first.
        self._restart(PTRACE_INTERRUPT)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            try:
                pid, status = os.waitpid(self.pid, WALL | os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                time.sleep(0.001)
                continue
            if not os.WIFSTOPPED(status):
                self.exit_status = status
                break
            event, sig = status >> 16, os.WSTOPSIG(status)
            # A pending signal-delivery-stop: pass its signal on with the detach.
            self._restart(PTRACE_DETACH, sig if event == 0 else 0)
            break
        self._armed = False

    def __enter__(self) -> "ExitStop":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _tracer_of(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("TracerPid:"):
                return int(line.split()[1]) or None
    except (OSError, ValueError):
        pass
    return None
