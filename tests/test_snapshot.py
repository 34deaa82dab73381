"""Snapshot methods against a real target process (compiled here with gcc) and real gdb."""
from __future__ import annotations

import errno
import io
import os
import resource
import shutil
import signal
import stat
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from target_driver import read_stdout_line

from remanence.model import GapKind, RegionKind, Secret, iter_region_chunks
from remanence.scan.context import hit_context, secret_material
from remanence.scan.engine import ScanError, scan_snapshot
from remanence.snapshot import LIVE_METHODS, METHODS, SnapshotError, dispose_snapshot, held_still, method_unavailable, \
    scratch, take_snapshot
from remanence.snapshot import gcore as gcore_module
from remanence.snapshot import procmem as procmem_module
from remanence.snapshot.elfcore import CoreFormatError, read_core_layout, snapshot_from_core
from remanence.snapshot.procmaps import read_mappings

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None or shutil.which("gdb") is None, reason="needs gcc and gdb")

PAGE = os.sysconf("SC_PAGE_SIZE")

# Reads a 32-byte marker into (a) malloc, (b) a MADV_DONTDUMP page, (c) a page then made PROT_NONE; also maps
# (d) 3 pages of a 1-page file (pages 2-3 lie past EOF: unreadable). A second thread idles so there are two.
# Copies byte by byte so no SIMD register keeps the marker. Prints the 4 addresses, "ready", then answers
# 'p' with "pong" until stdin closes.
HELPER_C = r"""
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

static int idle_pipe[2];
static void *idle_thread(void *arg) { char c; (void)arg; (void)!read(idle_pipe[0], &c, 1); return NULL; }

int main(int argc, char **argv) {
    long page = sysconf(_SC_PAGESIZE);
    volatile unsigned char *heap = malloc(64);
    volatile unsigned char *dont_dump = mmap(NULL, page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    volatile unsigned char *no_access = mmap(NULL, page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    int fd = argc > 1 ? open(argv[1], O_RDONLY) : -1;
    void *partial = fd >= 0 ? mmap(NULL, 3 * page, PROT_READ, MAP_PRIVATE, fd, 0) : MAP_FAILED;
    unsigned char marker[32];
    pthread_t tid;
    size_t got = 0;
    if (!heap || dont_dump == MAP_FAILED || no_access == MAP_FAILED || partial == MAP_FAILED) return 2;
    if (madvise((void *)dont_dump, page, MADV_DONTDUMP) != 0) return 3;
    if (pipe(idle_pipe) != 0 || pthread_create(&tid, NULL, idle_thread, NULL) != 0) return 4;
    while (got < 32) { ssize_t n = read(0, marker + got, 32 - got); if (n <= 0) return 5; got += n; }
    for (int i = 0; i < 32; i++) { heap[i] = marker[i]; dont_dump[i] = marker[i]; no_access[i] = marker[i]; marker[i] = 0; }
    if (mprotect((void *)no_access, page, PROT_NONE) != 0) return 6;
    printf("%lx %lx %lx %lx\nready\n", (unsigned long)heap, (unsigned long)dont_dump, (unsigned long)no_access,
           (unsigned long)partial);
    fflush(stdout);
    char c;
    while (read(0, &c, 1) == 1)
        if (c == 'p') { printf("pong\n"); fflush(stdout); }
    return 0;
}
"""


@pytest.fixture(scope="session")
def helper_binary(tmp_path_factory) -> Path:
    build = tmp_path_factory.mktemp("helper")
    (build / "helper.c").write_text(HELPER_C)
    subprocess.run(["gcc", "-O0", "-pthread", "-o", str(build / "helper"), str(build / "helper.c")], check=True)
    return build / "helper"


def _read_line(proc: subprocess.Popen, timeout: float = 5.0) -> bytes:
    return read_stdout_line(proc, timeout)


