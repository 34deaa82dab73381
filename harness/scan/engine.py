"""Search a snapshot for every form of the planted secrets in one hyperscan pass."""
from __future__ import annotations

import mmap
import os
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

import hyperscan

from ..model import Hit, Region, RegionKind, ScanResult, Secret, Snapshot
from .encodings import Pattern, is_schedule, patterns_for

# Two cores is what the harness is built for; hyperscan and the reads release the GIL, so threads scale.
SCAN_THREADS = min(2, os.cpu_count() or 1)

# hyperscan rejects expressions over 16000 characters, i.e. needles over 4000 escaped bytes
# (the UTF-16 hex of a 1001-byte secret). Longer needles are searched by this prefix and
# each candidate is checked against the whole needle in the file afterwards.
MAX_COMPILED_NEEDLE = 1024


class ScanError(Exception):
    """hyperscan could not compile or run the patterns, or a secret has nothing to search for."""


def needle_expression(needle: bytes) -> bytes:
    # Every byte escaped: hyperscan's literal=True mode measures patterns with strlen(), so a
    # NUL byte would cut the pattern short and match everywhere in zero-filled memory.
    return b"".join(b"\\x%02x" % byte for byte in needle)


@lru_cache(maxsize=8)
def compile_database(needles: tuple[bytes, ...]) -> hyperscan.Database:
    """One block-mode database; pattern id = index in `needles`. Cached: compiling hundreds
    of fragment patterns costs more than scanning a small snapshot, and every snapshot of a run
    looks for the same secrets. Only the last few sets are kept, one for each run going at once
    (-j): every run has fresh secrets, so older entries would never be hit again and would only
    keep earlier secrets in the harness's memory."""
    database = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
    try:
        # DOTALL only: no SINGLEMATCH, since every occurrence is a separate copy to report.
        database.compile(expressions=[needle_expression(n) for n in needles],
                         ids=list(range(len(needles))), flags=hyperscan.HS_FLAG_DOTALL)
    except hyperscan.error as exc:
        raise ScanError(f"hyperscan failed to compile {len(needles)} patterns: {exc}") from exc
    return database


def scan_snapshot(snapshot: Snapshot, secrets: list[Secret], chunk_size: int = 16 << 20,
                  threads: int = SCAN_THREADS) -> ScanResult:
    """Every copy of every secret, in every form of `patterns_for`, in the regions of `snapshot`.

    Regions are cut into chunks of `chunk_size` (plus the longest needle as overlap) that `threads` threads read
    and scan at once, so memory stays bounded whatever the image size and one big region keeps every core busy;
    a hit never spans two regions. The hits, and their order, do not depend on `threads` or `chunk_size`."""
    began = time.perf_counter()
    patterns: list[Pattern] = []
    for secret in secrets:
        found = patterns_for(secret)
        if not found:   # scanning for nothing would report the secret absent: refuse instead
            raise ScanError(f"secret {secret.label!r} ({secret.fingerprint}) is too short to search for")
        patterns += found
    if not patterns:
        return ScanResult([], 0, time.perf_counter() - began, 0)
    compiled = tuple(p.needle[:MAX_COMPILED_NEEDLE] for p in patterns)
    database = compile_database(compiled)
    overlap = max(map(len, compiled)) - 1
    jobs = list(chunk_jobs(snapshot.regions, chunk_size, overlap))
    buffer_size = max((job.size for job in jobs), default=0)
    per_thread = threading.local()   # each thread its own hyperscan scratch and read buffer

    def scan_job(job: ChunkJob) -> list[tuple[int, int]]:
        """(pattern id, match end within the region) of the matches this chunk owns, in hyperscan's order."""
        if not hasattr(per_thread, "scratch"):
            per_thread.scratch = hyperscan.Scratch(database)
            per_thread.buffer = bytearray(buffer_size)
        matches: list[tuple[int, int]] = []

        def on_match(pattern_id, _from, to, _flags, _context):
            if job.start + to > job.owned_from:   # one ending in the overlap was the previous chunk's
                matches.append((pattern_id, job.start + to))
        with chunk_bytes(source, file_size, in_memory, snapshot, job, per_thread.buffer) as data:
            try:
                database.scan(data, match_event_handler=on_match, scratch=per_thread.scratch)
            except hyperscan.error as exc:
                raise ScanError(f"hyperscan failed scanning {job.region.name} at offset {job.start}: {exc}") from exc
        return matches

    raw_hits: list[Hit] = []
    unverified: list[tuple[bytes, Hit]] = []   # long needles matched by their prefix only
    with open(snapshot.path, "rb", buffering=0) as source:
        file_size, in_memory = os.fstat(source.fileno()).st_size, in_memory_file(source)
        if threads > 1 and len(jobs) > 1:
            with ThreadPoolExecutor(max_workers=threads) as pool:
                try:
                    found = list(pool.map(scan_job, jobs))
                except BaseException:
                    pool.shutdown(cancel_futures=True)   # a failed chunk ends the scan: no need to read the rest
                    raise
        else:
            found = [scan_job(job) for job in jobs]
    for job, matches in zip(jobs, found):     # chunk order, then hyperscan's order: as one thread finds them
        region = job.region
        for pattern_id, end in matches:
            pattern = patterns[pattern_id]
            start = end - len(compiled[pattern_id])
            if start + len(pattern.needle) <= region.size:
                hit = make_hit(pattern.secret, pattern.encoding, region, start, len(pattern.needle), pattern.fragment)
                if len(pattern.needle) <= MAX_COMPILED_NEEDLE:
                    raw_hits.append(hit)
                else:
                    unverified.append((pattern.needle, hit))

    raw_hits += verified(snapshot.path, unverified)
    hits = without_raw_inside_schedules(merge_fragments(raw_hits))
    if snapshot.pid is not None:    # each hit names the process it was found in
        hits = [replace(h, pid=snapshot.pid, command=snapshot.command) for h in hits]
    hits.sort(key=lambda h: (h.file_offset, h.secret, h.encoding, h.length))
    return ScanResult(hits, snapshot.captured_bytes, time.perf_counter() - began, len(patterns))


