"""The `swap` snapshot method: what of the target reaches swap when the kernel pages it out.

For one snapshot: a private swap file (in the run's 0700 folder, 0600, written with zeros: an fallocated file's
unwritten extents would read back as zeros whatever swap wrote) is swapped on at the highest priority; the stopped
target's private mappings are paged out with process_madvise(MADV_PAGEOUT) on a pidfd; /proc/PID/pagemap says which
swap slot each page went to, so each slot is read back (O_DIRECT: swap writes bypass the file's page cache) into a
scratch file in address order and scanned like any snapshot, hits attributed to the page's address. Pages that did
not go to swap are gaps with the reason (mlocked pages stay in RAM: that is the promise under test). The area is
swapped off (the pages come back), zeroed and deleted whatever happens; swap is machine-wide, so one area exists at a
time (a lock shared by every harness on the machine), and one left by a killed harness is released by its sentinel or
at the next start (release_swap_under).
"""
from __future__ import annotations

import array
import contextlib
import ctypes
import errno
import fcntl
import functools
import mmap
import os
import secrets
import shutil
import subprocess
import time
from dataclasses import replace
from pathlib import Path

from ..model import Gap, GapKind, Region, RegionKind, Snapshot
from ..workspace import abandoned
from . import SnapshotError, has_capability, scratch
from .procmaps import LiveMapping, read_mappings
from .procmem import _REFUSED_FLAGS


PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
CAP_SYS_ADMIN = 21
SWAP_FLAG_PREFER = 0x8000
SWAP_PRIORITY = 32767                 # the highest: the kernel fills this area before any other
SYS_PIDFD_OPEN, SYS_PROCESS_MADVISE = 434, 440   # x86_64
MADV_PAGEOUT = 21
IOV_MAX = 1024
SWAP_FILE = "remanence.swap"
# One lock for the whole machine, wherever TMPDIR points
LOCK_FILE = Path("/run/lock" if os.path.isdir("/run/lock") else "/tmp") / "remanence.swap.lock"
WRITEBACK_TIMEOUT_S = 30.0
ABANDONED_RELEASE_S = 10.0            # for a killed harness's area to be gone (swapoff brings its pages back first)
LOCKED_REASON = "locked in RAM (mlock): cannot be paged out"
_FILE_PAGE = "unmodified page of a file mapping: its bytes are the file's, dropped rather than swapped"
_CHUNK = 1 << 20
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

# /proc/PID/pagemap entry bits (Documentation/admin-guide/mm/pagemap.rst)
_PRESENT, _SWAPPED, _FILE_OR_SHARED, _EXCLUSIVE = 1 << 63, 1 << 62, 1 << 61, 1 << 56
_PFN_MASK = (1 << 55) - 1
_KPF_ZERO_PAGE = 1 << 24


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("length", ctypes.c_size_t)]


def _error(call: str, number: int) -> str:
    return f"{call} failed: {errno.errorcode.get(number, str(number))} ({os.strerror(number)})"


def _pidfd_open(pid: int) -> int:
    fd = _libc.syscall(ctypes.c_long(SYS_PIDFD_OPEN), ctypes.c_long(pid), ctypes.c_long(0))
    if fd < 0:
        number = ctypes.get_errno()
        if number == errno.ESRCH:
            raise SnapshotError(f"process {pid} does not exist (exited?)")
        raise SnapshotError(_error("pidfd_open", number))
    return fd


def _process_madvise(pidfd: int, vectors, count: int) -> int:
    done = _libc.syscall(ctypes.c_long(SYS_PROCESS_MADVISE), ctypes.c_long(pidfd), vectors, ctypes.c_long(count),
                         ctypes.c_long(MADV_PAGEOUT), ctypes.c_long(0))
    if done < 0:
        raise OSError(ctypes.get_errno(), "process_madvise")
    return done


