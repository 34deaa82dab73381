"""Live snapshot through /proc/PID/mem while the whole process is frozen with SIGSTOP.

copy_stopped_memory() is the reading itself, for callers that hold the process still another way (the exit
method reads it in its ptrace exit stop). Pages read as all zeros are left as holes in the (sparse) file."""
from __future__ import annotations

import errno
import os
import signal
import time

from ..model import Gap, GapKind, Region, RegionKind, Snapshot
from ..process import stat_fields
from . import SnapshotError, scratch
from .procmaps import LiveMapping, read_mappings

CHUNK_SIZE = 8 << 20
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
_MAX_OFFSET = (1 << 63) - 1          # pread takes a signed off_t
_zeros = memoryview(b"")


def _all_zero(buffer: bytearray, count: int) -> bool:
    """buffer[:count] is all zero bytes (a memcmp, no copy)."""
    global _zeros
    if len(_zeros) < count:
        _zeros = memoryview(bytes(max(count, CHUNK_SIZE)))   # calloc'd: costs no memory until read
    return buffer.startswith(_zeros[:count])


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
    """Copy [start, end) into `out`. Returns pieces (start, end, file_offset, error-or-None) in address order.
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
        offset = out.tell()
        if _all_zero(buffer, count):
            # Never-touched memory (Go reserves >1 GiB PROT_NONE, read as zeros): leave a hole in the file
            # instead of writing it; copy_stopped_memory sets the final size, so the bytes read back the same.
            out.seek(count, os.SEEK_CUR)
        else:
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


def _copy_mapping(mem_fd: int, out, pid: int, m: LiveMapping, buffer: bytearray, regions: list, gaps: list) -> None:
    if m.kind == RegionKind.KERNEL:
        gaps.append(Gap(m.start, m.size, m.name, GapKind.KERNEL, "kernel-owned mapping, not read", m.dont_dump))
        return
    if m.untouched:
        gaps.append(Gap(m.start, m.size, m.name, GapKind.UNTOUCHED, "no page ever touched (Rss and Swap 0): reads as zeros",
                        m.dont_dump, m.perms))
        return
    pieces = []
    for chunk_start in range(m.start, m.end, len(buffer)):
        pieces += _read_span(mem_fd, out, pid, chunk_start, min(m.end, chunk_start + len(buffer)), buffer)
    for a, b, offset, error in _merge(pieces):
        if error is None:
            regions.append(Region(start=a, size=b - a, perms=m.perms, kind=m.kind, name=m.name, file_offset=offset,
                                  locked=m.locked, dont_dump=m.dont_dump, vm_flags=m.vm_flags))
        else:
            gaps.append(Gap(a, b - a, m.name, GapKind.UNREADABLE, error, m.dont_dump, m.perms))


def open_mem(pid: int) -> int:
    """Open /proc/PID/mem read-only; SnapshotError when the process is gone or access is denied."""
    try:
        return os.open(f"/proc/{pid}/mem", os.O_RDONLY)
    except (FileNotFoundError, ProcessLookupError) as exc:
        raise SnapshotError(f"process {pid} does not exist (exited?)") from exc
    except PermissionError as exc:
        raise SnapshotError(f"cannot open /proc/{pid}/mem: permission denied "
                            "(different uid, not dumpable, or Yama; needs CAP_SYS_PTRACE)") from exc


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
            buffer = bytearray(max(PAGE_SIZE, chunk_size // PAGE_SIZE * PAGE_SIZE))   # whole pages, for the bisection
            mappings = read_mappings(pid)
            if not mappings:
                raise SnapshotError(f"process {pid} has no memory mappings (exited?)")
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


def take_procmem(pid: int, chunk_size: int = CHUNK_SIZE, stop_timeout: float = 5.0,
                 held: bool = False) -> Snapshot:
    """`held`: the caller already keeps the process stopped (and will resume it): do not SIGCONT it here."""
    mem_fd = open_mem(pid)
    try:
        try:
            waited = freeze(pid, stop_timeout)
            frozen_at = time.monotonic()
            snapshot, mappings = copy_stopped_memory(pid, "procmem", mem_fd, chunk_size)
            frozen_for = time.monotonic() - frozen_at
        finally:
            if not held:
                resume(pid)
    finally:
        os.close(mem_fd)
    snapshot.notes = [f"all threads stopped after {waited:.4f}s; held stopped {frozen_for:.3f}s"
                      + (" (stopped by the caller for the whole checkpoint)" if held else ""),
                      f"{len(mappings)} mappings, {snapshot.captured_bytes} bytes read, {len(snapshot.gaps)} gaps"]
    return snapshot
