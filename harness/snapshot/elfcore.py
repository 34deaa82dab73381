"""Core-file adapter: the only module that touches pyelftools.

pyelftools parses the ELF header, the program headers and the (small) notes. Load segments are never
read here: a Region just points at their bytes, which the scanner reads in chunks.
Works for gdb cores, kernel cores and users' own core files alike.
"""
from __future__ import annotations

import bisect
import os
import struct
from dataclasses import dataclass, replace
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.construct import ConstructError
from elftools.elf.elffile import ELFFile
from elftools.elf.enums import ENUM_CORE_NOTE_N_TYPE

from ..model import Gap, GapKind, Region, RegionKind, Snapshot
from .procmaps import LiveMapping

# (ELF class, e_machine) we can read -> offset of pr_pid inside the NT_PRSTATUS descriptor
# (after pr_info[3 ints], pr_cursig + padding, pr_sigpend and pr_sighold, which are longs).
_PR_PID_OFFSET = {(64, "EM_X86_64"): 32, (64, "EM_AARCH64"): 32, (32, "EM_386"): 24}
# The same -> (offset of the stack pointer in the NT_PRSTATUS descriptor, its size): pr_reg starts at 112 (64-bit)
# or 72 (i386); rsp is user_regs_struct[19], aarch64's sp follows x0..x30, i386's esp is [15].
_SP_OFFSET = {(64, "EM_X86_64"): (112 + 19 * 8, 8), (64, "EM_AARCH64"): (112 + 31 * 8, 8), (32, "EM_386"): (72 + 15 * 4, 4)}
_AT_STACK_POINTERS = (25, 31)          # auxiliary vector keys whose values point into the initial stack: AT_RANDOM, AT_EXECFN

_NOTE_NAMES = {value: name for name, value in ENUM_CORE_NOTE_N_TYPE.items() if name != "_default_"} | {
    0x200: "NT_386_TLS", 0x201: "NT_386_IOPERM", 0x202: "NT_X86_XSTATE", 0x204: "NT_X86_SHSTK",
    0x46E62B7F: "NT_PRXFPREG", 0xFF000000: "NT_GDB_TDESC",
    0x400: "NT_ARM_VFP", 0x401: "NT_ARM_TLS", 0x402: "NT_ARM_HW_BREAK", 0x403: "NT_ARM_HW_WATCH",
    0x404: "NT_ARM_SYSTEM_CALL", 0x405: "NT_ARM_SVE", 0x406: "NT_ARM_PAC_MASK", 0x40B: "NT_ARM_SSVE",
    0x40C: "NT_ARM_ZA", 0x40D: "NT_ARM_ZT",
}
# Per-thread register sets: their descriptors hold register contents, where secrets linger (xmm/ymm/zmm).
REGISTER_NOTES = frozenset({
    "NT_PRSTATUS", "NT_FPREGSET", "NT_PRXFPREG", "NT_X86_XSTATE", "NT_386_TLS", "NT_X86_SHSTK",
    "NT_ARM_VFP", "NT_ARM_TLS", "NT_ARM_SVE", "NT_ARM_PAC_MASK", "NT_ARM_SSVE", "NT_ARM_ZA", "NT_ARM_ZT",
})
# Whole-process notes: the kernel writes them between the first thread's NT_PRSTATUS and its other notes,
# gdb after the last thread, so they must not be attributed to a thread by position.
_PROCESS_NOTES = frozenset({"NT_PRPSINFO", "NT_AUXV", "NT_FILE", "NT_GDB_TDESC", "NT_TASKSTRUCT"})
_MAX_NOTES_SIZE = 256 << 20          # far above any real core (about 3 KiB per thread)
# Real cores leave less than a page between their parts (alignment of the first load segment); a longer stretch of
# the file that no segment claims is memory whose header was damaged: it is scanned, so no copy escapes the scan.
_STRAY_MIN = 4096
# What pyelftools raises on corrupt input besides its own ELFError: the file's bytes, not a bug of ours.
_PARSE_ERRORS = (ELFError, ConstructError, struct.error, ValueError, EOFError, KeyError, IndexError, TypeError,
                 AttributeError, OverflowError, UnicodeDecodeError)


