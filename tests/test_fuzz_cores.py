"""Property-based fuzzing of `remanence scan` with broken core files (hypothesis).

The seed is a real gcore of a tiny libc-free program (tests/programs/core_holder.c, under 200 KiB) that holds a
random secret on its stack and maps a second file, so NT_FILE entries name different files. The control is the program's own path: the kernel keeps it on the initial stack (argv[0],
AT_EXECFN) and the core also names it in its NT_FILE note, which is what makes it a trap: when the stack segment's
header is damaged, the control is left only in a note, which proves nothing about memory. Each case mutates the seed (truncation, bit flips, ELF header / program header /
note field edits, duplicated segments and NT_FILE entries, random bytes) and scans it through the CLI, in-process.

Every case must end with an exit code of the documented set, no traceback and no "internal error", one
`remanence: scan: FILE: ...` line per ERROR, and never a PASS ("absent") unless the file's load segments, read
here with a parser of our own, hold the control and not the secret.
"""
from __future__ import annotations

import io
import json
import os
import platform
import shutil
import struct
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from remanence.cli import main
from remanence.process import die_with_parent
from remanence.targets import PROJECT_ROOT

PROGRAM = Path(__file__).parent / "programs" / "core_holder.c"
EXIT_CODES = {0, 1, 2, 3}
PT_LOAD, PT_NOTE, NT_FILE = 1, 4, 0x46494C45
ELF_HEADER = {"e_type": (16, 2), "e_machine": (18, 2), "e_version": (20, 4), "e_phoff": (32, 8), "e_shoff": (40, 8),
              "e_ehsize": (52, 2), "e_phentsize": (54, 2), "e_phnum": (56, 2), "e_shentsize": (58, 2),
              "e_shnum": (60, 2), "e_shstrndx": (62, 2), "ei_class": (4, 1), "ei_data": (5, 1)}
PHDR = {"p_type": (0, 4), "p_flags": (4, 4), "p_offset": (8, 8), "p_vaddr": (16, 8), "p_filesz": (32, 8), "p_memsz": (40, 8)}
PHDR_SIZE = 56
# Fixed: reproducible in CI, and hypothesis writes no example database into the repository.
FUZZ = dict(derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck))


@dataclass(frozen=True)
class Seed:
    core: bytes
    secret: bytes
    control: str                       # the program's path
    fields: tuple[tuple[int, int], ...]          # (file offset, width) of every header and note field
    phdrs: tuple[int, ...]             # file offset of each program header
    nt_file_entries: tuple[int, ...]   # file offset of each NT_FILE (start, end, page offset) entry
    structure: tuple[int, int]         # [start, end) of the note segment: where flips and edits matter most

    def _repr_pretty_(self, printer, cycle) -> None:      # hypothesis prints fixtures of a failing case: keep it short
        printer.text(f"Seed(control={self.control!r})")


@dataclass(frozen=True)
class Case:
    """A mutated core; shown by what was done to the seed, so a failing case reads as a recipe, not the whole file."""
    core: bytes
    what: str

    def _repr_pretty_(self, printer, cycle) -> None:
        printer.text(self.what)


def _layout(core: bytes) -> tuple[list[tuple[int, int]], list[int], list[int], tuple[int, int]]:
    """Field offsets of a little-endian ELF64 core, read with struct (not with the code under test)."""
    fields = list(ELF_HEADER.values())
    phoff, phnum = struct.unpack_from("<Q", core, 32)[0], struct.unpack_from("<H", core, 56)[0]
    phdrs = [phoff + i * PHDR_SIZE for i in range(phnum)]
    fields += [(ph + at, width) for ph in phdrs for at, width in PHDR.values()]
    nt_file_entries: list[int] = []
    note_range = (0, 0)
    for ph in phdrs:
        p_type, _, p_offset, _, _, p_filesz = struct.unpack_from("<IIQQQQ", core, ph)
        if p_type != PT_NOTE:
            continue
        note_range, pos = (p_offset, p_offset + p_filesz), p_offset
        while pos + 12 <= p_offset + p_filesz:
            namesz, descsz, n_type = struct.unpack_from("<III", core, pos)
            fields += [(pos, 4), (pos + 4, 4), (pos + 8, 4)]
            desc = pos + 12 + (namesz + 3) // 4 * 4
            if n_type == NT_FILE:
                count = struct.unpack_from("<Q", core, desc)[0]
                fields += [(desc, 8), (desc + 8, 8)]
                nt_file_entries = [desc + 16 + 24 * i for i in range(count)]
                fields += [(entry + k, 8) for entry in nt_file_entries for k in (0, 8, 16)]
            pos = desc + (descsz + 3) // 4 * 4
    return fields, phdrs, nt_file_entries, note_range