def verified(path: Path, candidates: list[tuple[bytes, Hit]]) -> list[Hit]:
    """The candidate hits whose whole needle, not just the compiled prefix, is in the file."""
    if not candidates:
        return []
    with open(path, "rb") as f:
        def holds(needle: bytes, hit: Hit) -> bool:
            f.seek(hit.file_offset)
            return f.read(len(needle)) == needle
        return [hit for needle, hit in candidates if holds(needle, hit)]


@dataclass(frozen=True)
class ChunkJob:
    """Bytes [start, end) of `region`; matches ending at or before `owned_from` belong to the previous chunk."""

    region: Region
    start: int
    end: int
    owned_from: int

    @property
    def size(self) -> int:
        return self.end - self.start


def chunk_jobs(regions: list[Region], chunk_size: int, overlap: int) -> Iterator[ChunkJob]:
    """The chunks of every region, each after the first of its region starting `overlap` bytes early; chunks never
    reach into a neighbouring region, so a match cannot cross a region boundary."""
    for region in regions:
        for owned_from in range(0, region.size, chunk_size):
            yield ChunkJob(region, max(0, owned_from - overlap), min(region.size, owned_from + chunk_size), owned_from)


@contextmanager
def chunk_bytes(source: BinaryIO, file_size: int, in_memory: bool, snapshot: Snapshot, job: ChunkJob,
                buffer: bytearray) -> Iterator[memoryview]:
    """The chunk's bytes, for the block. A file on disk that holds them whole (a core: page cache) is mapped, not
    copied: nearly twice the speed of reading into `buffer` (a 2 GiB core, two threads: 7.6 against 4.1 GB/s), and
    unmapped after the block, so memory stays bounded; a file shortened under us *while* we scan it would end the
    harness (SIGBUS), one shortened before is read and reported. Our in-memory images (memfd) are read: mapping
    them faults their pages in one by one (a 1.2 GB Go gcore: 0.9-1.6 s mapped, 0.5 s read) and would allocate
    their holes. Live memory (`read_at`) and chunks with a hole are read too."""
    offset = job.region.file_offset + job.start
    if snapshot.read_at or in_memory or offset + job.size > file_size or not holds_every_byte(source, offset, job.size):
        yield read_chunk(source, snapshot.path, job, buffer, snapshot.read_at)
        return
    aligned = offset - offset % mmap.ALLOCATIONGRANULARITY
    with mmap.mmap(source.fileno(), offset + job.size - aligned, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE,
                   prot=mmap.PROT_READ, offset=aligned) as mapped, memoryview(mapped) as whole, \
            whole[offset - aligned:] as data:
        yield data