class CoreFormatError(Exception):
    """The file is not a core we can read; the message says what is wrong."""


class CoreTruncated(CoreFormatError):
    """The core ends before its own headers say it does (a size limit or a full disk cut it short)."""

    def __init__(self, message: str, size: int, needed: int):
        super().__init__(message)
        self.size, self.needed = size, needed      # bytes written, bytes its headers need


@dataclass(frozen=True)
class CoreSegment:
    vaddr: int
    memsz: int
    filesz: int                      # bytes present in the file; < memsz when the dumper left pages out
    file_offset: int
    flags: str                       # "rwx" style from p_flags


@dataclass(frozen=True)
class CoreFileMapping:
    start: int
    end: int
    file_offset: int                 # byte offset into the file (NT_FILE page offset * its page size)
    path: str


@dataclass(frozen=True)
class CoreNote:
    type_name: str                   # "NT_PRSTATUS", "NT_X86_XSTATE", ... or "NT_0x..." when unknown
    owner: str                       # note name: "CORE", "LINUX", "GDB"
    file_offset: int                 # start of the note header
    size: int                        # header + name + descriptor, padded
    desc_offset: int                 # start of the descriptor bytes
    desc_size: int
    thread: int | None               # pr_pid of the NT_PRSTATUS this note follows; None for process notes


@dataclass(frozen=True)
class CoreLayout:
    path: Path
    elf_class: int                   # 32 or 64
    machine: str                     # "EM_X86_64"
    segments: tuple[CoreSegment, ...]        # PT_LOAD only
    file_mappings: tuple[CoreFileMapping, ...]
    notes: tuple[CoreNote, ...]
    stray_ranges: tuple[tuple[int, int], ...] = ()   # [start, end) file offsets no header, segment or table claims


def _flags(p_flags: int) -> str:
    return ("r" if p_flags & 4 else "-") + ("w" if p_flags & 2 else "-") + ("x" if p_flags & 1 else "-")


def _check_note_bounds(stream, path: Path, offset: int, size: int, little: bool) -> None:
    """Walk the note headers first: pyelftools would read a corrupt descriptor size's worth of bytes."""
    if size > _MAX_NOTES_SIZE:
        raise CoreFormatError(f"{path}: unreadable notes: note segment at file offset {offset:#x} is {size} bytes, implausibly large")
    stream.seek(offset)
    data = stream.read(size)
    pos, fmt = 0, "<III" if little else ">III"
    while pos + 12 <= size:
        namesz, descsz, _ = struct.unpack_from(fmt, data, pos)
        desc_end = pos + 12 + (namesz + 3) // 4 * 4 + descsz
        if desc_end > size:
            raise CoreFormatError(
                f"{path}: unreadable notes: note at file offset {offset + pos:#x} claims {namesz}+{descsz} bytes of name+descriptor, "
                f"past the end of its note segment (file offset {offset + size:#x})")
        pos = desc_end + (-descsz % 4)


def _note_type_name(n_type) -> str:
    value = ENUM_CORE_NOTE_N_TYPE[n_type] if isinstance(n_type, str) else n_type
    return _NOTE_NAMES.get(value, f"NT_{value:#x}")


# What a file that is not an ELF file most likely is, by its first bytes: cores are often stored compressed
# (systemd-coredump writes .zst files, bug trackers get .gz/.xz).
_COMPRESSED = ((b"\x28\xb5\x2f\xfd", "zstd", "zstd -d"), (b"\x1f\x8b", "gzip", "gunzip"),
               (b"\xfd7zXZ\x00", "xz", "unxz"), (b"BZh", "bzip2", "bunzip2"), (b"\x04\x22\x4d\x18", "lz4", "lz4 -d"))
