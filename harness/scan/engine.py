"""Search a snapshot for every form of the planted secrets in one hyperscan pass."""
from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import replace
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import Iterator, TypeVar

import hyperscan

from ..model import Hit, Region, RegionKind, ScanResult, Secret, Snapshot, iter_region_chunks
from .encodings import Pattern, patterns_for


T = TypeVar("T")

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


@lru_cache(maxsize=1)
def compile_database(needles: tuple[bytes, ...]) -> hyperscan.Database:
    """One block-mode database; pattern id = index in `needles`. Cached: compiling hundreds
    of fragment patterns costs more than scanning a small snapshot, and every snapshot of a run
    looks for the same secrets. Only the last set is kept: every run has fresh secrets, so older
    entries would never be hit and would only keep earlier secrets in the harness's memory."""
    database = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
    try:
        # DOTALL only: no SINGLEMATCH, since every occurrence is a separate copy to report.
        database.compile(expressions=[needle_expression(n) for n in needles],
                         ids=list(range(len(needles))), flags=hyperscan.HS_FLAG_DOTALL)
    except hyperscan.error as exc:
        raise ScanError(f"hyperscan failed to compile {len(needles)} patterns: {exc}") from exc
    return database


def scan_snapshot(snapshot: Snapshot, secrets: list[Secret], chunk_size: int = 16 << 20) -> ScanResult:
    """Every copy of every secret, in every form of `patterns_for`, in the regions of `snapshot`.

    Regions are read in chunks of `chunk_size` (plus the longest needle as overlap), so memory
    stays bounded whatever the image size; a hit never spans two regions."""
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

    raw_hits: list[Hit] = []
    unverified: list[tuple[bytes, Hit]] = []   # long needles matched by their prefix only
    owned_from = 0   # region offset where the current chunk's new (non-overlap) bytes begin
    previous = -1
    for index, region, chunk_start, data in prefetched(snapshot_chunks(snapshot, chunk_size, overlap)):
        if index != previous:
            owned_from, previous = 0, index

        def on_match(pattern_id, _from, to, _flags, _context, base=chunk_start, floor=owned_from, region=region):
            if base + to <= floor:   # ends in the overlap: the previous chunk already reported it
                return
            pattern = patterns[pattern_id]
            start = base + to - len(compiled[pattern_id])
            if start + len(pattern.needle) <= region.size:
                hit = make_hit(pattern.secret, pattern.encoding, region, start, len(pattern.needle), pattern.fragment)
                if len(pattern.needle) <= MAX_COMPILED_NEEDLE:
                    raw_hits.append(hit)
                else:
                    unverified.append((pattern.needle, hit))
        try:
            database.scan(data, match_event_handler=on_match)
        except hyperscan.error as exc:
            raise ScanError(f"hyperscan failed scanning {region.name} at offset {chunk_start}: {exc}") from exc
        owned_from = chunk_start + len(data)

    raw_hits += verified(snapshot.path, unverified)
    hits = merge_fragments(raw_hits)
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


def snapshot_chunks(snapshot: Snapshot, chunk_size: int, overlap: int) -> Iterator[tuple[int, Region, int, bytes]]:
    """(region index, region, offset within region, bytes) for every chunk of every region;
    chunks never reach into a neighbouring region, so a match cannot cross a region boundary."""
    for index, region in enumerate(snapshot.regions):
        for chunk_start, data in iter_region_chunks(snapshot.path, region, chunk_size, overlap):
            yield index, region, chunk_start, data


def prefetched(items: Iterator[T]) -> Iterator[T]:
    """Read the next chunk while hyperscan scans this one: both release the GIL, so on two
    cores the read is nearly free. Memory: the chunk being scanned, the one being read."""
    with ThreadPoolExecutor(max_workers=1) as reader:
        pending = reader.submit(next, items, None)
        while (item := pending.result()) is not None:
            pending = reader.submit(next, items, None)
            yield item


def make_hit(secret: str, encoding: str, region: Region, offset: int, length: int,
             fragment: tuple[int, int] | None) -> Hit:
    """A hit `offset` bytes into `region`; notes have no virtual address."""
    in_notes = region.kind in (RegionKind.REGISTERS, RegionKind.NOTE)
    return Hit(secret=secret, encoding=encoding,
               address=None if in_notes else region.start + offset,
               file_offset=region.file_offset + offset, length=length, region=region, fragment=fragment)


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
