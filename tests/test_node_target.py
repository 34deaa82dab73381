"""What only the Node.js target (targets/node) does, beyond the protocol rules every target follows
(test_protocol_conformance.py): sodium-native's guarded pages and its finalizer, Buffers in the C heap,
strings in the V8 heap, the pinned package, and --expose-gc.

Everything here runs the real program as the runner builds it (the target and the SDK side by side in its
cache, `npm ci` there, `node --expose-gc target.js <scenario>`), driven over a socketpair passed as fd 3,
exactly as the harness drives it. No other harness code is used; the memory facts are read straight from /proc.
"""

from __future__ import annotations

import base64
import json
import os
import re

import pytest
from protocol_targets import PROJECT_ROOT, converse, harness_env, program, start
from target_driver import after_bad_environment, fresh, read_mem, smaps_entry

NODE_DIR = PROJECT_ROOT / "targets" / "node"


def memory_contains(pid: int, needle: bytes) -> list[tuple[int, str, str]]:
    """(address, perms, name) of every copy of needle in the process's memory, read through /proc/PID/mem
    (which reads PROT_NONE pages too); kernel mappings skipped."""
    found = []
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        for line in maps:
            parts = line.split()
            name = parts[5] if len(parts) > 5 else ""
            if name in ("[vvar]", "[vvar_vclock]", "[vsyscall]"):
                continue
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            try:
                mem.seek(lo)
                data = mem.read(hi - lo)
            except OSError:
                continue
            at = data.find(needle)
            while at >= 0:
                found.append((lo + at, parts[1], name))
                at = data.find(needle, at + 1)
    return found


def mapping_of(pid: int, addr: int) -> tuple[int, int, str, str] | None:
    """(lo, hi, perms, name) of the mapping containing addr, or None."""
    with open(f"/proc/{pid}/maps") as maps:
        for line in maps:
            parts = line.split()
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            if lo <= addr < hi:
                return lo, hi, parts[1], parts[5] if len(parts) > 5 else ""
    return None


