"""The snapshot method registry, and one gdb dump serving gcore and gcore-all where gdb's rules make them identical."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys

import pytest

from remanence.document import READ_VERSIONS, schema
from remanence.scenario import LIVE_METHODS, SNAPSHOT_METHODS
from remanence.snapshot import gcore as gcore_module
from remanence.snapshot import held_still, methods, scratch
from remanence.snapshot.elfcore import read_core_layout
from remanence.snapshot.procmaps import read_mappings

needs_gdb = pytest.mark.skipif(shutil.which("gdb") is None, reason="needs gdb")

# Maps an anonymous page, optionally marks it MADV_DONTDUMP, touches it, says "ready" and waits for stdin to close.
HOLDER = r"""
import ctypes, mmap, sys
page = mmap.mmap(-1, mmap.PAGESIZE)
page.write(b"x" * mmap.PAGESIZE)
if sys.argv[1] == "dontdump":
    address = ctypes.addressof(ctypes.c_char.from_buffer(page))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.madvise(ctypes.c_void_p(address), ctypes.c_size_t(mmap.PAGESIZE), 16) != 0:   # MADV_DONTDUMP
        sys.exit(3)
print("ready", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def holder():
    started = []

    def start(kind: str) -> subprocess.Popen:
        process = subprocess.Popen([sys.executable, "-c", HOLDER, kind], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        started.append(process)
        assert process.stdout.readline() == "ready\n"
        return process
    yield start
    for process in started:
        process.kill()
        process.wait()


def test_registry_lists_every_method_once_in_report_order():
    assert methods.names() == SNAPSHOT_METHODS == ("procmem", "gcore", "gcore-all", "kernel-core", "exit", "swap")
    assert methods.live_names() == LIVE_METHODS == ("procmem", "gcore", "gcore-all", "swap")
    assert methods.default_names() == ("procmem", "gcore", "gcore-all")
    assert [methods.method(n).timing for n in ("kernel-core", "exit")] == [methods.Timing.ENDS_TARGET, methods.Timing.AT_EXIT]
    with pytest.raises(ValueError, match="unknown snapshot method 'telepathy'; known: procmem, gcore"):
        methods.method("telepathy")
    with pytest.raises(ValueError, match="registered twice"):
        methods.register(methods.method("procmem"))


def test_the_results_schema_knows_every_registered_method():
    enums = [node["enum"] for version in READ_VERSIONS for node in _walk(schema(version)) if isinstance(node, dict) and "core-file" in node.get("enum", [])]
    assert enums and all(set(e) == {*methods.names(), "core-file"} for e in enums)


def _walk(node):
    yield node
    children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
    for child in children:
        yield from _walk(child)


def _dump(pid: int, dump_all: bool):
    """The gcore snapshot (its file freed) and its memory: {(vaddr, memsz): bytes in the file}."""
    snapshot = gcore_module.take_gcore(pid, dump_all=dump_all)
    try:
        with open(snapshot.path, "rb") as f:
            memory = {(s.vaddr, s.memsz): (f.seek(s.file_offset), f.read(s.filesz))[1]
                      for s in read_core_layout(snapshot.path).segments}
        return snapshot, memory
    finally:
        scratch.discard(snapshot.path)


@needs_gdb
def test_without_dontdump_mappings_gcore_and_gcore_all_write_the_same_memory(holder):
    """The rule one shared dump rests on, checked against gdb itself: with no MADV_DONTDUMP mapping (the kernel's
    own [vvar], marked "dd" and "io", aside) both gdb settings dump the same segments with the same bytes."""
    pid = holder("plain").pid
    assert [m.name for m in read_mappings(pid) if m.dont_dump and "io" not in m.vm_flags] == []
    with held_still(pid):       # one moment for both dumps
        plain, plain_memory = _dump(pid, dump_all=False)
        everything, all_memory = _dump(pid, dump_all=True)
    assert plain_memory == all_memory
    assert "gcore-all" in plain.serves and "gcore" in everything.serves
    assert "no mapping is MADV_DONTDUMP" in plain.serves["gcore-all"]


@needs_gdb
def test_a_dontdump_mapping_makes_the_dumps_differ_and_none_serves_the_other(holder):
    pid = holder("dontdump").pid
    assert any(m.dont_dump and "io" not in m.vm_flags for m in read_mappings(pid))
    with held_still(pid):
        plain, plain_memory = _dump(pid, dump_all=False)
        everything, all_memory = _dump(pid, dump_all=True)
    assert sum(map(len, all_memory.values())) > sum(map(len, plain_memory.values()))
    assert plain.serves == {} and everything.serves == {}


def test_a_lowered_coredump_filter_keeps_the_dumps_apart():
    """gcore-all switches gdb's filter off when the target's lacks 0x33's bits: then the images may differ."""
    assert gcore_module.identical_dumps([], 0x33) and gcore_module.identical_dumps([], 0x3f)
    assert gcore_module.identical_dumps([], 0x0) is None and gcore_module.identical_dumps([], None) is None


@needs_gdb
@pytest.mark.e2e
def test_a_run_records_which_dump_served_which_method(tmp_path):
    """malloc.nowipe has no MADV_DONTDUMP mapping: its gcore dump serves gcore-all, with the same finding. sodium.live's
    key sits in a MADV_DONTDUMP mapping: gdb dumps twice, and only gcore-all finds the key."""
    from suite_run import read_results, require
    require("c", "gcore", "gcore-all")
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "-m", "remanence", "run", "malloc.nowipe", "sodium.live", "--method",
                          "gcore,gcore-all", "--out", str(out), "--format", "json"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    verdicts = {(v["scenario"], v["checkpoint"], v["method"]): v for v in read_results(out / "results.json")["verdicts"]}
    served = verdicts[("malloc.nowipe", "freed", "gcore-all")]
    assert served["snapshot"]["served_by"]["method"] == "gcore"
    assert "no mapping is MADV_DONTDUMP" in served["snapshot"]["served_by"]["why"]
    assert [h["address"] for h in served["hits"]] == [h["address"] for h in verdicts[("malloc.nowipe", "freed", "gcore")]["hits"]] != []
    assert "served_by" not in verdicts[("malloc.nowipe", "freed", "gcore")]["snapshot"]
    assert all("served_by" not in verdicts[("sodium.live", "in_use", m)]["snapshot"] for m in ("gcore", "gcore-all"))
    assert (verdicts[("sodium.live", "in_use", "gcore")]["hits"], bool(verdicts[("sodium.live", "in_use", "gcore-all")]["hits"])) == ([], True)
    # results.json stores the served image once: gcore-all's snapshot refers to gcore's entry
    refs = {(v["scenario"], v["checkpoint"], v["method"]): v["snapshot"]
            for v in json.loads((out / "results.json").read_text())["verdicts"]}
    assert refs[("malloc.nowipe", "freed", "gcore-all")]["image"] == refs[("malloc.nowipe", "freed", "gcore")]
    assert isinstance(refs[("sodium.live", "in_use", "gcore-all")], int)
    assert refs[("sodium.live", "in_use", "gcore-all")] != refs[("sodium.live", "in_use", "gcore")]


UNTOUCHED_HOLDER = r"""
import mmap, sys
private = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
untouched = mmap.mmap(-1, 64 << 20, flags=private, prot=mmap.PROT_READ)   # reserved, never touched: reads as zeros
touched = mmap.mmap(-1, 64 << 20, flags=private)
touched[32 << 20:(32 << 20) + 16] = sys.stdin.buffer.read(16)   # one page touched, holding the marker
print("ready", flush=True)
sys.stdin.read()
"""


@needs_gdb
@pytest.mark.parametrize("held", [True, False])
def test_a_gcore_of_a_held_process_leaves_untouched_memory_unscanned(held):
    """Held stopped from the smaps reading to the dump, a mapping with no page resident or swapped is zeros in the
    core by the kernel's rule: a gap of kind untouched, not scanned. Touched memory is scanned, and the marker found."""
    from remanence.model import GapKind, Secret
    from remanence.scan.engine import scan_snapshot
    marker = os.urandom(16)
    process = subprocess.Popen([sys.executable, "-c", UNTOUCHED_HOLDER], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        process.stdin.write(marker)
        process.stdin.flush()
        assert process.stdout.readline() == b"ready\n"
        with held_still(process.pid) if held else contextlib.nullcontext():
            snapshot = gcore_module.take_gcore(process.pid, dump_all=False, held=held)
        try:
            untouched_gaps = [g for g in snapshot.gaps if g.kind is GapKind.UNTOUCHED and g.size >= 64 << 20]
            assert len(untouched_gaps) == (1 if held else 0)
            hits = scan_snapshot(snapshot, [Secret("marker", marker)]).hits
            assert [h.address for h in hits if h.full and h.encoding == "raw"] != []
        finally:
            scratch.discard(snapshot.path)
    finally:
        process.kill()
        process.wait()