_NOT_CORE = {"ET_EXEC": "an ELF executable", "ET_DYN": "an ELF shared object or PIE executable",
             "ET_REL": "an ELF object file", "ET_NONE": "an ELF file of no type"}
_ELF_HEADER_SIZE = {1: 52, 2: 64}


def _not_elf(path: Path, head: bytes) -> CoreFormatError:
    what = f"{path}: not an ELF file (bad magic {head[:4]!r})"
    if not head:
        return CoreFormatError(f"{what}: the file is empty")
    for magic, name, command in _COMPRESSED:
        if head.startswith(magic):
            return CoreFormatError(f"{what}: a {name}-compressed file; decompress it first ({command})")
    return CoreFormatError(f"{what}: starts with {head[:8].hex()}")


def read_core_layout(path: Path | str) -> CoreLayout:
    """The core's layout. CoreFormatError (one line, starting with the path) when it is not a core we can read:
    not ELF, not a core, an unsupported machine, truncated, or corrupt structures."""
    path = Path(path)
    file_size = path.stat().st_size
    with open(path, "rb") as stream:
        ident = stream.read(16)
        if ident[:4] != b"\x7fELF":
            raise _not_elf(path, ident)
        if len(ident) < 16 or ident[4] not in (1, 2):
            raise CoreFormatError(f"{path}: unsupported ELF class byte {ident[4:5].hex() or 'missing'} (expected 32- or 64-bit)")
        if file_size < _ELF_HEADER_SIZE[ident[4]]:
            raise CoreFormatError(f"{path}: truncated: the ELF header needs {_ELF_HEADER_SIZE[ident[4]]} bytes "
                                  f"but the file has {file_size}")
        _check_extended_count(stream, path, ident, file_size)
        stream.seek(0)
        try:
            elf = ELFFile(stream)
            e_type, machine, elf_class = elf.header["e_type"], elf.header["e_machine"], elf.elfclass
            if e_type != "ET_CORE":
                what = _NOT_CORE.get(e_type, "an ELF file")
                raise CoreFormatError(f"{path}: {what}, not a core file (e_type is {e_type}, expected ET_CORE)")
            if (elf_class, machine) not in _PR_PID_OFFSET:
                raise CoreFormatError(f"{path}: unsupported core: {elf_class}-bit {machine}")
            phdr_end = elf.header["e_phoff"] + elf.num_segments() * elf.header["e_phentsize"]
            if phdr_end > file_size:
                raise CoreTruncated(f"{path}: truncated: program headers need {phdr_end} bytes but the file has "
                                    f"{file_size}", file_size, phdr_end)
            raw_segments = [seg.header for seg in elf.iter_segments()]
            past_end = [ph for ph in raw_segments if ph["p_filesz"] and ph["p_offset"] + ph["p_filesz"] > file_size]
            if past_end:
                ph = past_end[0]
                raise CoreTruncated(f"{path}: truncated: {ph['p_type']} segment at file offset {ph['p_offset']:#x} "
                                    f"needs {ph['p_offset'] + ph['p_filesz']} bytes but the file has {file_size}",
                                    file_size, max(p["p_offset"] + p["p_filesz"] for p in past_end))
            notes, file_mappings = _read_notes(elf, stream, path, _PR_PID_OFFSET[(elf_class, machine)])
            claimed = [(0, phdr_end), (elf.header["e_shoff"], elf.header["e_shoff"] + elf.num_sections() * elf.header["e_shentsize"])]
        except _PARSE_ERRORS as exc:
            raise CoreFormatError(f"{path}: unreadable ELF structure: {type(exc).__name__}: {exc}") from exc
    segments = tuple(CoreSegment(ph["p_vaddr"], ph["p_memsz"], ph["p_filesz"], ph["p_offset"], _flags(ph["p_flags"]))
                     for ph in raw_segments if ph["p_type"] == "PT_LOAD")
    claimed += [(ph["p_offset"], ph["p_offset"] + ph["p_filesz"]) for ph in raw_segments]
    return CoreLayout(path, elf_class, machine, segments, file_mappings, notes, _stray_ranges(claimed, file_size))