def test_package_pins_sodium_native_exactly():
    pkg = json.loads((NODE_DIR / "package.json").read_text())
    version = pkg["dependencies"]["sodium-native"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", version), version
    lock = json.loads((NODE_DIR / "package-lock.json").read_text())
    assert lock["packages"]["node_modules/sodium-native"]["version"] == version
    assert not (NODE_DIR / "node_modules").exists() or "node_modules/" in (NODE_DIR / ".gitignore").read_text()


def test_without_expose_gc_fails_70():
    node, expose_gc, target_js = program("node").command
    assert expose_gc == "--expose-gc"
    t = start((node, target_js), ["node.sodium.live"], harness_env("node", 32, 16))
    line, rc = after_bad_environment(t)
    assert line == "error global.gc is missing: run node with --expose-gc"
    assert rc == 70


# -------------------------------------------------------------- memory facts


def test_sodium_key_is_locked_dontdump_and_guarded():
    """The reported address holds the key, in a locked MADV_DONTDUMP page that ends at a PROT_NONE guard
    page; it is the only copy in the whole process (read straight from fd 3)."""
    secret = fresh(32)

    def probe(t, name, addr, probes):
        a = int(addr, 16)
        probes["key"] = read_mem(t.pid, a, len(secret))
        probes["flags"] = smaps_entry(t.pid, a)["VmFlags"].split()
        probes["mapping"] = mapping_of(t.pid, a)
        probes["after"] = mapping_of(t.pid, probes["mapping"][1])
        probes["copies"] = memory_contains(t.pid, secret)

    run = converse("node", "node.sodium.live", secret, fresh(16), probe)
    assert run.rc == 0, run.stderr
    p = run.probes
    assert p["key"] == secret
    assert "dd" in p["flags"], p["flags"]
    if os.geteuid() == 0:
        assert "lo" in p["flags"], p["flags"]
    lo, hi, perms, _ = p["mapping"]
    assert perms.startswith("rw") and int(run.checkpoints[0][1], 16) + len(secret) == hi
    assert p["after"] is not None and p["after"][2].startswith("---")  # the guard page
    assert [a for a, _, _ in p["copies"]] == [int(run.checkpoints[0][1], 16)]


def test_noaccess_page_is_still_read_through_proc_mem():
    secret = fresh(32)

    def probe(t, name, addr, probes):
        a = int(addr, 16)
        probes[name] = (mapping_of(t.pid, a)[2], read_mem(t.pid, a, len(secret)))

    run = converse("node", "node.sodium.noaccess", secret, fresh(16), probe)
    assert run.rc == 0, run.stderr
    assert run.probes["in_use"] == ("rw-p", secret)
    assert run.probes["noaccess"] == ("---p", secret)


@pytest.mark.parametrize("scenario, still, gone", [("node.sodium.freed", "freed", "after_gc"),
                                                   ("node.sodium.dropped", "collected", "finalized")])
def test_sodium_region_is_wiped_only_by_the_finalizer(scenario, still, gone):
    """sodium-native's sodium_free (or a collection alone) leaves the key in place; only the napi finalizer,
    run from the event loop after a collection, wipes and unmaps it."""
    secret = fresh(32)

    def probe(t, name, addr, probes):
        a = int(addr, 16)
        probes[name] = (mapping_of(t.pid, a), memory_contains(t.pid, secret))
        probes[name + "/pieces"] = memory_contains(t.pid, secret[:16]) + memory_contains(t.pid, secret[16:])
        if name == still:
            probes["key"] = read_mem(t.pid, a, len(secret))

    run = converse("node", scenario, secret, fresh(16), probe)
    assert run.rc == 0, run.stderr
    addr = int(run.checkpoints[0][1], 16)
    assert run.probes["key"] == secret
    assert run.probes[still][0] is not None
    assert [a for a, _, _ in run.probes[still][1]] == [addr]
    assert run.probes[gone] == (None, [])
    assert run.probes[gone + "/pieces"] == []   # nor half of it


def test_buffer_alloc_lives_in_the_c_heap_and_fill_wipes_the_only_copy():
    secret = fresh(32)

    def probe(t, name, addr, probes):
        a = int(addr, 16)
        probes[name] = (mapping_of(t.pid, a)[3], smaps_entry(t.pid, a)["VmFlags"].split(),
                        read_mem(t.pid, a, len(secret)), memory_contains(t.pid, secret[8:24]))

    run = converse("node", "node.buffer.alloc", secret, fresh(16), probe)
    assert run.rc == 0, run.stderr
    addr = int(run.checkpoints[0][1], 16)
    name, flags, key, copies = run.probes["in_use"]
    # malloc memory: [heap], or (about half the runs) the anonymous mapping of another glibc arena
    assert name in ("[heap]", "") and "dd" not in flags and "lo" not in flags
    assert key == secret and [a for a, _, _ in copies] == [addr + 8]
    name, flags, key, copies = run.probes["wiped"]
    assert key == bytes(32) and copies == []


def test_dropped_buffer_goes_back_to_malloc():
    secret = fresh(32)

    def probe(t, name, addr, probes):
        probes[name] = read_mem(t.pid, int(addr, 16), len(secret))

    run = converse("node", "node.buffer.dropped", secret, fresh(16), probe)
    assert run.rc == 0, run.stderr
    assert run.probes["in_use"] == secret
    # Freed: glibc's free-list pointers over the first 16 bytes. What follows is the key's tail or, once the
    # chunk is reused (a calloc zeroes it) or the arena trimmed, something else: the scenario observes it.
    assert run.probes["after_gc"][:16] != secret[:16]


ENCODINGS = {
    "node.string.hex": lambda s: s.hex().encode(),
    "node.string.base64": lambda s: base64.b64encode(s),
    "node.string.latin1": lambda s: s,
}
@pytest.mark.parametrize("scenario", sorted(ENCODINGS))
def test_string_copy_survives_the_wipe(scenario):
    secret = fresh(32)
    whole = ENCODINGS[scenario](secret)

    def probe(t, name, addr, probes):
        if name != "dropped":
            probes[name] = (read_mem(t.pid, int(addr, 16), len(secret)), memory_contains(t.pid, whole))

    run = converse("node", scenario, secret, fresh(16), probe)
    assert run.rc == 0, run.stderr
    key, copies = run.probes["converted"]
    assert key == secret and copies
    key, copies = run.probes["wiped"]
    assert key == bytes(32)
    assert copies and all(perms.startswith("rw") and name == "" for _, perms, name in copies)  # the V8 heap
    # What is left of the dead string at `dropped` depends on V8's background GC work (concurrent
    # sweeping, the memory reducer, freed pages returned to the OS) and on how long the checkpoints took:
    # the scenario files only observe it.