def holds_every_byte(source: BinaryIO, offset: int, size: int) -> bool:
    """No hole in [offset, offset + size) of the file (the file's offset moves; every read here is positional)."""
    try:
        return os.lseek(source.fileno(), offset, os.SEEK_HOLE) >= offset + size
    except OSError:
        return False


def in_memory_file(source: BinaryIO) -> bool:
    """Whether the open file is a memfd (our scratch images), not a file on disk."""
    return os.readlink(f"/proc/self/fd/{source.fileno()}").startswith("/memfd:")


def read_chunk(source: BinaryIO, path: Path, job: ChunkJob, buffer: bytearray,
               read_at: Callable[[int, memoryview], int] | None = None) -> memoryview:
    """The chunk's bytes, read into `buffer` by `read_at` (Snapshot.read_at) or from `source` (positional reads: the
    threads share it)."""
    view = memoryview(buffer)[:job.size]
    offset = job.region.file_offset + job.start
    got = 0
    while got < job.size:
        try:
            count = read_at(offset + got, view[got:]) if read_at else os.preadv(source.fileno(), [view[got:]], offset + got)
        except OSError as exc:    # live memory that fails to read although the capture found it readable
            raise ScanError(f"{path}: cannot read region {job.region.name} at offset {offset + got:#x}: "
                            f"{exc.strerror}") from exc
        if count == 0:
            raise EOFError(f"{path}: region {job.region.name} at file offset {offset + got} is truncated")
        got += count
    return view


def make_hit(secret: str, encoding: str, region: Region, offset: int, length: int,
             fragment: tuple[int, int] | None) -> Hit:
    """A hit `offset` bytes into `region`; notes have no virtual address."""
    in_notes = region.kind in (RegionKind.REGISTERS, RegionKind.NOTE)
    return Hit(secret=secret, encoding=encoding,
               address=None if in_notes else region.start + offset,
               file_offset=region.file_offset + offset, length=length, region=region, fragment=fragment)


def without_raw_inside_schedules(hits: list[Hit]) -> list[Hit]:
    """Drop raw copies (whole or fragments) of a secret that lie inside a key schedule hit of it: a schedule in FIPS
    order begins with the key itself, and that is one copy of the secret, the schedule, not two."""
    schedules = [h for h in hits if is_schedule(h.encoding)]

    def inside_schedule(hit: Hit) -> bool:
        return any(s.secret == hit.secret and s.region == hit.region and s.file_offset <= hit.file_offset
                   and hit.file_offset + hit.length <= s.file_offset + s.length for s in schedules)
    return [h for h in hits if h.encoding != "raw" or not inside_schedule(h)]


def bytes_per_secret_byte(encoding: str) -> int:
    """How many bytes of an encoded form one byte of the secret takes (fragments exist for raw and hex)."""
    return 2 if encoding.startswith("hex") else 1


def merge_fragments(hits: list[Hit]) -> list[Hit]:
    """Drop fragment hits inside a whole copy of the same encoding; merge the consistent ones of one surviving run.

    Fragments of one run share the displacement file_offset - width * fragment_start (where the whole
    encoded secret would begin), so grouping by it and joining touching ranges yields one hit per run."""
    whole_copies = {(h.secret, h.encoding, h.file_offset) for h in hits if h.fragment is None}
    runs: dict[tuple[str, str, Region, int], list[tuple[int, int]]] = defaultdict(list)
    merged = [h for h in hits if h.fragment is None]
    for h in hits:
        if h.fragment is None:
            continue
        displacement = h.file_offset - bytes_per_secret_byte(h.encoding) * h.fragment[0]
        if (h.secret, h.encoding, displacement) not in whole_copies:
            runs[(h.secret, h.encoding, h.region, displacement)].append(h.fragment)
    for (secret, encoding, region, displacement), ranges in runs.items():
        width = bytes_per_secret_byte(encoding)
        spans: list[list[int]] = []
        for start, end in sorted(ranges):
            if spans and start <= spans[-1][1]:   # overlapping or adjacent: the same run
                spans[-1][1] = max(spans[-1][1], end)
            else:
                spans.append([start, end])
        for lo, hi in spans:
            offset = displacement + width * lo - region.file_offset
            merged.append(make_hit(secret, encoding, region, offset, width * (hi - lo), (lo, hi)))
    return merged