def page_out(pid: int, spans: list[tuple[int, int]]) -> None:
    """Ask the kernel to page out [start, end) of each span of process `pid` (MADV_PAGEOUT), once from each CPU this
    thread may run on: a page faulted in lately still waits in its CPU's LRU batch, and the advice drains only the
    batch of the CPU it runs on, so from one CPU it leaves such pages in RAM (seen here: a target's heap pages, under
    load). A page already out is skipped by the later passes."""
    cpus = os.sched_getaffinity(0)
    pidfd = _pidfd_open(pid)
    try:
        for cpu in sorted(cpus):
            os.sched_setaffinity(0, {cpu})
            _advise_pageout(pidfd, pid, spans)
    finally:
        os.sched_setaffinity(0, cpus)
        os.close(pidfd)


def _advise_pageout(pidfd: int, pid: int, spans: list[tuple[int, int]]) -> None:
    """MADV_PAGEOUT over `spans`, IOV_MAX spans a call; a call that advised only part of its spans (it returns the
    bytes done) is resumed where it stopped."""
    pending = list(spans)
    while pending:
        batch = pending[:IOV_MAX]
        vectors = (_IoVec * len(batch))(*[_IoVec(start, end - start) for start, end in batch])
        try:
            done = _process_madvise(pidfd, vectors, len(batch))
        except OSError as exc:
            raise SnapshotError(_error(f"process_madvise(MADV_PAGEOUT) of process {pid}", exc.errno)) from exc
        while pending and done >= pending[0][1] - pending[0][0]:
            done -= pending[0][1] - pending[0][0]
            pending.pop(0)
        if done and pending:
            pending[0] = (pending[0][0] + done, pending[0][1])