def _check_extended_count(stream, path: Path, ident: bytes, file_size: int) -> None:
    """With more than 65534 segments (PN_XNUM) the count lives in section header 0, which the kernel writes last:
    a core cut short loses it first."""
    wide, little = ident[4] == 2, ident[5] == 1
    stream.seek(0x20 if wide else 0x1C)
    header = stream.read(_ELF_HEADER_SIZE[ident[4]] - (0x20 if wide else 0x1C))
    order = "<" if little else ">"
    _, shoff = struct.unpack_from(order + ("QQ" if wide else "II"), header)
    phnum = struct.unpack_from(order + "H", header, (0x38 if wide else 0x2C) - (0x20 if wide else 0x1C))[0]
    needed = shoff + (0x40 if wide else 0x28)
    if phnum == 0xFFFF and needed > file_size:
        raise CoreTruncated(f"{path}: truncated: the section header holding the segment count (PN_XNUM) needs "
                            f"{needed} bytes but the file has {file_size}", file_size, needed)


def _stray_ranges(claimed: list[tuple[int, int]], file_size: int) -> tuple[tuple[int, int], ...]:
    """The stretches of the file, at least _STRAY_MIN bytes long, that none of the `claimed` ranges covers."""
    stray, pos = [], 0
    for start, end in sorted(claimed) + [(file_size, file_size)]:
        if start - pos >= _STRAY_MIN:
            stray.append((pos, min(start, file_size)))
        pos = max(pos, end)
    return tuple((a, b) for a, b in stray if b - a >= _STRAY_MIN)


def _read_notes(elf: ELFFile, stream, path: Path, pr_pid_offset: int):
    notes: list[CoreNote] = []
    file_mappings: list[CoreFileMapping] = []
    thread = None
    header_size = elf.structs.Elf_Nhdr.sizeof()
    pid_format = "<i" if elf.little_endian else ">i"
    for segment in elf.iter_segments():
        if segment["p_type"] != "PT_NOTE":
            continue
        _check_note_bounds(stream, path, segment["p_offset"], segment["p_filesz"], elf.little_endian)
        try:
            for note in segment.iter_notes():
                type_name = _note_type_name(note["n_type"])
                desc = note["n_descdata"]
                if type_name == "NT_PRSTATUS":
                    if len(desc) < pr_pid_offset + 4:
                        raise CoreFormatError(f"{path}: unreadable notes: NT_PRSTATUS at file offset {note['n_offset']:#x} "
                                              f"has only {len(desc)} bytes")
                    thread = struct.unpack_from(pid_format, desc, pr_pid_offset)[0]
                elif type_name == "NT_FILE":
                    nt_file = note["n_desc"]
                    file_mappings += [CoreFileMapping(e.vm_start, e.vm_end, e.page_offset * nt_file.page_size,
                                                      os.fsdecode(name))
                                      for e, name in zip(nt_file.Elf_Nt_File_Entry, nt_file.filename)]
                desc_offset = note["n_offset"] + header_size + (note["n_namesz"] + 3) // 4 * 4
                notes.append(CoreNote(type_name, note["n_name"] or "", note["n_offset"], note["n_size"], desc_offset,
                                      note["n_descsz"], None if type_name in _PROCESS_NOTES else thread))
        except _PARSE_ERRORS as exc:
            raise CoreFormatError(f"{path}: unreadable notes in segment at file offset {segment['p_offset']:#x}: "
                                  f"{type(exc).__name__}: {exc}") from exc
    if not notes:
        raise CoreFormatError(f"{path}: unreadable notes: the core has no notes (no PT_NOTE segment or an empty one)")
    return tuple(notes), tuple(file_mappings)


