"""Live snapshot through /proc/PID/mem while the whole process is frozen with SIGSTOP.

capture_procmem() is the method: by default the snapshot is the stopped process's memory itself (streamed: its
regions are read straight from /proc/PID/mem by whoever inspects them, no copy made); kept snapshots are copied
into a scratch file first. copy_stopped_memory() is the copying, for callers that hold the process still another
way (the exit method reads it in its ptrace exit stop). Pages read as all zeros are left as holes in the (sparse)
file."""
from __future__ import annotations

import bisect
import ctypes
import errno
import os
import re
import signal
import time
from pathlib import Path
from typing import Callable, TypeVar

from ..model import Gap, GapKind, Region, RegionKind, Snapshot
from ..process import stat_fields
from . import SnapshotError, scratch
from .procmaps import LiveMapping, read_mappings

CHUNK_SIZE = 8 << 20
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
_MAX_OFFSET = (1 << 63) - 1          # pread takes a signed off_t
_zeros = memoryview(b"")
# Private anonymous memory always reads through /proc/PID/mem (a page never touched reads as zeros, PROT_NONE is
# forced), unless the driver behind it is special: VM_IO or VM_PFNMAP ("io", "pf"), which the kernel refuses.
_REFUSED_FLAGS = frozenset({"io", "pf"})
# /proc/PID/pagemap: one 64-bit entry per page; its top byte holds bit 63 (present), 62 (swapped out) and 58 (a guard
# marker: reading fails). Translated to b"0" where a page is none of them: private anonymous memory reads as zeros there.
_NOTHING_TO_READ = bytes(ord("1") if top & 0xC4 else ord("0") for top in range(256))
_ABSENT_RUNS = re.compile(b"0+")

T = TypeVar("T")


def _zero_bytes(count: int) -> memoryview:
    global _zeros
    if len(_zeros) < count:
        _zeros = memoryview(bytes(max(count, CHUNK_SIZE)))   # calloc'd: costs no memory until read
    return _zeros[:count]


def _all_zero(buffer: bytearray, count: int) -> bool:
    """buffer[:count] is all zero bytes (a memcmp, no copy)."""
    return buffer.startswith(_zero_bytes(count))


def thread_states(pid: int) -> dict[int, str]:
    """Each thread's state letter from /proc/PID/task/*/stat ({} when the process is gone)."""
    states = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return {}
    for tid in tids:
        try:
            states[int(tid)] = stat_fields(f"/proc/{pid}/task/{tid}/stat")[0]
        except (OSError, IndexError):
            continue                 # thread exited meanwhile
    return states


def freeze(pid: int, timeout: float = 5.0) -> float:
    """SIGSTOP the process and wait until every thread is stopped; returns the seconds waited.
    The caller must SIGCONT in a finally, whatever happens."""
    try:
        os.kill(pid, signal.SIGSTOP)
    except ProcessLookupError as exc:
        raise SnapshotError(f"process {pid} does not exist (exited?)") from exc
    except PermissionError as exc:
        raise SnapshotError(f"cannot signal process {pid}: permission denied") from exc
    started = time.monotonic()
    delay = 0.0005
    while True:
        states = thread_states(pid)
        if not states or all(s in "ZX" for s in states.values()):
            raise SnapshotError(f"process {pid} exited")
        running = {tid: s for tid, s in states.items() if s not in "TtZX"}
        if not running:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            detail = ", ".join(f"{tid} ({s})" for tid, s in sorted(running.items()))
            raise SnapshotError(f"process {pid}: threads did not stop within {timeout:g}s: {detail}")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def resume(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGCONT)
    except ProcessLookupError:
        pass


