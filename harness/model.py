"""Plain dataclasses through which the stages talk.

scenario -> plan -> target process -> snapshot -> scan -> verdict -> report.
No stage reaches into another's internals: each consumes and produces these.
"""
from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator


class Expect(str, enum.Enum):
    PRESENT = "present"
    ABSENT = "absent"
    OBSERVE = "observe"
    CRASH = "crash"            # the target must die by one of the checkpoint's signals (its core has its own expectation)


class Outcome(str, enum.Enum):
    PASS = "PASS"
    FAIL = "FAIL"
    INCONCLUSIVE = "INCONCLUSIVE"
    ERROR = "ERROR"
    SKIP = "SKIP"


class NoImageCause(str, enum.Enum):
    """Why a method that ran made no image. Only the program's own policy is a finding."""

    POLICY = "policy"          # the program forbade it (a hard core limit of 0, not dumpable, ...): nothing leaks
    BLOCKED = "blocked"        # the environment stopped it (folder not writable, disk full, a size limit)
    UNKNOWN = "unknown"        # no cause could be established


class RegionKind(str, enum.Enum):
    HEAP = "heap"
    STACK = "stack"
    ANONYMOUS = "anonymous"
    FILE = "file"
    VDSO = "vdso"
    KERNEL = "kernel"          # [vvar], [vvar_vclock], [vsyscall]: not process-writable
    REGISTERS = "registers"    # a thread's register set saved in a core note
    NOTE = "note"              # any other core note


class GapKind(str, enum.Enum):
    UNREADABLE = "unreadable"  # the method tried and failed: the secret could hide there
    EXCLUDED = "excluded"      # left out by the method's own policy (MADV_DONTDUMP, coredump_filter)
    KERNEL = "kernel"          # kernel-owned mapping the process cannot write
    UNTOUCHED = "untouched"    # private anonymous memory with no resident or swapped page: reads as zeros


# --- secrets -----------------------------------------------------------------

@dataclass(frozen=True)
class Secret:
    """A value planted in the target. `value` is kept out of repr so it never lands in a log."""

    label: str                       # "secret" or "canary"
    value: bytes = field(repr=False)
    textual: bool = False            # printable: its raw form is text, so UTF-16 of it matters too
    # A positive control (the canary): only its bytes as planted are searched, the proof that ordinary memory was
    # captured; encodings, fragments and key schedules of it would cost scan time and prove nothing more.
    control: bool = False

    @property
    def fingerprint(self) -> str:
        """Short SHA-256 prefix: identifies the secret in reports without revealing it."""
        return hashlib.sha256(self.value).hexdigest()[:12]


# --- snapshots -----------------------------------------------------------------

@dataclass(frozen=True)
class Region:
    """A range of the target's memory (or a core note) and where its bytes sit in the snapshot file."""

    start: int                       # virtual address; 0 for notes
    size: int                        # bytes of this region present in the snapshot file
    perms: str                       # "rw-p" style, "" for notes
    kind: RegionKind
    name: str                        # "[heap]", "/usr/lib/...", "thread 123 NT_X86_XSTATE"
    file_offset: int                 # where the region's bytes start in the snapshot file
    locked: bool | None = None       # smaps VmFlags "lo" (None: the method cannot tell)
    dont_dump: bool | None = None    # smaps VmFlags "dd"
    vm_flags: tuple[str, ...] = ()
    thread: int | None = None        # for REGISTERS regions: the thread id
    register_set: str | None = None  # for REGISTERS regions: NT_PRSTATUS, NT_FPREGSET, NT_X86_XSTATE

    @property
    def end(self) -> int:
        return self.start + self.size

    def contains(self, address: int) -> bool:
        return self.kind not in (RegionKind.REGISTERS, RegionKind.NOTE) and self.start <= address < self.end


@dataclass(frozen=True)
class Gap:
    """Memory the process has that the snapshot does not hold."""

    start: int
    size: int
    name: str
    kind: GapKind
    reason: str
    dont_dump: bool | None = None
    perms: str = ""                  # the mapping's permissions, where known

    def contains(self, address: int) -> bool:
        return self.start <= address < self.start + self.size


@dataclass
class Snapshot:
    method: str
    path: Path                       # file holding the region bytes
    regions: list[Region]
    gaps: list[Gap] = field(default_factory=list)
    duration_s: float = 0.0
    notes: list[str] = field(default_factory=list)
    # Set when the method ran but produced no image (e.g. no kernel core was dumped): the reason, and its cause.
    not_produced: str | None = None
    not_produced_cause: NoImageCause | None = None
    pid: int | None = None           # the process it was taken of (None for a core file given to `scan`)
    command: str = ""                # that process's command line, secret material masked
    # Other methods this very image is, by their own rules, identical to, and why (one gdb dump serving both gcores).
    serves: dict[str, str] = field(default_factory=dict)
    served_by: str | None = None     # set on an image another method's dump served: that method, and why
    served_why: str = ""
    # The regions were read straight from the stopped process (path was /proc/PID/mem, file offset = address) while
    # it was held; nothing holds its bytes afterwards, and `path` then names no file.
    streamed: bool = False
    # How a scan reads bytes at a file offset into a buffer (returns the count), where reading `path` is not the
    # fastest way (a streamed snapshot knows which pages are zeros without reading them); None: read `path`.
    read_at: Callable[[int, memoryview], int] | None = field(default=None, repr=False, compare=False)

    @property
    def captured_bytes(self) -> int:
        return sum(r.size for r in self.regions)

    def region_at(self, address: int) -> Region | None:
        for region in self.regions:
            if region.contains(address):
                return region
        return None


def iter_region_chunks(path: Path, region: Region, chunk_size: int, overlap: int = 0) -> Iterator[tuple[int, bytes]]:
    """Yield (offset within region, bytes) covering the region; each chunk after the first
    starts `overlap` bytes before the end of the previous one. Memory stays bounded by chunk_size+overlap."""
    with open(path, "rb") as f:
        pos = 0
        while pos < region.size:
            start = max(0, pos - overlap)
            f.seek(region.file_offset + start)
            data = f.read(min(region.size, pos + chunk_size) - start)
            if not data:
                raise EOFError(f"{path}: region {region.name} at file offset {region.file_offset + start} is truncated")
            yield start, data
            pos = start + len(data)


# --- scan ----------------------------------------------------------------------

@dataclass(frozen=True)
class Hit:
    secret: str                      # label of the Secret found
    encoding: str                    # raw, hex-lower, hex-upper, base64, base64url, utf16le(...), ...
    address: int | None              # virtual address of the first byte; None inside notes
    file_offset: int                 # offset in the snapshot file
    length: int                      # bytes matched in memory
    region: Region
    fragment: tuple[int, int] | None = None   # [start, end) of the raw secret matched; None: the whole secret
    pid: int | None = None           # the process whose snapshot holds it, as Snapshot.pid
    command: str = ""

    @property
    def full(self) -> bool:
        return self.fragment is None


@dataclass
class ScanResult:
    hits: list[Hit]
    bytes_scanned: int
    duration_s: float
    patterns: int