class Target:
    def __init__(self, binary: Path, workdir: Path, **popen_args):
        self.file = workdir / "onepage"
        self.file.write_bytes(b"P" * PAGE)
        self.marker = os.urandom(32)
        self.proc = subprocess.Popen([str(binary), str(self.file)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     bufsize=0, start_new_session=True, **popen_args)
        self.pid = self.proc.pid
        self.proc.stdin.write(self.marker)
        self.heap, self.dont_dump, self.no_access, self.partial = (int(x, 16) for x in _read_line(self.proc).split())
        assert _read_line(self.proc) == b"ready\n"

    def responds(self, timeout: float = 5.0) -> bool:
        """True when the target answers a ping: it is running, not stopped."""
        self.proc.stdin.write(b"p")
        try:
            return _read_line(self.proc, timeout) == b"pong\n"
        except TimeoutError:
            return False

    def state(self) -> str:
        return Path(f"/proc/{self.pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0].decode()

    def close(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGCONT)
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def target(helper_binary, tmp_path):
    t = Target(helper_binary, tmp_path)
    yield t
    t.close()


def marker_hits(snapshot, marker: bytes) -> list[tuple[object, int]]:
    """(region, address or offset within a note) of every copy of `marker` in the snapshot."""
    hits = set()
    for region in snapshot.regions:
        for offset, data in iter_region_chunks(snapshot.path, region, 1 << 20, overlap=len(marker) - 1):
            at = data.find(marker)
            while at >= 0:
                in_region = offset + at
                hits.add((region, in_region if region.kind in (RegionKind.REGISTERS, RegionKind.NOTE) else region.start + in_region))
                at = data.find(marker, at + 1)
    return sorted(hits, key=lambda h: (h[0].start, h[1]))


def marker_addresses(snapshot, marker: bytes) -> set[int]:
    return {addr for region, addr in marker_hits(snapshot, marker) if region.kind not in (RegionKind.REGISTERS, RegionKind.NOTE)}


def gap_at(snapshot, address: int):
    return [g for g in snapshot.gaps if g.start <= address < g.start + g.size]


# --- procmaps ------------------------------------------------------------------------------------------

def test_read_mappings_kinds_and_flags(target):
    mappings = read_mappings(target.pid)
    by_start = {m.start: m for m in mappings}
    names = {m.name: m for m in mappings}
    assert by_start[target.dont_dump].dont_dump is True and "dd" in by_start[target.dont_dump].vm_flags
    assert by_start[target.no_access].perms == "---p" and by_start[target.no_access].dont_dump is False
    assert by_start[target.partial].name == str(target.file) and by_start[target.partial].kind == RegionKind.FILE
    assert by_start[target.partial].size == 3 * PAGE
    heap = next(m for m in mappings if m.start <= target.heap < m.end)
    assert heap.name == "[heap]" and heap.kind == RegionKind.HEAP
    assert names["[stack]"].kind == RegionKind.STACK and names["[vdso]"].kind == RegionKind.VDSO
    assert names["[vvar]"].kind == RegionKind.KERNEL
    assert by_start[target.dont_dump].kind == RegionKind.ANONYMOUS and by_start[target.dont_dump].name == ""
    assert [m.start for m in mappings] == sorted(m.start for m in mappings)


# --- procmem -------------------------------------------------------------------------------------------

def test_procmem_sees_all_three_copies_with_flags(target, tmp_path):
    snap = take_snapshot("procmem", target.pid)
    assert snap.method == "procmem" and snap.duration_s > 0
    assert stat.S_IMODE(snap.path.stat().st_mode) == 0o600
    assert marker_addresses(snap, target.marker) == {target.heap, target.dont_dump, target.no_access}
    heap, dont_dump, no_access = (snap.region_at(a) for a in (target.heap, target.dont_dump, target.no_access))
    assert heap.kind == RegionKind.HEAP and heap.name == "[heap]" and heap.dont_dump is False
    assert dont_dump.dont_dump is True and "dd" in dont_dump.vm_flags and dont_dump.kind == RegionKind.ANONYMOUS
    assert no_access.perms == "---p" and no_access.dont_dump is False
    vvar = [g for g in snap.gaps if g.name == "[vvar]"]
    assert len(vvar) == 1 and vvar[0].kind == GapKind.KERNEL
    assert not any(r.name in ("[vvar]", "[vvar_vclock]", "[vsyscall]") for r in snap.regions)
    # /proc/PID/mem reads nothing else as EIO on this target but the pages past the file's end.
    assert {g.name for g in snap.gaps if g.kind == GapKind.UNREADABLE} == {str(target.file)}


def test_procmem_keeps_readable_part_of_partly_unreadable_mapping(target, tmp_path):
    snap = take_snapshot("procmem", target.pid)
    region = snap.region_at(target.partial)
    assert region.start == target.partial and region.size == PAGE and region.name == str(target.file)
    assert b"".join(data for _, data in iter_region_chunks(snap.path, region, 1 << 20)) == b"P" * PAGE
    gaps = gap_at(snap, target.partial + PAGE)
    assert len(gaps) == 1
    gap = gaps[0]
    assert (gap.start, gap.size, gap.kind) == (target.partial + PAGE, 2 * PAGE, GapKind.UNREADABLE)
    assert gap.reason == f"EIO reading /proc/{target.pid}/mem"


def test_procmem_small_chunks_give_same_layout(target, tmp_path):
    big = procmem_module.take_procmem(target.pid)
    small = procmem_module.take_procmem(target.pid, chunk_size=2 * PAGE)
    def layout(snap):
        return [(r.start, r.size) for r in snap.regions], [(g.start, g.size, g.kind) for g in snap.gaps]

    assert layout(big) == layout(small)
    assert marker_addresses(small, target.marker) == {target.heap, target.dont_dump, target.no_access}


def test_procmem_freezes_every_thread_and_resumes(target, tmp_path, monkeypatch):
    seen_states = []
    real_read_mappings = procmem_module.read_mappings

    def spying_read_mappings(pid):
        seen_states.append({tid: Path(f"/proc/{pid}/task/{tid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
                            for tid in os.listdir(f"/proc/{pid}/task")})
        return real_read_mappings(pid)

    monkeypatch.setattr(procmem_module, "read_mappings", spying_read_mappings)
    take_snapshot("procmem", target.pid)
    assert len(seen_states[0]) == 2 and set(seen_states[0].values()) == {b"T"}
    assert target.state() != "T" and target.responds()


def open_memory_files() -> set[str]:
    """The scratch (memfd) files this process holds: a snapshot's memory copy lives in one."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:"):
                found.add(fd)
        except OSError:     # the descriptor listdir itself used
            pass
    return found


def test_procmem_resumes_target_and_removes_file_when_reading_fails(target, tmp_path, monkeypatch):
    def failing_copy(*args, **kwargs):
        raise RuntimeError("simulated failure mid-snapshot")

    monkeypatch.setattr(procmem_module, "_copy_mapping", failing_copy)
    before = open_memory_files()
    with pytest.raises(RuntimeError, match="simulated"):
        take_snapshot("procmem", target.pid)
    assert open_memory_files() == before
    assert target.responds()


def open_descriptors() -> dict[str, str]:
    """What every descriptor of this process points at (a streamed capture must leave none open)."""
    found = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            found[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:     # the descriptor listdir itself used
            pass
    return found


def layout(snap):
    return [(r.start, r.size, r.name) for r in snap.regions], [(g.start, g.size, g.kind, g.reason) for g in snap.gaps]


def test_streamed_capture_scans_the_stopped_process_in_place(target):
    marker = Secret("marker", target.marker)
    before = open_descriptors()
    seen = {}

    def inspect(snap):
        seen["state"] = target.state()
        seen["path"] = snap.path
        seen["in_place"] = all(r.file_offset == r.start for r in snap.regions)
        result = scan_snapshot(snap, [marker])
        hit = next(h for h in result.hits if h.address == target.no_access)
        seen["context"] = hit_context(snap, hit, secret_material(marker)).data
        return result

    snap, result = procmem_module.capture_procmem(target.pid, inspect)
    assert seen["state"] == "T"
    assert seen["path"] == Path(f"/proc/{target.pid}/mem") and seen["in_place"]
    # heap, MADV_DONTDUMP and PROT_NONE copies, each at its own address
    assert {h.address for h in result.hits if h.full} == {target.heap, target.dont_dump, target.no_access}
    assert target.marker in seen["context"]
    assert snap.region_at(target.no_access).perms == "---p"
    region = snap.region_at(target.partial)          # the file's one page reads; the two past its end do not
    assert (region.start, region.size) == (target.partial, PAGE)
    gap = gap_at(snap, target.partial + PAGE)[0]
    assert (gap.start, gap.size, gap.kind, gap.reason) == (
        target.partial + PAGE, 2 * PAGE, GapKind.UNREADABLE, f"EIO reading /proc/{target.pid}/mem")
    assert [g.kind for g in snap.gaps if g.name == "[vvar]"] == [GapKind.KERNEL]
    assert snap.streamed and snap.pid == target.pid and "streamed" in snap.notes[-1]
    # The process runs again, nothing of the capture stays open, and the snapshot no longer reads the process.
    assert target.state() != "T" and target.responds()
    assert open_descriptors() == before
    assert not snap.path.exists()
    with pytest.raises(OSError):
        list(iter_region_chunks(snap.path, region, PAGE))
    dispose_snapshot(snap, None, "")                 # frees nothing, removes nothing
    assert Path(f"/proc/{target.pid}/mem").exists() and target.responds()


@pytest.mark.parametrize("vm_readv", ["used", "refusing"])
def test_streamed_and_copied_capture_agree(target, monkeypatch, vm_readv):
    """Readable mappings are read with process_vm_readv; where it refuses, /proc/PID/mem gives the same bytes."""
    marker = Secret("marker", target.marker)
    real, calls = procmem_module._process_vm_readv, []

    def recording(*args):
        calls.append(args)
        return real(*args) if vm_readv == "used" else -1
    monkeypatch.setattr(procmem_module, "_process_vm_readv", recording)
    streamed, streamed_hits = procmem_module.capture_procmem(target.pid, lambda s: scan_snapshot(s, [marker]).hits)
    kept, kept_hits = procmem_module.capture_procmem(target.pid, lambda s: scan_snapshot(s, [marker]).hits, keep=True)
    try:
        assert layout(streamed) == layout(kept)
        assert not kept.streamed and scratch.is_scratch(kept.path) and "kept snapshot" in kept.notes[-1]
        assert [(h.address, h.encoding) for h in streamed_hits] == [(h.address, h.encoding) for h in kept_hits]
        assert marker_addresses(kept, target.marker) == {target.heap, target.dont_dump, target.no_access}
        assert calls
    finally:
        dispose_snapshot(kept, None, "")


def test_streamed_memory_that_fails_to_read_during_the_scan_is_a_scan_error(target, monkeypatch):
    """Memory found readable at the capture that then fails (here: a probe pretending the pages past the mapped file's
    end read) makes the scan fail with the place named, never a silent hole in the scan."""
    monkeypatch.setattr(procmem_module, "_read_span", lambda mem_fd, out, pid, start, end, buffer: [(start, end, start, None)])
    before = open_descriptors()
    with pytest.raises(ScanError, match=rf"cannot read region {target.file} at offset {target.partial + PAGE:#x}"):
        procmem_module.capture_procmem(target.pid, lambda s: scan_snapshot(s, [Secret("marker", target.marker)]))
    assert open_descriptors() == before
    assert target.responds()


# A private anonymous mapping of 64 pages: pages 10 and 40 touched, the others never. A marker ending in 4 zero bytes
# is written so that its zeros fall into the untouched page 11, and a whole one inside page 40.
SPARSE_HOLDER = r"""
import ctypes, mmap, sys
page = mmap.PAGESIZE
area = mmap.mmap(-1, 64 * page, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
marker = sys.stdin.buffer.read(32)
area[11 * page - 28:11 * page] = marker[:28]
area[40 * page + 100:40 * page + 132] = marker
print(hex(ctypes.addressof(ctypes.c_char.from_buffer(area))), flush=True)
sys.stdin.buffer.read()
"""


def pages_present(pid: int, start: int, count: int) -> list[bool]:
    with open(f"/proc/{pid}/pagemap", "rb") as f:
        f.seek(8 * (start // PAGE))
        entries = f.read(8 * count)
    return [bool(int.from_bytes(entries[i:i + 8], "little") >> 62) for i in range(0, len(entries), 8)]


def test_streamed_scan_fills_untouched_pages_with_zeros_without_reading_them():
    marker = Secret("marker", os.urandom(28) + bytes(4))
    holder = subprocess.Popen([sys.executable, "-c", SPARSE_HOLDER], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        holder.stdin.write(marker.value)
        holder.stdin.flush()
        area = int(holder.stdout.readline(), 16)

        def inspect(snap):
            region = snap.region_at(area)
            hits = scan_snapshot(snap, [marker]).hits
            present_after_scan = pages_present(holder.pid, area, 64)
            streamed = b"".join(data for _, data in iter_region_chunks(snap.path, region, 1 << 20))
            return region, hits, present_after_scan, streamed

        snap, (region, hits, present, read_through_proc) = procmem_module.capture_procmem(holder.pid, inspect)
        assert (region.start, region.size) == (area, 64 * PAGE)
        # the copy whose zero tail lies in the untouched page is whole, as a read of that page would make it
        assert [(h.address, h.full) for h in hits if region.contains(h.address)] == [
            (area + 11 * PAGE - 28, True), (area + 40 * PAGE + 100, True)]
        # the scan faulted nothing into the target: the untouched pages are still neither resident nor swapped
        assert [i for i, p in enumerate(present) if p] == [10, 40]
        assert read_through_proc[11 * PAGE - 28:11 * PAGE + 4] == marker.value   # and reading them gives zeros too
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)


@pytest.mark.parametrize("keep", [False, True])
def test_capture_resumes_and_frees_everything_when_inspect_fails(target, keep):
    before = open_descriptors()

    def failing(snap):
        raise RuntimeError("simulated failure while scanning")

    with pytest.raises(RuntimeError, match="simulated"):
        procmem_module.capture_procmem(target.pid, failing, keep=keep)
    assert open_descriptors() == before
    assert target.responds()


def test_held_capture_leaves_the_process_stopped(target):
    with held_still(target.pid):
        snap, state = procmem_module.capture_procmem(target.pid, lambda s: target.state(), held=True)
        assert state == "T" and target.state() == "T"
        assert "stopped by the caller" in snap.notes[0]
    assert target.responds()


# --- gcore ---------------------------------------------------------------------------------------------

def test_gcore_honours_dont_dump(target, tmp_path):
    snap = take_snapshot("gcore", target.pid)
    assert snap.method == "gcore" and stat.S_IMODE(snap.path.stat().st_mode) == 0o600
    assert snap.notes[0].startswith("GNU gdb")
    assert marker_addresses(snap, target.marker) == {target.heap, target.no_access}
    assert snap.region_at(target.dont_dump) is None
    gaps = gap_at(snap, target.dont_dump)
    assert len(gaps) == 1
    assert (gaps[0].kind, gaps[0].reason, gaps[0].dont_dump) == (GapKind.EXCLUDED, "MADV_DONTDUMP", True)
    assert (gaps[0].start, gaps[0].size) == (target.dont_dump, PAGE)
    # gdb writes PROT_NONE pages with p_flags "r": the region keeps the live permissions.
    assert snap.region_at(target.no_access).perms == "---p"
    assert [g.kind for g in snap.gaps if g.name == "[vvar]"] == [GapKind.KERNEL]
    assert target.responds()


def test_gcore_all_dumps_excluded_mappings(target, tmp_path):
    snap = take_snapshot("gcore-all", target.pid)
    assert snap.method == "gcore-all"
    assert marker_addresses(snap, target.marker) == {target.heap, target.dont_dump, target.no_access}
    assert snap.region_at(target.dont_dump).dont_dump is True
    assert gap_at(snap, target.dont_dump) == []
    assert target.responds()


def test_gcore_all_overrides_a_lowered_coredump_filter(target, tmp_path):
    # A target may set its coredump_filter to 0: gdb's defaults then dump no memory at all.
    Path(f"/proc/{target.pid}/coredump_filter").write_text("0")
    honouring = take_snapshot("gcore", target.pid)
    assert marker_addresses(honouring, target.marker) == set()
    assert gap_at(honouring, target.heap)[0].reason == "not dumped (coredump_filter / gdb policy)"
    everything = take_snapshot("gcore-all", target.pid)
    assert "set use-coredump-filter off" in everything.notes[1]
    assert marker_addresses(everything, target.marker) == {target.heap, target.dont_dump, target.no_access}


def test_gcore_register_notes_carry_thread_ids(target, tmp_path):
    snap = take_snapshot("gcore", target.pid)
    tids = {int(t) for t in os.listdir(f"/proc/{target.pid}/task")}
    registers = [r for r in snap.regions if r.kind == RegionKind.REGISTERS]
    assert {r.thread for r in registers} == tids and len(tids) == 2
    for tid in tids:
        sets = {r.register_set for r in registers if r.thread == tid}
        assert {"NT_PRSTATUS", "NT_FPREGSET", "NT_X86_XSTATE"} <= sets
    xstate = next(r for r in registers if r.register_set == "NT_X86_XSTATE")
    assert xstate.name == f"thread {xstate.thread} NT_X86_XSTATE" and xstate.start == 0 and xstate.size > 512
    notes = {r.name: r for r in snap.regions if r.kind == RegionKind.NOTE}
    assert notes["NT_AUXV"].thread is None and "NT_FILE" in notes
    # A register region points at the descriptor: NT_PRSTATUS holds pr_pid at offset 32.
    prstatus = next(r for r in registers if r.register_set == "NT_PRSTATUS")
    with open(snap.path, "rb") as f:
        f.seek(prstatus.file_offset + 32)
        assert int.from_bytes(f.read(4), "little") == prstatus.thread


def test_gcore_failure_reports_gdb_stderr_and_resumes(target, tmp_path):
    # Another tracer holds the target, so gdb's attach fails.
    tracer = subprocess.Popen([sys.executable, "-c",
                               "import ctypes, sys, time\n"
                               "libc = ctypes.CDLL(None, use_errno=True)\n"
                               "print(libc.ptrace(0x4206, int(sys.argv[1]), 0, 0), flush=True)\n"  # PTRACE_SEIZE
                               "time.sleep(60)\n", str(target.pid)], stdout=subprocess.PIPE, text=True)
    try:
        assert tracer.stdout.readline().strip() == "0"
        with pytest.raises(SnapshotError, match="ptrace: Operation not permitted"):
            before = open_memory_files()
            take_snapshot("gcore", target.pid)
        assert open_memory_files() == before
    finally:
        tracer.kill()
        tracer.wait()
    assert target.responds()


def test_gcore_timeout_kills_gdb_and_resumes(target, tmp_path):
    with pytest.raises(SnapshotError, match="timed out"):
        gcore_module.take_gcore(target.pid, dump_all=False, timeout=0.05)
    assert list(tmp_path.glob("*.core")) == []
    assert target.responds()


# --- core files ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gdb_core(helper_binary, tmp_path_factory):
    """A gcore of the helper: (core path, the finished Target with its marker and addresses, thread ids, binary)."""
    workdir = tmp_path_factory.mktemp("core")
    t = Target(helper_binary, workdir)
    try:
        snap = take_snapshot("gcore", t.pid)
        tids = {int(x) for x in os.listdir(f"/proc/{t.pid}/task")}
    finally:
        t.close()
    return snap.path, t, tids, helper_binary


def test_read_core_layout(gdb_core):
    path, t, tids, _ = gdb_core
    layout = read_core_layout(path)
    assert (layout.elf_class, layout.machine) == (64, "EM_X86_64")
    heap_segment = next(s for s in layout.segments if s.vaddr <= t.heap < s.vaddr + s.memsz)
    assert heap_segment.flags == "rw-" and heap_segment.filesz == heap_segment.memsz > 0
    assert {n.thread for n in layout.notes if n.type_name == "NT_PRSTATUS"} == tids
    assert any(f.path == str(t.file) and f.start == t.partial for f in layout.file_mappings)
    offsets = [n.file_offset for n in layout.notes]
    assert offsets == sorted(offsets) and all(n.desc_offset > n.file_offset for n in layout.notes)
    for note in layout.notes:             # each register note follows the NT_PRSTATUS of its thread
        if note.type_name in ("NT_FPREGSET", "NT_X86_XSTATE"):
            owner = [n for n in layout.notes if n.type_name == "NT_PRSTATUS" and n.file_offset < note.file_offset][-1]
            assert owner.thread == note.thread


def test_snapshot_from_core_without_live_mappings(gdb_core):
    path, t, _, binary = gdb_core
    snap = snapshot_from_core(path, "adhoc")
    assert marker_addresses(snap, t.marker) == {t.heap, t.no_access}
    assert snap.region_at(t.heap).kind == RegionKind.ANONYMOUS and snap.region_at(t.heap).dont_dump is None
    helper_regions = [r for r in snap.regions if r.name == str(binary)]   # named from NT_FILE
    assert helper_regions and all(r.kind == RegionKind.FILE for r in helper_regions)
    assert snap.gaps == []                # gdb leaves mappings out rather than writing short segments


def corrupt(gdb_core, tmp_path, name: str, edit) -> Path:
    data = bytearray(gdb_core[0].read_bytes())
    edited = edit(data)                   # in-place edits return None
    data = data if edited is None else edited
    copy = tmp_path / name
    copy.write_bytes(bytes(data))
    return copy


def _first_note_offset(path: Path) -> int:
    return read_core_layout(path).notes[0].file_offset


@pytest.mark.parametrize("name, edit, message", [
    ("text", lambda d: bytearray(b"just some text\n"), r"not an ELF file \(bad magic b'just'\)"),
    ("empty", lambda d: bytearray(), r"not an ELF file \(bad magic b''\)"),
    ("magic", lambda d: d.__setitem__(slice(1, 4), b"ELG"), r"not an ELF file \(bad magic b'\\x7fELG'\)"),
    ("etype", lambda d: d.__setitem__(slice(16, 18), (2).to_bytes(2, "little")), r"not a core file \(e_type is ET_EXEC"),
    ("machine", lambda d: d.__setitem__(slice(18, 20), (40).to_bytes(2, "little")), r"unsupported core: 64-bit EM_ARM"),
    ("class", lambda d: d.__setitem__(4, 7), r"unsupported ELF class byte 07"),
])
def test_corrupt_header_gives_clear_error(gdb_core, tmp_path, name, edit, message):
    with pytest.raises(CoreFormatError, match=message):
        read_core_layout(corrupt(gdb_core, tmp_path, name, edit))


def _program_headers(path: Path) -> list[tuple[str, int, int]]:
    """(type, p_offset, p_filesz) of each program header, parsed independently of the code under test."""
    data = path.read_bytes()
    phoff, phentsize, phnum = struct.unpack_from("<Q", data, 32)[0], *struct.unpack_from("<HH", data, 54)
    headers = [struct.unpack_from("<IIQQQQ", data, phoff + i * phentsize) for i in range(phnum)]
    return [({1: "PT_LOAD", 4: "PT_NOTE"}[h[0]], h[2], h[5]) for h in headers]


@pytest.mark.parametrize("keep", [0.5, 0.999])
def test_truncated_core_gives_clear_error(gdb_core, tmp_path, keep):
    size = int(gdb_core[0].stat().st_size * keep)
    copy = corrupt(gdb_core, tmp_path, "truncated", lambda d: d[:size])
    kind, offset, filesz = next(h for h in _program_headers(gdb_core[0]) if h[1] + h[2] > size)
    with pytest.raises(CoreFormatError, match=rf"truncated: {kind} segment at file offset {offset:#x} "
                                              rf"needs {offset + filesz} bytes but the file has {size}$"):
        snapshot_from_core(copy, "gcore")


def test_corrupt_note_gives_clear_error(gdb_core, tmp_path):
    at = _first_note_offset(gdb_core[0])
    copy = corrupt(gdb_core, tmp_path, "note", lambda d: d.__setitem__(slice(at + 4, at + 8), (0x7FFFFFFF).to_bytes(4, "little")))
    with pytest.raises(CoreFormatError, match=rf"unreadable notes: note at file offset {at:#x} claims"):
        read_core_layout(copy)


def test_kernel_core_is_read_too(helper_binary, tmp_path):
    """A kernel core: zero-size segments for MADV_DONTDUMP, process notes after the first NT_PRSTATUS."""
    pattern = Path("/proc/sys/kernel/core_pattern").read_text().strip()
    if pattern != "core":
        pytest.skip(f"core_pattern is {pattern!r}, not a plain file name")
    t = Target(helper_binary, tmp_path, cwd=tmp_path,
               preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY,) * 2))
    live = read_mappings(t.pid)
    tids = {int(x) for x in os.listdir(f"/proc/{t.pid}/task")}
    os.kill(t.pid, signal.SIGABRT)
    t.proc.wait(timeout=30)
    snap = snapshot_from_core(tmp_path / "core", "kernel-core")
    assert marker_addresses(snap, t.marker) == {t.heap, t.no_access}
    gaps = gap_at(snap, t.dont_dump)
    assert [(g.kind, g.size) for g in gaps] == [(GapKind.EXCLUDED, PAGE)]
    assert {r.thread for r in snap.regions if r.kind == RegionKind.REGISTERS} == tids
    assert next(r for r in snap.regions if r.name == "NT_AUXV").thread is None
    with_live = snapshot_from_core(tmp_path / "core", "kernel-core", live)
    assert [g.reason for g in gap_at(with_live, t.dont_dump)] == ["MADV_DONTDUMP"]
    assert with_live.region_at(t.no_access).perms == "---p"


# --- errors and registry -------------------------------------------------------------------------------

def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("method", LIVE_METHODS)
def test_dead_pid_gives_snapshot_error(method, tmp_path):
    with pytest.raises(SnapshotError, match="does not exist"):
        take_snapshot(method, _dead_pid())
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("method", LIVE_METHODS)
def test_zombie_gives_snapshot_error(method, tmp_path):
    proc = subprocess.Popen(["true"])
    deadline = time.monotonic() + 5
    while Path(f"/proc/{proc.pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0] != b"Z":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    try:
        with pytest.raises(SnapshotError, match="exited"):
            take_snapshot(method, proc.pid)
    finally:
        proc.wait()


def test_method_unavailable(monkeypatch):
    assert all(method_unavailable(m) is None for m in METHODS)
    with pytest.raises(ValueError, match="unknown snapshot method"):
        method_unavailable("telepathy")
    with pytest.raises(ValueError):
        take_snapshot("telepathy", os.getpid())
    monkeypatch.setenv("PATH", "/nonexistent")
    assert method_unavailable("gcore") == "gdb not found on PATH"
    assert method_unavailable("procmem") is None


@pytest.mark.parametrize("short_reads", [True, False])
def test_procmem_bisects_failing_chunks_to_pages(monkeypatch, short_reads):
    """Unreadable pages in the middle of a chunk: the readable pages around them are still copied."""
    bad_pages = {1, 2, 5}
    base = 0x10000000

    def fake_pread(size, offset):
        pages = range((offset - base) // PAGE, (offset - base + size) // PAGE)
        first_bad = next((p for p in pages if p in bad_pages), None)
        if first_bad is None:
            return b"".join(bytes([page_addr // PAGE % 256]) * PAGE for page_addr in range(offset, offset + size, PAGE))
        if first_bad == pages[0] or not short_reads:   # the kernel returns what it copied before the error
            raise OSError(errno.EIO, "Input/output error")
        return fake_pread((first_bad - pages[0]) * PAGE, offset)

    def fake_preadv(fd, buffers, offset):
        data = fake_pread(len(buffers[0]), offset)
        buffers[0][: len(data)] = data
        return len(data)

    monkeypatch.setattr(procmem_module.os, "preadv", fake_preadv)
    out = io.BytesIO()
    pieces = procmem_module._merge(procmem_module._read_span(-1, out, 4242, base, base + 8 * PAGE))
    assert [(a - base) // PAGE for a, _, _, _ in pieces] == [0, 1, 3, 5, 6]
    assert [(b - a) // PAGE for a, b, _, _ in pieces] == [1, 2, 2, 1, 2]
    assert [e for _, _, _, e in pieces] == [None, "EIO reading /proc/4242/mem", None, "EIO reading /proc/4242/mem", None]
    assert out.getvalue() == b"".join(bytes([(base + p * PAGE) // PAGE % 256]) * PAGE for p in (0, 3, 4, 6, 7))
    assert [o for _, _, o, e in pieces if e is None] == [0, PAGE, 3 * PAGE]


def test_procmem_waits_until_every_thread_reports_stopped(target, tmp_path, monkeypatch):
    real_states = procmem_module.thread_states
    polls = []
    laggard = max(int(t) for t in os.listdir(f"/proc/{target.pid}/task"))

    def slow_thread_states(pid):             # one thread reports "sleeping" for the first three polls
        polls.append(1)
        states = real_states(pid)
        return {**states, laggard: "S"} if len(polls) <= 3 else states

    monkeypatch.setattr(procmem_module, "thread_states", slow_thread_states)
    snap = procmem_module.take_procmem(target.pid)
    assert len(polls) >= 4 and snap.regions   # more when the real threads are slow to stop (a busy machine)
    assert target.responds()


def test_procmem_gives_up_when_a_thread_never_stops(target, tmp_path, monkeypatch):
    real_states = procmem_module.thread_states
    laggard = max(int(t) for t in os.listdir(f"/proc/{target.pid}/task"))
    monkeypatch.setattr(procmem_module, "thread_states", lambda pid: {**real_states(pid), laggard: "D"})
    with pytest.raises(SnapshotError, match=rf"threads did not stop within 0.2s: {laggard} \(D\)"):
        procmem_module.take_procmem(target.pid, stop_timeout=0.2)
    assert list(tmp_path.glob("*.raw")) == []
    assert target.responds()