def _read_span(mem_fd: int, out, pid: int, start: int, end: int, buffer: bytearray | None = None
               ) -> list[tuple[int, int, int, str | None]]:
    """Copy [start, end) into `out`, or only find out what reads (`out` None: file offset = address, as in
    /proc/PID/mem itself). Returns pieces (start, end, file_offset, error-or-None) in address order.
    A failing read is bisected down to single pages so readable neighbours are kept."""
    buffer = buffer if buffer is not None and len(buffer) >= end - start else bytearray(end - start)
    view = memoryview(buffer)
    pieces: list[tuple[int, int, int, str | None]] = []
    work = [(start, end)]            # a stack: push the upper half first so addresses come out in order
    while work:
        a, b = work.pop()
        if a > _MAX_OFFSET:
            pieces.append((a, b, -1, "address beyond the off_t range of /proc/PID/mem"))
            continue
        try:
            count = os.preadv(mem_fd, [view[: b - a]], a)   # into one reused buffer: no 8 MiB allocation per read
        except OSError as exc:
            if exc.errno == errno.ESRCH:
                raise SnapshotError(f"process {pid} exited during the snapshot") from exc
            if b - a <= PAGE_SIZE:
                name = errno.errorcode.get(exc.errno, str(exc.errno))
                pieces.append((a, b, -1, f"{name} reading /proc/{pid}/mem"))
            else:
                mid = a + max(1, (b - a) // PAGE_SIZE // 2) * PAGE_SIZE
                work += [(mid, b), (a, mid)]
            continue
        if count == 0:               # the address space is gone: the process exited
            raise SnapshotError(f"process {pid} exited during the snapshot (read 0 bytes at {a:#x})")
        if out is None:
            offset = a
        elif _all_zero(buffer, count):
            offset = out.tell()
            # Never-touched memory (Go reserves >1 GiB PROT_NONE, read as zeros): leave a hole in the file
            # instead of writing it; copy_stopped_memory sets the final size, so the bytes read back the same.
            out.seek(count, os.SEEK_CUR)
        else:
            offset = out.tell()
            written = 0
            while written < count:
                written += out.write(view[written:count])
        pieces.append((a, a + count, offset, None))
        if a + count < b:            # short read: the next page failed; retry from there
            work.append((a + count, b))
    return pieces


def _merge(pieces):
    """Join neighbours that continue each other (same error, or readable and contiguous in the file)."""
    merged: list[list] = []
    for a, b, offset, error in pieces:
        last = merged[-1] if merged else None
        if last and last[1] == a and last[3] == error and (error is not None or last[2] + (last[1] - last[0]) == offset):
            last[1] = b
        else:
            merged.append([a, b, offset, error])
    return merged


def _surely_readable(m: LiveMapping) -> bool:
    return m.perms.endswith("p") and m.kind in (RegionKind.ANONYMOUS, RegionKind.HEAP, RegionKind.STACK) \
        and not _REFUSED_FLAGS.intersection(m.vm_flags)


def _copy_mapping(mem_fd: int, out, pid: int, m: LiveMapping, buffer: bytearray, regions: list, gaps: list) -> None:
    """Copy mapping `m` into `out` and describe it as regions and gaps; with `out` None copy nothing, only find out
    which of it reads (by reading it, unless it is memory that always reads) and describe it in place."""
    if m.kind == RegionKind.KERNEL:
        gaps.append(Gap(m.start, m.size, m.name, GapKind.KERNEL, "kernel-owned mapping, not read", m.dont_dump))
        return
    if m.untouched:
        gaps.append(Gap(m.start, m.size, m.name, GapKind.UNTOUCHED, "no page ever touched (Rss and Swap 0): reads as zeros",
                        m.dont_dump, m.perms))
        return
    if out is None and _surely_readable(m):
        pieces = [(m.start, m.end, m.start, None)]
    else:
        pieces = []
        for chunk_start in range(m.start, m.end, len(buffer)):
            pieces += _read_span(mem_fd, out, pid, chunk_start, min(m.end, chunk_start + len(buffer)), buffer)
    for a, b, offset, error in _merge(pieces):
        if error is None:
            regions.append(Region(start=a, size=b - a, perms=m.perms, kind=m.kind, name=m.name, file_offset=offset,
                                  locked=m.locked, dont_dump=m.dont_dump, vm_flags=m.vm_flags))
        else:
            gaps.append(Gap(a, b - a, m.name, GapKind.UNREADABLE, error, m.dont_dump, m.perms))


def open_mem(pid: int, name: str = "mem") -> int:
    """Open /proc/PID/mem (or another of its files as private, /proc/PID/pagemap) read-only; SnapshotError when the
    process is gone or access is denied."""
    try:
        return os.open(f"/proc/{pid}/{name}", os.O_RDONLY)
    except (FileNotFoundError, ProcessLookupError) as exc:
        raise SnapshotError(f"process {pid} does not exist (exited?)") from exc
    except PermissionError as exc:
        raise SnapshotError(f"cannot open /proc/{pid}/{name}: permission denied "
                            "(different uid, not dumpable, or Yama; needs CAP_SYS_PTRACE)") from exc


def _mappings(pid: int) -> list[LiveMapping]:
    mappings = read_mappings(pid)
    if not mappings:
        raise SnapshotError(f"process {pid} has no memory mappings (exited?)")
    return mappings


def _page_buffer(chunk_size: int) -> bytearray:
    return bytearray(max(PAGE_SIZE, chunk_size // PAGE_SIZE * PAGE_SIZE))   # whole pages, for the bisection


def copy_stopped_memory(pid: int, method: str, mem_fd: int | None = None,
                        chunk_size: int = CHUNK_SIZE) -> tuple[Snapshot, list[LiveMapping]]:
    """Copy every mapping of `pid` (PROT_NONE and MADV_DONTDUMP included; unreadable pages become gaps)
    into a new scratch file (memory, never disk). The caller keeps the process from running meanwhile (SIGSTOP,
    a ptrace stop, ...): this function does not stop it. Returns the Snapshot (notes empty) and the
    mappings it read. On any failure the partial file is removed."""
    own_fd = mem_fd is None
    if own_fd:
        mem_fd = open_mem(pid)
    raw_path = scratch.create(f"{method}-{pid}")
    regions: list[Region] = []
    gaps: list[Gap] = []
    try:
        with open(raw_path, "wb", buffering=0) as out:
            buffer = _page_buffer(chunk_size)
            mappings = _mappings(pid)
            for m in mappings:
                _copy_mapping(mem_fd, out, pid, m, buffer, regions, gaps)
            out.truncate(out.tell())     # a trailing hole still counts in the file size
    except BaseException:
        scratch.discard(raw_path)   # never keep a partial copy of the target's memory
        raise
    finally:
        if own_fd:
            os.close(mem_fd)
    return Snapshot(method=method, path=raw_path, regions=regions, gaps=gaps), mappings


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("length", ctypes.c_size_t)]


def _vm_readv_function():
    """libc's process_vm_readv, or None where it is missing."""
    try:
        function = ctypes.CDLL(None, use_errno=True).process_vm_readv
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.POINTER(_IoVec), ctypes.c_ulong, ctypes.POINTER(_IoVec), ctypes.c_ulong,
                         ctypes.c_ulong]
    function.restype = ctypes.c_ssize_t
    return function


_process_vm_readv = _vm_readv_function()


class _LiveMemory:
    """Reads a stopped process's memory for a scan. Pages of private anonymous memory neither resident nor swapped out
    (by /proc/PID/pagemap) are zeros by definition, so they are filled in rather than read: reading them would fault
    the zero page into the target page by page, many times slower (a Go heap is mostly such pages). Mappings the
    process may read itself are read with process_vm_readv (one copy, against two through /proc/PID/mem: about twice
    as fast); the rest (PROT_NONE), and whatever process_vm_readv refuses, through /proc/PID/mem, which forces it."""

    def __init__(self, pid: int, mem_fd: int, pagemap_fd: int, mappings: list[LiveMapping]):
        self.pid, self.mem_fd, self.pagemap_fd = pid, mem_fd, pagemap_fd
        self.mappings = [m for m in mappings if m.kind != RegionKind.KERNEL]
        self.starts = [m.start for m in self.mappings]

    def read_at(self, address: int, view: memoryview) -> int:
        """Bytes from `address` into `view`; fewer than asked where a read stops short (the next call goes on)."""
        at = bisect.bisect_right(self.starts, address) - 1
        if at < 0 or address >= self.mappings[at].end:
            return os.preadv(self.mem_fd, [view], address)
        m = self.mappings[at]
        end = min(address + len(view), m.end)
        if not _surely_readable(m):
            return self._read(m, address, view[:end - address])
        first = address // PAGE_SIZE
        entries = os.pread(self.pagemap_fd, 8 * ((end - 1) // PAGE_SIZE + 1 - first), 8 * first)
        done = address
        for run in _ABSENT_RUNS.finditer(entries[7::8].translate(_NOTHING_TO_READ)):
            zeros_from, zeros_to = max(address, (first + run.start()) * PAGE_SIZE), min(end, (first + run.end()) * PAGE_SIZE)
            if done < zeros_from:
                count = self._read(m, done, view[done - address:zeros_from - address])
                if done + count < zeros_from:
                    return done + count - address
            view[zeros_from - address:zeros_to - address] = _zero_bytes(zeros_to - zeros_from)
            done = zeros_to
        if done < end:
            done += self._read(m, done, view[done - address:end - address])
        return done - address

    def _read(self, m: LiveMapping, address: int, view: memoryview) -> int:
        if _process_vm_readv is not None and m.perms.startswith("r"):
            local = _IoVec(ctypes.addressof(ctypes.c_char.from_buffer(view)), len(view))
            remote = _IoVec(address, len(view))
            count = _process_vm_readv(self.pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
            if count > 0:
                return count
        return os.preadv(self.mem_fd, [view], address)


def stopped_memory_in_place(pid: int, method: str, mem_fd: int, pagemap_fd: int,
                            chunk_size: int = CHUNK_SIZE) -> tuple[Snapshot, list[LiveMapping]]:
    """The stopped process's memory itself as a Snapshot: path /proc/PID/mem, each region at file offset = its
    address, so every reader of snapshot files reads the live memory (a scan reads it through _LiveMemory). Found
    unreadable and untouched ranges are gaps as in copy_stopped_memory; the readability of memory that may fail
    (file-backed, shared, device) is found by reading it, private anonymous memory always reads. Valid only while the
    caller keeps the process stopped and the descriptors open."""
    regions: list[Region] = []
    gaps: list[Gap] = []
    buffer = _page_buffer(chunk_size)
    mappings = _mappings(pid)
    for m in mappings:
        _copy_mapping(mem_fd, None, pid, m, buffer, regions, gaps)
    return Snapshot(method=method, path=Path(f"/proc/{pid}/mem"), regions=regions, gaps=gaps, streamed=True,
                    read_at=_LiveMemory(pid, mem_fd, pagemap_fd, mappings).read_at), mappings


def capture_procmem(pid: int, inspect: Callable[[Snapshot], T], *, held: bool = False, keep: bool = False,
                    stop_timeout: float = 5.0, chunk_size: int = CHUNK_SIZE) -> tuple[Snapshot, T]:
    """Snapshot process `pid` with procmem and call `inspect(snapshot)` while the process is still stopped (scan it,
    read the context of its hits there); returns the snapshot and what `inspect` returned.

    keep=False: streamed. The snapshot is the stopped process's memory (stopped_memory_in_place): `inspect` reads it
    straight from /proc/PID/mem, nothing is copied. Once this returns the process runs again, so `snapshot.path`
    names no file any more (reading it fails; disposing of it does nothing) and `snapshot.streamed` stays True.
    keep=True: the memory is copied into a scratch file first (copy_stopped_memory) and `inspect` reads the copy; the
    caller disposes of it (keeps or frees it) as of any snapshot. If `inspect` raises, the copy is freed.
    held: the caller already keeps the process stopped and resumes it itself; otherwise it is stopped (SIGSTOP,
    every thread) and resumed (SIGCONT) here, whatever happens."""
    began = time.monotonic()
    mem_fd = open_mem(pid)
    pagemap_fd = None
    try:
        if not keep:
            pagemap_fd = open_mem(pid, "pagemap")
        try:
            waited = freeze(pid, stop_timeout)
            frozen_at = time.monotonic()
            if keep:
                snapshot, mappings = copy_stopped_memory(pid, "procmem", mem_fd, chunk_size)
            else:
                snapshot, mappings = stopped_memory_in_place(pid, "procmem", mem_fd, pagemap_fd, chunk_size)
            snapshot.pid = pid
            snapshot.duration_s = time.monotonic() - began
            try:
                inspected = inspect(snapshot)
            except BaseException:
                if keep:
                    scratch.discard(snapshot.path)   # never keep a copy of the target's memory nobody will dispose of
                raise
            finally:
                if not keep:    # it runs again: nothing more to read
                    snapshot.path, snapshot.read_at = Path(f"/proc/{pid}/mem (released)"), None
            frozen_for = time.monotonic() - frozen_at
        finally:
            if not held:
                resume(pid)
    finally:
        os.close(mem_fd)
        if pagemap_fd is not None:
            os.close(pagemap_fd)
    how = ("copied into a scratch file while the process was stopped (kept snapshot)" if keep else
           "read straight from /proc/PID/mem while the process was stopped (streamed: no copy made)")
    snapshot.notes = [f"all threads stopped after {waited:.4f}s; held stopped {frozen_for:.3f}s"
                      + (" (stopped by the caller for the whole checkpoint)" if held else ""),
                      f"{len(mappings)} mappings, {snapshot.captured_bytes} bytes {'read' if keep else 'readable'}, "
                      f"{len(snapshot.gaps)} gaps; {how}"]
    return snapshot, inspected


def take_procmem(pid: int, chunk_size: int = CHUNK_SIZE, stop_timeout: float = 5.0,
                 held: bool = False) -> Snapshot:
    """A procmem snapshot copied into a scratch file (for kept snapshots and `scan --pid`).
    `held`: the caller already keeps the process stopped (and will resume it): do not SIGCONT it here."""
    return capture_procmem(pid, lambda snapshot: None, held=held, keep=True, stop_timeout=stop_timeout,
                           chunk_size=chunk_size)[0]