def _make_seed(folder: Path) -> Seed:
    if platform.machine() != "x86_64":
        pytest.skip("the seed program uses raw x86-64 system calls")
    for tool in ("gcc", "gdb"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not found on PATH: cannot make the seed core")
    program = folder / "core-holder-program"
    subprocess.run(["gcc", "-O1", "-static", "-nostdlib", "-fno-stack-protector", "-o", program, PROGRAM],
                   check=True, timeout=60, preexec_fn=die_with_parent)
    secret = os.urandom(32)
    holder = subprocess.Popen([program, PROGRAM], stdin=subprocess.PIPE, stdout=subprocess.PIPE, preexec_fn=die_with_parent)
    try:
        holder.stdin.write(secret)
        holder.stdin.close()
        assert holder.stdout.readline() == b"ready\n"
        core = folder / "seed.core"
        subprocess.run(["gdb", "-batch", "-nx", "-p", str(holder.pid), "-ex", f"gcore {core}"], check=True, timeout=60,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                       preexec_fn=die_with_parent)
    finally:
        holder.kill()
        holder.wait()
    data = core.read_bytes()
    core.unlink()
    fields, phdrs, entries, note_range = _layout(data)
    return Seed(data, secret, str(program), tuple(fields), tuple(phdrs), tuple(entries), note_range)


@pytest.fixture(scope="module")
def seed(tmp_path_factory) -> Seed:
    return _make_seed(tmp_path_factory.mktemp("seed"))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cases")


def _load_bytes(core: bytes) -> list[bytes] | None:
    """The bytes of each PT_LOAD segment as the program headers place them (our own reading); None when the header
    is not one of a little-endian ELF64 core with a plain program header count."""
    if len(core) < 64 or core[:4] != b"\x7fELF" or core[4:6] != b"\x02\x01":
        return None
    phoff, phentsize, phnum = struct.unpack_from("<Q", core, 32)[0], *struct.unpack_from("<HH", core, 54)
    if phnum == 0xFFFF:                # PN_XNUM: the count is in section 0
        return None
    segments = []
    for i in range(phnum):
        at = phoff + i * phentsize
        if at + PHDR_SIZE > len(core):
            break
        p_type, _, p_offset, _, _, p_filesz = struct.unpack_from("<IIQQQQ", core, at)
        if p_type == PT_LOAD and p_filesz:
            segments.append(core[p_offset:p_offset + p_filesz])
    return segments


def scan_case(seed: Seed, workdir: Path, case: Case) -> None:
    """Scan one mutated core through the CLI and check every property."""
    core = case.core
    path = workdir / "case.core"
    path.write_bytes(core)
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(["scan", str(path), "--secret-hex", seed.secret.hex(), "--control", seed.control,
                     "--out", str(workdir / "r"), "--format", "json", "-q"])
    stderr = err.getvalue()
    assert code in EXIT_CODES, stderr
    assert "Traceback" not in stderr and "internal error" not in stderr, stderr
    [verdict] = json.loads((workdir / "r" / "results.json").read_text())["verdicts"]
    outcome = verdict["outcome"]
    if outcome == "ERROR":
        assert stderr.startswith(f"remanence: scan: {path}: ") and stderr.count("\n") == 1, stderr
        assert code == 3
    else:
        assert stderr == ""
    assert seed.secret.hex() not in stderr + out.getvalue()
    if outcome == "PASS":                # "absent": only with the control in memory and the secret in no memory
        memory = _load_bytes(core)
        assert memory is not None, verdict["reason"]
        assert any(seed.control.encode() in m for m in memory), verdict["reason"]
        assert not any(seed.secret in m for m in memory), verdict["reason"]


# --- mutations ------------------------------------------------------------------------------------------

def _offsets(seed: Seed) -> st.SearchStrategy[int]:
    """Anywhere in the file, mostly in the headers and notes, where a change alters the structure."""
    headers_end = max(seed.phdrs) + PHDR_SIZE
    return st.one_of(st.integers(0, headers_end - 1), st.integers(*seed.structure).map(lambda o: min(o, len(seed.core) - 1)),
                     st.integers(0, len(seed.core) - 1))


def _put(core: bytearray, offset: int, width: int, value: int) -> None:
    core[offset:offset + width] = (value % (1 << 8 * width)).to_bytes(width, "little")


def _field_values(seed: Seed, width: int) -> st.SearchStrategy[int]:
    top = (1 << 8 * width) - 1
    others = [int.from_bytes(seed.core[o:o + w], "little") for o, w in seed.fields if w == width]
    size = len(seed.core)
    return st.one_of(st.sampled_from([0, 1, 2, 3, 4, 5, 0xFF, 0x1000, top, top >> 1, size, size - 1, size + 1, 64, 56]),
                     st.sampled_from(others).flatmap(lambda v: st.integers(-4096, 4096).map(lambda d: v + d)),
                     st.integers(0, top))


@st.composite
def truncated(draw, seed: Seed) -> Case:
    ends = [o + w for o, w in seed.fields] + list(seed.structure)
    cut = draw(st.one_of(st.integers(0, len(seed.core) - 1),
                         st.sampled_from(ends).flatmap(lambda e: st.integers(e - 8, e + 8))))
    cut = max(0, min(cut, len(seed.core) - 1))
    return Case(seed.core[:cut], f"truncated to {cut:#x} bytes")


@st.composite
def bit_flipped(draw, seed: Seed) -> Case:
    core = bytearray(seed.core)
    flips = draw(st.lists(st.tuples(_offsets(seed), st.integers(0, 7)), min_size=1, max_size=8))
    for offset, bit in flips:
        core[offset] ^= 1 << bit
    return Case(bytes(core), "bits flipped at " + ", ".join(f"{o:#x}:{b}" for o, b in flips))


@st.composite
def field_edited(draw, seed: Seed) -> Case:
    core = bytearray(seed.core)
    edits = []
    for _ in range(draw(st.integers(1, 4))):
        offset, width = draw(st.sampled_from(seed.fields))
        value = draw(_field_values(seed, width))
        _put(core, offset, width, value)
        edits.append(f"{width} bytes at {offset:#x} = {value:#x}")
    return Case(bytes(core), "fields set: " + ", ".join(edits))


@st.composite
def duplicated(draw, seed: Seed) -> Case:
    """A program header or an NT_FILE entry copied over another, as is or shifted to overlap it."""
    core = bytearray(seed.core)
    table, size = draw(st.sampled_from([(seed.phdrs, PHDR_SIZE), (seed.nt_file_entries, 24)]))
    source, target = draw(st.sampled_from(table)), draw(st.sampled_from(table))
    core[target:target + size] = seed.core[source:source + size]
    what = f"{size}-byte entry at {source:#x} copied to {target:#x}"
    address_at = 16 if size == PHDR_SIZE else 0           # p_vaddr / the entry's start
    if draw(st.booleans()):
        shift = draw(st.sampled_from([1, 16, 0x800, 0x1000, -0x1000]))
        start = int.from_bytes(core[target + address_at:target + address_at + 8], "little")
        _put(core, target + address_at, 8, start + shift)
        what += f", its start moved by {shift:#x}"
    return Case(bytes(core), what)


@st.composite
def random_bytes(draw, seed: Seed) -> Case:
    if draw(st.booleans()):           # a span of the seed replaced by noise
        offset = draw(_offsets(seed))
        noise = draw(st.binary(min_size=1, max_size=512))
        return Case(seed.core[:offset] + noise + seed.core[offset + len(noise):],
                    f"{len(noise)} bytes at {offset:#x} replaced by {noise.hex()}")
    keep = draw(st.sampled_from([0, 4, 16, 64]))      # noise, or noise after the seed's ELF start
    noise = draw(st.binary(max_size=4096))
    return Case(seed.core[:keep] + noise, f"the seed's first {keep} bytes, then {noise.hex()}")


# --- the cases ------------------------------------------------------------------------------------------

def test_seed_core_fails_with_the_secret_and_passes_without(seed, workdir):
    """The seed itself: the secret is found (FAIL); an absent value PASSes on the control seen on the stack."""
    path = workdir / "seed.core"
    path.write_bytes(seed.core)
    memory = _load_bytes(seed.core)
    assert sum(seed.secret in m for m in memory) == 1 and any(seed.control.encode() in m for m in memory)
    for secret, outcome, code in ((seed.secret, "FAIL", 1), (os.urandom(32), "PASS", 0)):
        with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
            got = main(["scan", str(path), "--secret-hex", secret.hex(), "--control", seed.control,
                        "--out", str(workdir / "s"), "--format", "json", "-q"])
        [verdict] = json.loads((workdir / "s" / "results.json").read_text())["verdicts"]
        assert (got, verdict["outcome"]) == (code, outcome), verdict["reason"]
    assert "control seen" in verdict["reason"] and "[stack]" in verdict["reason"]


def test_control_only_in_notes_is_inconclusive(seed, workdir):
    """The issue's case: the stack segment's header damaged, so the program path is left only in NT_FILE."""
    core = bytearray(seed.core)
    for ph in seed.phdrs:
        p_type, _, p_offset, _, _, p_filesz = struct.unpack_from("<IIQQQQ", seed.core, ph)
        if p_type == PT_LOAD and seed.control.encode() in seed.core[p_offset:p_offset + p_filesz]:
            _put(core, ph, 4, 0x6474E551)                                   # PT_GNU_STACK: no longer a load segment
    assert not any(seed.control.encode() in m for m in _load_bytes(bytes(core)))
    path = workdir / "stackless.core"
    path.write_bytes(core)
    with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
        code = main(["scan", str(path), "--secret-hex", os.urandom(32).hex(), "--control", seed.control,
                     "--out", str(workdir / "n"), "--format", "json", "-q"])
    [verdict] = json.loads((workdir / "n" / "results.json").read_text())["verdicts"]
    assert (code, verdict["outcome"], verdict["canary_seen"]) == (3, "INCONCLUSIVE", False)
    assert "the control was seen only in the core's notes, not in memory: the memory capture is not proven" \
        in verdict["reason"]


@settings(max_examples=80, **FUZZ)
@given(data=st.data())
def test_truncated_cores(seed, workdir, data):
    scan_case(seed, workdir, data.draw(truncated(seed)))


@settings(max_examples=150, **FUZZ)
@given(data=st.data())
def test_bit_flipped_cores(seed, workdir, data):
    scan_case(seed, workdir, data.draw(bit_flipped(seed)))


@settings(max_examples=150, **FUZZ)
@given(data=st.data())
def test_field_edited_cores(seed, workdir, data):
    scan_case(seed, workdir, data.draw(field_edited(seed)))


@settings(max_examples=60, **FUZZ)
@given(data=st.data())
def test_duplicated_segments_and_nt_file_entries(seed, workdir, data):
    scan_case(seed, workdir, data.draw(duplicated(seed)))


@settings(max_examples=60, **FUZZ)
@given(data=st.data())
def test_random_bytes(seed, workdir, data):
    scan_case(seed, workdir, data.draw(random_bytes(seed)))


def scan_strange(seed: Seed, tmp_path: Path, strange: dict[Path, str]) -> None:
    """Inputs that are not regular readable files: one line each, an ERROR verdict each, no blocking on a FIFO,
    and the good core among them still scanned. In a subprocess, so a hang is a timeout and a traceback is seen."""
    good = tmp_path / "good.core"
    good.write_bytes(seed.core)
    done = subprocess.run([sys.executable, "-m", "remanence", "scan", *map(str, strange), str(good),
                           "--secret-hex", seed.secret.hex(), "--control", seed.control, "--out", str(tmp_path / "r"),
                           "--format", "json", "-q"], capture_output=True, text=True, timeout=120, cwd=PROJECT_ROOT,
                          stdin=subprocess.DEVNULL, preexec_fn=die_with_parent)
    assert done.returncode == 1, done.stderr                    # the good core's FAIL
    assert "Traceback" not in done.stderr and "internal error" not in done.stderr, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == len(strange), done.stderr
    for path, what in strange.items():
        assert f"remanence: scan: {path}: {what}" in lines
    outcomes = {v["scenario"]: v["outcome"] for v in json.loads((tmp_path / "r" / "results.json").read_text())["verdicts"]}
    assert outcomes == {**{p.name: "ERROR" for p in strange}, "good.core": "FAIL"}


def test_strange_files_are_one_line_errors_and_the_good_core_is_still_scanned(seed, tmp_path):
    fifo = tmp_path / "fifo.core"
    os.mkfifo(fifo)
    folder = tmp_path / "folder.core"
    folder.mkdir()
    scan_strange(seed, tmp_path, {fifo: "not a regular file", folder: "is a directory, not a core file",
                                  Path("/dev/null"): "not a regular file",
                                  Path("/proc/self/mem"): "cannot read: Input/output error"})   # read fails, even for root


def test_symlink_loop_is_a_one_line_error(seed, tmp_path):
    loop = tmp_path / "loop.core"
    loop.symlink_to(loop.name)
    scan_strange(seed, tmp_path, {loop: "cannot read: Too many levels of symbolic links"})