# --- Snapshot ------------------------------------------------------------------------------------------

def _pieces(start: int, end: int, ranges: list[tuple[int, int, object]]):
    """Split [start, end) against sorted non-overlapping (start, end, item) ranges: yields (a, b, item or None)."""
    i = max(0, bisect.bisect_right(ranges, start, key=lambda r: r[0]) - 1)
    pos = start
    while pos < end:
        while i < len(ranges) and ranges[i][1] <= pos:
            i += 1
        if i < len(ranges) and ranges[i][0] <= pos:
            b = min(end, ranges[i][1])
            yield pos, b, ranges[i][2]
        else:
            b = min(end, ranges[i][0]) if i < len(ranges) else end
            yield pos, b, None
        pos = b


def _by_range(ranges) -> list[tuple[int, int, object]]:
    """(start, end, item) sorted by start and end only: a corrupt core repeats ranges, and items do not compare."""
    return sorted(ranges, key=lambda r: (r[0], r[1]))


def snapshot_from_core(path: Path | str, method: str, live: list[LiveMapping] | None = None,
                       live_while_held: bool = False) -> Snapshot:
    """Describe a core file as a Snapshot. `live`: the process's mappings read just before the core was
    taken; they give names, kinds and smaps flags, and let us list what the core left out as gaps.
    `live_while_held`: the process was stopped from that reading until the core was written, so memory it never
    touched then (Go and V8 reserve gigabytes) is zeros in the core by the kernel's rule: a gap, not scanned."""
    path = Path(path)
    layout = read_core_layout(path)
    live_ranges = _by_range((m.start, m.end, m) for m in live or ())
    file_ranges = _by_range((f.start, f.end, f) for f in layout.file_mappings)
    regions: list[Region] = []
    gaps: list[Gap] = []

    def describe(a: int, mapping: LiveMapping | None) -> tuple[str, RegionKind]:
        if mapping is not None:
            return mapping.name, mapping.kind
        file_mapping = next(_pieces(a, a + 1, file_ranges))[2]
        return (file_mapping.path, RegionKind.FILE) if file_mapping else ("", RegionKind.ANONYMOUS)

    for seg in layout.segments:
        for a, b, m in _pieces(seg.vaddr, seg.vaddr + seg.filesz, live_ranges):
            name, kind = describe(a, m)
            if kind == RegionKind.KERNEL:
                # gdb "dumps" [vsyscall] as zeros after failing to read it: not process memory.
                gaps.append(Gap(a, b - a, name, GapKind.KERNEL, "kernel-owned mapping", m.dont_dump if m else None))
                continue
            if live_while_held and m is not None and m.untouched:
                gaps.append(Gap(a, b - a, name, GapKind.UNTOUCHED, "in the core as zeros, not scanned: no page ever "
                                "touched (Rss and Swap 0, read while the process was held stopped)", m.dont_dump, m.perms))
                continue
            regions.append(Region(
                start=a, size=b - a, kind=kind, name=name, file_offset=seg.file_offset + (a - seg.vaddr),
                # p_flags cannot say PROT_NONE (gdb writes such pages as "r"), nor private/shared: live perms can.
                perms=m.perms if m else seg.flags + "p",
                locked=m.locked if m else None, dont_dump=m.dont_dump if m else None, vm_flags=m.vm_flags if m else ()))
        if live is None and seg.memsz > seg.filesz:
            start = seg.vaddr + seg.filesz
            gaps.append(Gap(start, seg.memsz - seg.filesz, describe(start, None)[0], GapKind.EXCLUDED,
                            "not in the core (p_filesz < p_memsz)"))

    if live is not None:
        dumped = _by_range((s.vaddr, s.vaddr + s.filesz, s) for s in layout.segments if s.filesz)
        for m in live:
            for a, b, seg in _pieces(m.start, m.end, dumped):
                if seg is not None:
                    continue
                if m.kind == RegionKind.KERNEL:
                    kind, reason = GapKind.KERNEL, "kernel-owned mapping"
                else:
                    kind = GapKind.EXCLUDED
                    reason = "MADV_DONTDUMP" if m.dont_dump else "not dumped (coredump_filter / gdb policy)"
                gaps.append(Gap(a, b - a, m.name, kind, reason, m.dont_dump, m.perms))
        gaps.sort(key=lambda g: g.start)

    for note in layout.notes:
        if not note.desc_size:
            continue
        is_registers = note.type_name in REGISTER_NOTES
        name = f"thread {note.thread} {note.type_name}" if note.thread is not None else note.type_name
        regions.append(Region(start=0, size=note.desc_size, perms="", name=name, file_offset=note.desc_offset,
                              kind=RegionKind.REGISTERS if is_registers else RegionKind.NOTE, thread=note.thread,
                              register_set=note.type_name if is_registers else None))
    for a, b in layout.stray_ranges:
        regions.append(Region(start=0, size=b - a, perms="", kind=RegionKind.NOTE, file_offset=a,
                              name=f"file bytes {a:#x}-{b:#x} that no segment claims"))
    notes = [f"core: {layout.elf_class}-bit {layout.machine}, {len(layout.segments)} load segments, "
             f"{len({n.thread for n in layout.notes if n.thread is not None})} threads"]
    if layout.stray_ranges:
        notes.append(f"{sum(b - a for a, b in layout.stray_ranges)} bytes of the file in {len(layout.stray_ranges)} "
                     "stretch(es) belong to no segment (a damaged program header?): scanned, without addresses")
    if live is None:
        notes += _name_stacks(layout, regions)
    return Snapshot(method=method, path=path, regions=regions, gaps=gaps, notes=notes)