def _wait_for_writeback(timeout: float = WRITEBACK_TIMEOUT_S) -> None:
    """Swap writes are asynchronous: a page already shows its swap slot in pagemap while its write is in flight.
    Wait until the machine has no page under writeback, so every slot read back holds what was written."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        with open("/proc/vmstat") as f:
            pending = next(int(line.split()[1]) for line in f if line.startswith("nr_writeback "))
        if pending == 0:
            return
        if time.monotonic() > deadline:
            raise SnapshotError(f"{pending} pages still under writeback after {timeout:g}s: the swap image would be incomplete")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def _pagemap(pid_or_self: str, start: int, end: int) -> array.array:
    entries = array.array("Q")
    with open(f"/proc/{pid_or_self}/pagemap", "rb", buffering=0) as f:
        f.seek(start // PAGE_SIZE * 8)
        entries.frombytes(f.read((end - start) // PAGE_SIZE * 8))
    return entries


def _swap_slot(entry: int) -> tuple[int, int]:
    """(swap type, slot) of a swapped-out pagemap entry."""
    return entry & 0x1F, (entry >> 5) & ((1 << 50) - 1)


def _is_zero_page(pfn: int) -> bool:
    try:
        with open("/proc/kpageflags", "rb", buffering=0) as f:
            f.seek(pfn * 8)
            return bool(int.from_bytes(f.read(8), "little") & _KPF_ZERO_PAGE)
    except OSError:
        return False


def active_swap_files() -> list[tuple[str, int]]:
    """(path, priority) of every active swap area, in /proc/swaps order."""
    try:
        lines = Path("/proc/swaps").read_text().splitlines()[1:]
    except OSError:
        return []
    areas = []
    for line in lines:
        fields = line.split()
        # /proc/swaps escapes blanks in paths as octal (\040)
        areas.append((fields[0].encode().decode("unicode_escape"), int(fields[-1])))
    return areas


def _page_out_own(page: mmap.mmap, content: bytes) -> int:
    """Write `content` into `page` (one page of ours), page it out, and return its pagemap entry. The page is kept
    out of forks: another thread of the harness forking (a target, gdb) shares it with the child until the child
    execs, and MADV_PAGEOUT leaves a shared page in RAM (seen: 2 probes in 400 beside a thread that forks)."""
    page.madvise(mmap.MADV_DONTFORK)
    page.write(content)
    address = _address(page)
    page_out(os.getpid(), [(address, address + PAGE_SIZE)])
    return _pagemap("self", address, address + PAGE_SIZE)[0]


def _address(page: mmap.mmap) -> int:
    anchor = ctypes.c_char.from_buffer(page)   # an export of the buffer: it must not outlive this call
    address = ctypes.addressof(anchor)
    del anchor
    return address


def _rivals() -> list[str]:
    """The other swap areas at our priority. One a killed harness left on is released first, as the next harness
    start would: it holds no lock, and until then it would stop every swap snapshot (where its sentinel is releasing
    it at this moment, the release waits for that one to end)."""
    for path, priority in active_swap_files():
        if priority >= SWAP_PRIORITY and Path(path).name == SWAP_FILE and abandoned(Path(path)):
            with contextlib.suppress(OSError, SnapshotError):
                release_swap_file(Path(path))
    return [path for path, priority in active_swap_files() if priority >= SWAP_PRIORITY]


class SwapArea:
    """A private swap file, swapped on at the highest priority, for one snapshot. `type` is its index among the
    kernel's swap areas (the type in swap entries), found by paging out a page of ours and reading its entry."""

    def __init__(self, folder: Path, pages: int):
        self.path = folder / SWAP_FILE
        self.pages = pages + 1               # slot 0 is the header
        self.on = False
        self.type: int | None = None

    def create(self) -> None:
        if rivals := _rivals():
            raise SnapshotError(f"another swap area has priority {SWAP_PRIORITY} ({', '.join(rivals)}): "
                                "the target's pages could go there instead")
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            _write_zeros(fd, self.pages * PAGE_SIZE)
        finally:
            os.close(fd)
        made = subprocess.run(["mkswap", str(self.path)], capture_output=True, text=True, timeout=60)
        if made.returncode != 0:
            raise SnapshotError(f"mkswap {self.path} failed: {(made.stderr or made.stdout).strip()}")
        if _libc.swapon(os.fsencode(self.path), SWAP_FLAG_PREFER | SWAP_PRIORITY) != 0:
            number = ctypes.get_errno()
            why = {errno.EPERM: "not permitted (no CAP_SYS_ADMIN, or a container forbids it)",
                   errno.EINVAL: f"the file system of {self.path.parent} cannot hold a swap file"}.get(number, "")
            raise SnapshotError(f"the kernel refused swapon: {_error('swapon', number)}" + (f": {why}" if why else ""))
        self.on = True
        self.type = self._own_type()

    def _own_type(self) -> int:
        """Page out one page of ours (written with zeros, so its slot reads the same as the fresh file) and read
        the swap type of its entry: the kernel puts it in the highest-priority area, this one."""
        page = mmap.mmap(-1, PAGE_SIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        try:
            entry = _page_out_own(page, bytes(PAGE_SIZE))
            if not entry & _SWAPPED:
                raise SnapshotError("a page of the harness did not go to swap (MADV_PAGEOUT had no effect)")
            return _swap_slot(entry)[0]
        finally:
            page.close()

    def read_slot_run(self, fd: int, slot: int, count: int, buffer: mmap.mmap) -> memoryview:
        """`count` consecutive slots, read with O_DIRECT into the page-aligned `buffer`."""
        view = memoryview(buffer)[:count * PAGE_SIZE]
        got = os.preadv(fd, [view], slot * PAGE_SIZE)
        if got != len(view):
            raise SnapshotError(f"short read of swap slots {slot}..{slot + count - 1} of {self.path}")
        return view

    def release(self) -> None:
        release_swap_file(self.path, self.on)
        self.on = False


def _write_zeros(fd: int, size: int) -> None:
    zeros = bytes(_CHUNK)
    written = 0
    while written < size:
        written += os.write(fd, zeros[:min(_CHUNK, size - written)])
    os.fsync(fd)


def release_swap_file(path: Path, on: bool = True) -> None:
    """Swap the file off (its pages go back to their processes), overwrite it with zeros (the target's pages must not
    stay in the disk's free blocks) and delete it."""
    if on and _libc.swapoff(os.fsencode(path)) != 0:
        number = ctypes.get_errno()
        if number == errno.ENOENT:          # another release has deleted it already
            return
        if number != errno.EINVAL:
            raise SnapshotError(f"swapoff {path}: {_error('swapoff', number)}")
        _wait_swapped_off(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        _write_zeros(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)
    path.unlink(missing_ok=True)


def _wait_swapped_off(path: Path) -> None:
    """swapoff says EINVAL for a file that is not on, and for one another process is swapping off at this moment
    (two harnesses releasing the same abandoned area). Until that ends, the kernel still reads the file's slots back:
    zeroing it now would hand zeros to the processes, and the area would outlive our release."""
    deadline = time.monotonic() + ABANDONED_RELEASE_S
    while any(Path(active) == path for active, _ in active_swap_files()):
        if time.monotonic() > deadline:
            raise SnapshotError(f"{path} is still a swap area {ABANDONED_RELEASE_S:.0f} s after another process "
                                "began to swap it off")
        time.sleep(0.01)


def release_swap_under(folder: Path) -> list[str]:
    """Release every active swap file of ours under `folder` (the work folder of a harness that is gone); returns
    their paths."""
    released = []
    for path, _ in active_swap_files():
        if Path(path).name == SWAP_FILE and Path(path).is_relative_to(folder):
            with contextlib.suppress(OSError, SnapshotError):
                release_swap_file(Path(path))
                released.append(path)
    return released


@contextlib.contextmanager
def _machine_lock():
    """Swap is machine-wide: at most one swap snapshot at a time, whichever harness takes it. The lock file is
    deleted by its holder, so none stays behind; one locked after its deletion is not the lock: open it again."""
    while True:
        fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if os.stat(LOCK_FILE).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        yield
    finally:
        LOCK_FILE.unlink(missing_ok=True)
        os.close(fd)


@contextlib.contextmanager
def swap_area(folder: Path, pages: int):
    """A SwapArea of `pages` pages in `folder`, on for the block; swapped off, zeroed and deleted afterwards,
    after an error or an interrupt too."""
    with _machine_lock():
        area = SwapArea(folder, pages)
        try:
            area.create()
            yield area
        finally:
            area.release()


# --- which pages of the target go where ------------------------------------------------------------------------------

def _pageable(m: LiveMapping) -> bool:
    """Private memory the process could have written: what MADV_PAGEOUT sends to swap."""
    return m.perms.endswith("p") and m.kind not in (RegionKind.KERNEL, RegionKind.VDSO) \
        and not _REFUSED_FLAGS.intersection(m.vm_flags) and not m.untouched


def _page_fate(m: LiveMapping, entry: int, own_type: int) -> tuple[GapKind | None, str]:
    """Where one page of a pageable mapping is after the page-out: (None, "") in our swap area, else the gap it makes."""
    if entry & _SWAPPED:
        kind = _swap_slot(entry)[0]
        return (None, "") if kind == own_type else (GapKind.UNREADABLE, f"in another swap area (type {kind}), not read")
    if entry & _FILE_OR_SHARED:
        return GapKind.EXCLUDED, _FILE_PAGE
    if not entry & _PRESENT:
        if m.kind == RegionKind.FILE:
            return GapKind.EXCLUDED, _FILE_PAGE
        return GapKind.UNTOUCHED, "no page (never written): reads as zeros"
    if m.locked:
        return GapKind.EXCLUDED, LOCKED_REASON
    if _is_zero_page(entry & _PFN_MASK):
        return GapKind.UNTOUCHED, "the shared zero page (only read, never written): reads as zeros"
    if not entry & _EXCLUSIVE:
        return GapKind.UNREADABLE, "shared with another process: MADV_PAGEOUT leaves it in RAM"
    return GapKind.UNREADABLE, "stayed in RAM after MADV_PAGEOUT"


def _swapped_pages(pid: int, mappings: list[LiveMapping], own_type: int, gaps: list[Gap]
                   ) -> list[tuple[LiveMapping, int, int]]:
    """(mapping, address, slot) of every page of `pid` in our area, in address order; every other page is added to
    `gaps` (runs of pages with the same fate merged)."""
    pages = []
    for m in mappings:
        if not _pageable(m):
            if m.kind == RegionKind.KERNEL or m.kind == RegionKind.VDSO:
                gaps.append(Gap(m.start, m.size, m.name, GapKind.KERNEL, "kernel-provided mapping, not paged out", m.dont_dump, m.perms))
            elif m.untouched:
                gaps.append(Gap(m.start, m.size, m.name, GapKind.UNTOUCHED, "no page ever touched (Rss and Swap 0): reads as zeros",
                                m.dont_dump, m.perms))
            else:
                gaps.append(Gap(m.start, m.size, m.name, GapKind.UNREADABLE,
                                "shared or device mapping: swap takes private memory only", m.dont_dump, m.perms))
            continue
        run_start, run_fate = m.start, None
        for index, entry in enumerate(_pagemap(str(pid), m.start, m.end)):
            address = m.start + index * PAGE_SIZE
            fate = _page_fate(m, entry, own_type)
            if fate != run_fate:
                if run_fate is not None and run_fate[0] is not None:
                    gaps.append(Gap(run_start, address - run_start, m.name, run_fate[0], run_fate[1], m.dont_dump, m.perms))
                run_start, run_fate = address, fate
            if fate[0] is None:
                pages.append((m, address, _swap_slot(entry)[1]))
        if run_fate is not None and run_fate[0] is not None:
            gaps.append(Gap(run_start, m.end - run_start, m.name, run_fate[0], run_fate[1], m.dont_dump, m.perms))
    return pages


def _copy_slots(area: SwapArea, pages: list[tuple[LiveMapping, int, int]], out) -> list[Region]:
    """Read each page's slot past the page cache into `out`, in address order; one region per run of consecutive
    addresses in one mapping, its file offset where the run starts in `out`."""
    regions: list[Region] = []
    buffer = mmap.mmap(-1, _CHUNK)            # page-aligned, as O_DIRECT wants
    fd = os.open(area.path, os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC)
    try:
        i = 0
        while i < len(pages):
            m, address, slot = pages[i]
            run = 1                   # pages continuing both the address and the slot: one read
            while i + run < len(pages) and run < _CHUNK // PAGE_SIZE and pages[i + run][0] is m \
                    and pages[i + run][1] == address + run * PAGE_SIZE and pages[i + run][2] == slot + run:
                run += 1
            offset = out.tell()
            out.write(area.read_slot_run(fd, slot, run, buffer))
            last = regions[-1] if regions else None
            if last and last.end == address and m.start <= last.start:    # the same mapping goes on
                regions[-1] = replace(last, size=last.size + run * PAGE_SIZE)
            else:
                regions.append(Region(start=address, size=run * PAGE_SIZE, perms=m.perms, kind=m.kind, name=m.name,
                                      file_offset=offset, locked=m.locked, dont_dump=m.dont_dump, vm_flags=m.vm_flags))
            i += run
    finally:
        os.close(fd)
        buffer.close()
    return regions


def _area_pages(mappings: list[LiveMapping]) -> int:
    """Slots enough for every resident page of the pageable mappings, with a margin."""
    resident = sum(m.resident_kb * 1024 // PAGE_SIZE for m in mappings if _pageable(m) and not m.locked)
    return resident + resident // 8 + 256


def take_swap(pid: int, folder: Path) -> Snapshot:
    """Page the stopped process `pid` out to a private swap area in `folder` and copy what went there into a scratch
    file. The caller keeps the process stopped; swapoff brings its pages back before this returns."""
    started = time.monotonic()
    mappings = read_mappings(pid)
    if not mappings:
        raise SnapshotError(f"process {pid} has no memory mappings (exited?)")
    gaps: list[Gap] = []
    image = scratch.create(f"swap-{pid}")
    try:
        with swap_area(folder, _area_pages(mappings)) as area:
            paged_at = time.monotonic()
            # MADV_PAGEOUT refuses a locked mapping (EINVAL): its pages are judged from pagemap, they stay in RAM.
            page_out(pid, [(m.start, m.end) for m in mappings if _pageable(m) and "lo" not in m.vm_flags])
            _wait_for_writeback()
            paged_for = time.monotonic() - paged_at
            mappings = read_mappings(pid)
            pages = _swapped_pages(pid, mappings, area.type, gaps)
            with open(image, "wb", buffering=0) as out:
                regions = _copy_slots(area, pages, out)
            size = area.pages * PAGE_SIZE
    except BaseException:
        scratch.discard(image)
        raise
    locked = sum(g.size for g in gaps if g.reason == LOCKED_REASON)
    snapshot = Snapshot(method="swap", path=image, regions=regions, gaps=gaps, pid=pid,
                        duration_s=time.monotonic() - started)
    snapshot.notes = [f"{len(pages)} pages ({len(pages) * PAGE_SIZE / (1 << 20):.1f} MiB) paged out with MADV_PAGEOUT in "
                      f"{paged_for:.3f}s to a private swap file of {size / (1 << 20):.1f} MiB (type {area.type}, priority "
                      f"{SWAP_PRIORITY}), read back with O_DIRECT; swapped off and deleted afterwards",
                      f"{locked} bytes locked in RAM (mlock) stayed resident"]
    return snapshot


# --- availability ------------------------------------------------------------------------------------------------------

def swap_unavailable() -> str | None:
    """None if this machine lets the harness swap a target out and read the swap back, else why not."""
    if not has_capability(CAP_SYS_ADMIN):
        return "needs CAP_SYS_ADMIN (root) to swapon a swap file and to read swap entries in /proc/PID/pagemap"
    if shutil.which("mkswap") is None:
        return "mkswap not found on PATH (util-linux)"
    if _libc.syscall(ctypes.c_long(SYS_PROCESS_MADVISE), ctypes.c_long(-1), None, ctypes.c_long(0),
                     ctypes.c_long(MADV_PAGEOUT), ctypes.c_long(0)) < 0 and ctypes.get_errno() == errno.ENOSYS:
        return "the kernel has no process_madvise (ENOSYS: Linux 5.10 or later needed)"
    return _self_test()


@functools.lru_cache(maxsize=1)
def _self_test() -> str | None:
    """Swap a page of known bytes out to a small area of ours and find them in its slot: swapon is allowed here,
    pagemap shows swap entries, and the O_DIRECT read sees what swap wrote. Once per harness."""
    from ..workspace import workspace
    page = mmap.mmap(-1, PAGE_SIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    known = secrets.token_bytes(PAGE_SIZE)
    try:
        with swap_area(workspace().root, 64) as area:
            entry = _page_out_own(page, known)
            _wait_for_writeback()
            kind, slot = _swap_slot(entry)
            if not entry & _SWAPPED or kind != area.type:
                return "a page paged out with MADV_PAGEOUT did not show up in the swap area (pagemap)"
            buffer = mmap.mmap(-1, PAGE_SIZE)
            fd = os.open(area.path, os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC)
            try:
                if bytes(area.read_slot_run(fd, slot, 1, buffer)) != known:
                    return "the swap slot read back with O_DIRECT did not hold the page written to it"
            finally:
                os.close(fd)
                buffer.close()
    except (SnapshotError, OSError) as exc:
        return str(exc)
    finally:
        page.close()
    return None
