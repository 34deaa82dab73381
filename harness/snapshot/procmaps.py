"""Parse /proc/PID/smaps (the maps lines plus per-mapping details such as VmFlags)."""
from __future__ import annotations

import re
from dataclasses import dataclass

from ..model import RegionKind
from . import SnapshotError

# Kernel-owned mappings: the process cannot write them and /proc/PID/mem gives EIO (vvar) or cannot
# even address them (vsyscall sits above the signed off_t range), so every method leaves them out.
KERNEL_MAPPINGS = frozenset({"[vvar]", "[vvar_vclock]", "[vsyscall]"})

_HEADER = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S{4}) ([0-9a-f]+) \S+ \d+ ?(.*)$")


@dataclass(frozen=True)
class LiveMapping:
    start: int
    end: int
    perms: str                       # "rw-p"
    offset: int                      # offset into the mapped file
    name: str                        # "[heap]", "/usr/lib/...", "" for anonymous
    vm_flags: tuple[str, ...] = ()
    locked: bool = False             # VmFlags "lo" or smaps Locked > 0
    dont_dump: bool = False          # VmFlags "dd" (MADV_DONTDUMP)
    resident_kb: int = 0             # smaps Rss
    swap_kb: int = 0                 # smaps Swap

    @property
    def untouched(self) -> bool:
        """Private anonymous memory with no page resident or swapped out: it can only read as zeros
        (Go reserves gigabytes of such address space)."""
        return self.perms.endswith("p") and self.kind in (RegionKind.ANONYMOUS, RegionKind.HEAP, RegionKind.STACK) \
            and self.resident_kb == 0 and self.swap_kb == 0

    @property
    def size(self) -> int:
        return self.end - self.start

    @property
    def kind(self) -> RegionKind:
        return mapping_kind(self.name)


def mapping_kind(name: str) -> RegionKind:
    if name == "[heap]":
        return RegionKind.HEAP
    if name == "[stack]" or name.startswith("[stack:"):
        return RegionKind.STACK
    if name == "[vdso]":
        return RegionKind.VDSO
    if name in KERNEL_MAPPINGS:
        return RegionKind.KERNEL
    if name.startswith("/"):
        return RegionKind.FILE
    return RegionKind.ANONYMOUS


def parse_smaps(text: str) -> list[LiveMapping]:
    mappings: list[LiveMapping] = []
    current: dict | None = None

    def flush() -> None:
        if current is not None:
            flags = current["vm_flags"]
            mappings.append(LiveMapping(
                start=current["start"], end=current["end"], perms=current["perms"], offset=current["offset"],
                name=current["name"], vm_flags=flags,
                locked="lo" in flags or current["locked_kb"] > 0, dont_dump="dd" in flags,
                resident_kb=current["rss_kb"], swap_kb=current["swap_kb"]))

    for line in text.splitlines():
        header = _HEADER.match(line)
        if header:
            flush()
            start, end, perms, offset, name = header.groups()
            current = {"start": int(start, 16), "end": int(end, 16), "perms": perms, "offset": int(offset, 16),
                       "name": name.strip(), "vm_flags": (), "locked_kb": 0, "rss_kb": 0, "swap_kb": 0}
        elif current is not None and line.startswith("VmFlags:"):
            current["vm_flags"] = tuple(line.split()[1:])
        elif current is not None and line.startswith(("Locked:", "Rss:", "Swap:")):
            field = {"Locked:": "locked_kb", "Rss:": "rss_kb", "Swap:": "swap_kb"}[line.split()[0]]
            current[field] = int(line.split()[1])
    flush()
    return mappings


def read_mappings(pid: int) -> list[LiveMapping]:
    """The process's mappings in address order. Empty for a zombie (its memory is gone)."""
    try:
        with open(f"/proc/{pid}/smaps", encoding="utf-8", errors="surrogateescape") as f:
            return parse_smaps(f.read())
    except (FileNotFoundError, ProcessLookupError) as exc:
        raise SnapshotError(f"process {pid} does not exist (exited?)") from exc
    except PermissionError as exc:
        raise SnapshotError(f"cannot read /proc/{pid}/smaps: permission denied (need same uid or CAP_SYS_PTRACE)") from exc