def _name_stacks(layout: CoreLayout, regions: list[Region]) -> list[str]:
    """Without live mappings a core names only file mappings: heap and stacks are anonymous. Two facts in its
    notes name the stacks for sure: the auxiliary vector points into the initial stack ([stack]), and each
    thread's saved stack pointer lies in its stack ([stack:TID]). The brk heap cannot be told from other
    anonymous memory. Renames those regions in place; returns notes saying what was named and how."""
    word = 8 if layout.elf_class == 64 else 4
    named: dict[int, tuple[str, str]] = {}     # region index -> (name, how)

    def anonymous_at(address: int) -> int | None:
        return next((i for i, r in enumerate(regions) if r.kind == RegionKind.ANONYMOUS and r.contains(address)), None)

    with open(layout.path, "rb") as f:
        def descriptor(note: CoreNote) -> bytes:
            f.seek(note.desc_offset)
            return f.read(note.desc_size)

        for note in (n for n in layout.notes if n.type_name == "NT_AUXV"):
            data = descriptor(note)
            for at in range(0, len(data) - 2 * word + 1, 2 * word):
                key, value = struct.unpack_from("<QQ" if word == 8 else "<II", data, at)
                if key in _AT_STACK_POINTERS and (i := anonymous_at(value)) is not None:
                    named[i] = ("[stack]", "the auxiliary vector points into it")
                    break
        if (sp := _SP_OFFSET.get((layout.elf_class, layout.machine))) is not None:
            offset, size = sp
            for note in layout.notes:
                if note.type_name != "NT_PRSTATUS" or note.desc_size < offset + size:
                    continue
                pointer = struct.unpack_from("<Q" if size == 8 else "<I", descriptor(note), offset)[0]
                if (i := anonymous_at(pointer)) is not None and i not in named:
                    named[i] = (f"[stack:{note.thread}]", f"thread {note.thread}'s saved stack pointer lies in it")
    for i, (name, _) in named.items():
        regions[i] = replace(regions[i], kind=RegionKind.STACK, name=name)
    return [f"named {name} at {regions[i].start:#x}: {how}" for i, (name, how) in sorted(named.items())]
