"""The Node.js target (targets/node) against the protocol in targets/PROTOCOL.md.

Everything here runs the real program: the target's files (package.json, package-lock.json, *.js) are
copied into a temporary directory beside the SDK's (targets/sdk/node, where the target's file: dependency
points), `npm ci` installs the pinned sodium-native and links the SDK there (never in the source tree), and
`node --expose-gc target.js <scenario>` is driven over a socketpair passed as fd 3, exactly as the harness
drives it. No harness code is used; the memory facts are read straight from /proc.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from target_driver import (Target, after_bad_environment, after_bogus_reply, dies_before_ready, drive, exit_after_eof,
                           fresh, read_mem, scenario_file_names, smaps_entry, target_env)

ROOT = Path(__file__).resolve().parents[1]
NODE_DIR = ROOT / "targets" / "node"
SDK_DIR = ROOT / "targets" / "sdk" / "node"
SCENARIO_DIR = ROOT / "scenarios" / "node"
MIN_NODE = 18

# scenario -> checkpoint names, in order (the scenario files rely on these)
SCENARIOS = {
    "node.sodium.live": ["in_use"],
    "node.sodium.noaccess": ["in_use", "noaccess"],
    "node.sodium.freed": ["in_use", "freed", "after_gc"],
    "node.sodium.dropped": ["in_use", "collected", "finalized"],
    "node.buffer.alloc": ["in_use", "wiped"],
    "node.buffer.dropped": ["in_use", "after_gc"],
    "node.string.hex": ["converted", "wiped", "dropped"],
    "node.string.base64": ["converted", "wiped", "dropped"],
    "node.string.latin1": ["converted", "wiped", "dropped"],
}

# Notes each scenario sends (regular expressions over the whole note body).
NOTES = {
    "node.sodium.freed": [r"detached_length=0 still_mapped=true", r"gc_rounds=\d+"],
    "node.sodium.dropped": [r"still_mapped_after_gc_without_turn=true", r"gc_rounds=\d+"],
    "node.buffer.dropped": [r"gc_rounds=\d+"],
    "node.string.hex": [r"gc_rounds=\d+"],
    "node.string.base64": [r"gc_rounds=\d+"],
    "node.string.latin1": [r"gc_rounds=\d+"],
}

TIMEOUT = 60.0
ADDR_RE = re.compile(r"0x[0-9a-f]+")
NETWORK_ERRORS = ("ENOTFOUND", "EAI_AGAIN", "ECONNREFUSED", "ECONNRESET", "ETIMEDOUT", "ENETUNREACH")


def _node_problem() -> str | None:
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            return f"{tool} not found on PATH (the Node target needs Node >= {MIN_NODE} and npm)"
    r = subprocess.run(["node", "--version"], capture_output=True, text=True)
    m = re.match(r"v(\d+)\.", r.stdout)
    if r.returncode != 0 or not m:
        return f"node --version failed: {r.stderr.strip()[-300:]}"
    if int(m[1]) < MIN_NODE:
        return f"node {r.stdout.strip()} is older than {MIN_NODE}"
    return None


pytestmark = pytest.mark.skipif(_node_problem() is not None, reason=_node_problem() or "")


def _copy_package(source: Path, dest: Path) -> None:
    dest.mkdir(parents=True)
    for path in source.iterdir():
        if path.name in ("package.json", "package-lock.json") or path.suffix == ".js":
            shutil.copy2(path, dest / path.name)


@pytest.fixture(scope="session")
def target_dir(tmp_path_factory) -> Path:
    """The target's files plus node_modules from `npm ci`, in a temporary directory (as the harness does: the
    SDK beside it, where its relative file: dependency points)."""
    top = tmp_path_factory.mktemp("node-target")
    out = top / "node"
    _copy_package(NODE_DIR, out)
    _copy_package(SDK_DIR, top / "sdk" / "node")
    r = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=out, capture_output=True, text=True,
                       timeout=600)
    if r.returncode != 0:
        tail = (r.stderr or r.stdout).strip()[-1500:]
        if any(code in tail for code in NETWORK_ERRORS):
            pytest.skip(f"npm ci could not reach the registry: {tail[-300:]}")
        pytest.fail(f"npm ci failed:\n{tail}")
    assert (out / "node_modules" / "sodium-native" / "package.json").is_file()
    assert (out / "node_modules" / "remanence-sdk" / "index.js").is_file()
    return out


@pytest.fixture(scope="session")
def target_js(target_dir) -> Path:
    return target_dir / "target.js"


# ------------------------------------------------------------------- driving


def _env(secret_len, canary_len, **overrides) -> dict[str, str]:
    # What the harness gives the Node target: a fixed, minimal environment.
    return target_env({"PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"), "LC_ALL": "C"},
                      secret_len, canary_len, **overrides)


def node_argv(target_js: Path, *args: str) -> list[str]:
    return ["--expose-gc", str(target_js), *args]


def start_target(target_js, scenario, env) -> Target:
    return Target(shutil.which("node"), node_argv(target_js, scenario), env, TIMEOUT)


def converse(target_js, scenario, secret, canary, on_checkpoint=None):
    return drive(start_target(target_js, scenario, _env(len(secret), len(canary))), secret, canary, on_checkpoint)


def run_node(*argv, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["node", *argv], capture_output=True, text=True, timeout=TIMEOUT, **kw)


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


# ------------------------------------------------------------------ protocol


def test_list_names_all_scenarios(target_js):
    r = run_node(*node_argv(target_js, "--list"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == sorted(SCENARIOS)
    assert r.stdout.endswith("\n")


def test_every_scenario_has_a_scenario_file():
    assert scenario_file_names(SCENARIO_DIR, "node") == set(SCENARIOS)


def test_package_pins_sodium_native_exactly():
    import json
    pkg = json.loads((NODE_DIR / "package.json").read_text())
    version = pkg["dependencies"]["sodium-native"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", version), version
    lock = json.loads((NODE_DIR / "package-lock.json").read_text())
    assert lock["packages"]["node_modules/sodium-native"]["version"] == version
    assert not (NODE_DIR / "node_modules").exists() or "node_modules/" in (NODE_DIR / ".gitignore").read_text()


@pytest.mark.parametrize("argv", [["no.such"], [], ["node.sodium.live", "extra"]])
def test_unknown_or_missing_scenario_exits_64(target_js, argv):
    r = run_node(*node_argv(target_js, *argv))
    assert r.returncode == 64
    name = argv[0] if argv else ""
    m = re.search(rf"unknown scenario '{re.escape(name)}'; known: (.*)", r.stderr)
    assert m, r.stderr
    assert m.group(1).split() == sorted(SCENARIOS)
    assert r.stdout == ""


def test_duplicate_registration_aborts_before_any_scenario(target_dir, tmp_path):
    """register() refuses a name twice at module load; a program that does so dies before `ready`."""
    dup = target_dir / "dup_register_for_test.js"
    dup.write_text("'use strict'\nconst t = require('./target.js')\n"
                   "t.register('node.sodium.live', () => {})\n")
    try:
        r = run_node(str(dup), "--list", env=_env(32, 16))
        assert r.returncode != 0
        assert "duplicate scenario registration 'node.sodium.live'" in r.stderr
        assert r.stdout == ""
        t = Target(shutil.which("node"), [str(dup), "node.sodium.live"], _env(32, 16), TIMEOUT)
        assert dies_before_ready(t) != 0
        assert b"duplicate scenario registration 'node.sodium.live'" in t.stderr
    finally:
        dup.unlink()


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_full_conversation(target_js, scenario):
    secret, canary = fresh(32), fresh(48)
    run = converse(target_js, scenario, secret, canary)
    assert run.rc == 0, run.stderr
    assert run.lines[-1] == "done"
    assert [name for name, _ in run.checkpoints] == SCENARIOS[scenario]
    for name, addr in run.checkpoints:
        assert ADDR_RE.fullmatch(addr), (name, addr)
    assert len({addr for _, addr in run.checkpoints}) == 1  # where the scenario keeps (or kept) the key
    assert len(run.notes) == len(NOTES.get(scenario, [])), run.notes
    for pattern, body in zip(NOTES.get(scenario, []), run.notes):
        assert re.fullmatch(pattern, body), (pattern, body)
    for blob in (run.stdout, run.stderr, "\n".join(run.lines).encode()):
        assert secret not in blob and canary not in blob
        assert secret.hex().encode() not in blob


@pytest.mark.parametrize("secret_len", [1, 4096])
@pytest.mark.parametrize("scenario", ["node.sodium.live", "node.sodium.freed", "node.buffer.alloc", "node.string.hex"])
def test_extreme_secret_lengths(target_js, scenario, secret_len):
    secret = fresh(secret_len)

    def probe(t, name, addr, probes):
        if name in ("in_use", "converted"):
            probes["at"] = read_mem(t.pid, int(addr, 16), secret_len)

    run = converse(target_js, scenario, secret, fresh(16), probe)
    assert run.rc == 0, run.stderr
    assert [name for name, _ in run.checkpoints] == SCENARIOS[scenario]
    assert run.probes["at"] == secret  # the address is found even for a 1-byte key


@pytest.mark.parametrize(
    "overrides",
    [
        {"REMANENCE_SECRET_LEN": "0"},
        {"REMANENCE_SECRET_LEN": "4097"},
        {"REMANENCE_SECRET_LEN": "12x"},
        {"REMANENCE_SECRET_LEN": "+32"},
        {"REMANENCE_SECRET_LEN": None},
        {"REMANENCE_CANARY_LEN": "1048577"},
        {"REMANENCE_CANARY_LEN": None},
        {"REMANENCE_PROTOCOL": "2"},
    ],
)
def test_bad_environment_fails_70_after_ready(target_js, overrides):
    line, rc = after_bad_environment(start_target(target_js, "node.sodium.live", _env(32, 16, **overrides)))
    assert line is not None and line.startswith("error "), line
    assert rc == 70


def test_without_expose_gc_fails_70(target_js):
    t = Target(shutil.which("node"), [str(target_js), "node.sodium.live"], _env(32, 16), TIMEOUT)
    line, rc = after_bad_environment(t)
    assert line == "error global.gc is missing: run node with --expose-gc"
    assert rc == 70


@pytest.mark.parametrize("scenario", ["node.sodium.live", "node.sodium.freed", "node.buffer.alloc"])
@pytest.mark.parametrize("stage", ["before_canary", "mid_canary", "mid_secret", "at_checkpoint"])
def test_eof_on_fd3_exits_75(target_js, scenario, stage):
    secret, canary = fresh(32), fresh(16)
    t = start_target(target_js, scenario, _env(len(secret), len(canary)))
    rc, line = exit_after_eof(t, stage, secret, canary)
    if stage == "at_checkpoint":
        assert line is not None and line.startswith("checkpoint "), line
    assert rc == 75, t.stderr


def test_missing_fd3_exits_75(target_js):
    r = subprocess.run(["node", *node_argv(target_js, "node.sodium.live")], capture_output=True, timeout=TIMEOUT,
                       env=_env(32, 16), close_fds=True)
    assert r.returncode == 75


def test_reply_other_than_continue_fails_70_without_echo(target_js):
    secret = fresh(32)
    t = start_target(target_js, "node.sodium.live", _env(len(secret), 16))
    checkpoint, line, rc = after_bogus_reply(t, secret)
    assert checkpoint.startswith("checkpoint in_use ")
    assert rc == 70
    assert line == "error expected 'continue' after checkpoint in_use"
    assert b"bogus" not in t.stderr


def test_continue_and_secret_may_arrive_in_pieces(target_js):
    secret = fresh(32)
    t = start_target(target_js, "node.sodium.noaccess", _env(len(secret), 16))
    try:
        assert t.readline() == "ready 1"
        t.send(fresh(16))
        t.send(secret[:10])
        t.send(secret[10:])
        assert t.readline().startswith("checkpoint in_use ")
        t.send(b"cont")
        t.send(b"inue\n")
        assert t.readline().startswith("checkpoint noaccess ")
        t.send(b"continue\n")
        assert t.readline() == "done"
        rc = t.wait()
    finally:
        t.kill()
    assert rc == 0, t.stderr


# -------------------------------------------------------------- memory facts


def test_sodium_key_is_locked_dontdump_and_guarded(target_js):
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

    run = converse(target_js, "node.sodium.live", secret, fresh(16), probe)
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


def test_noaccess_page_is_still_read_through_proc_mem(target_js):
    secret = fresh(32)

    def probe(t, name, addr, probes):
        a = int(addr, 16)
        probes[name] = (mapping_of(t.pid, a)[2], read_mem(t.pid, a, len(secret)))

    run = converse(target_js, "node.sodium.noaccess", secret, fresh(16), probe)
    assert run.rc == 0, run.stderr
    assert run.probes["in_use"] == ("rw-p", secret)
    assert run.probes["noaccess"] == ("---p", secret)


@pytest.mark.parametrize("scenario, still, gone", [("node.sodium.freed", "freed", "after_gc"),
                                                   ("node.sodium.dropped", "collected", "finalized")])
def test_sodium_region_is_wiped_only_by_the_finalizer(target_js, scenario, still, gone):
    """sodium-native's sodium_free (or a collection alone) leaves the key in place; only the napi finalizer,
    run from the event loop after a collection, wipes and unmaps it."""
    secret = fresh(32)

    def probe(t, name, addr, probes):
        a = int(addr, 16)
        probes[name] = (mapping_of(t.pid, a), memory_contains(t.pid, secret))
        probes[name + "/pieces"] = memory_contains(t.pid, secret[:16]) + memory_contains(t.pid, secret[16:])
        if name == still:
            probes["key"] = read_mem(t.pid, a, len(secret))

    run = converse(target_js, scenario, secret, fresh(16), probe)
    assert run.rc == 0, run.stderr
    addr = int(run.checkpoints[0][1], 16)
    assert run.probes["key"] == secret
    assert run.probes[still][0] is not None
    assert [a for a, _, _ in run.probes[still][1]] == [addr]
    assert run.probes[gone] == (None, [])
    assert run.probes[gone + "/pieces"] == []   # nor half of it


def test_buffer_alloc_lives_in_the_c_heap_and_fill_wipes_the_only_copy(target_js):
    secret = fresh(32)

    def probe(t, name, addr, probes):
        a = int(addr, 16)
        probes[name] = (mapping_of(t.pid, a)[3], smaps_entry(t.pid, a)["VmFlags"].split(),
                        read_mem(t.pid, a, len(secret)), memory_contains(t.pid, secret[8:24]))

    run = converse(target_js, "node.buffer.alloc", secret, fresh(16), probe)
    assert run.rc == 0, run.stderr
    addr = int(run.checkpoints[0][1], 16)
    name, flags, key, copies = run.probes["in_use"]
    # malloc memory: [heap], or (about half the runs) the anonymous mapping of another glibc arena
    assert name in ("[heap]", "") and "dd" not in flags and "lo" not in flags
    assert key == secret and [a for a, _, _ in copies] == [addr + 8]
    name, flags, key, copies = run.probes["wiped"]
    assert key == bytes(32) and copies == []


def test_dropped_buffer_is_freed_not_wiped_first(target_js):
    secret = fresh(32)

    def probe(t, name, addr, probes):
        probes[name] = read_mem(t.pid, int(addr, 16), len(secret))

    run = converse(target_js, "node.buffer.dropped", secret, fresh(16), probe)
    assert run.rc == 0, run.stderr
    assert run.probes["in_use"] == secret
    after = run.probes["after_gc"]
    assert after[:16] != secret[:16]      # glibc's free-list pointers (the rest may or may not be reused yet)
    assert after != bytes(32)             # nobody zeroed it: what is there is allocator data or key, never a wipe


ENCODINGS = {
    "node.string.hex": lambda s: s.hex().encode(),
    "node.string.base64": lambda s: base64.b64encode(s),
    "node.string.latin1": lambda s: s,
}
@pytest.mark.parametrize("scenario", sorted(ENCODINGS))
def test_string_copy_survives_the_wipe(target_js, scenario):
    secret = fresh(32)
    whole = ENCODINGS[scenario](secret)

    def probe(t, name, addr, probes):
        if name != "dropped":
            probes[name] = (read_mem(t.pid, int(addr, 16), len(secret)), memory_contains(t.pid, whole))

    run = converse(target_js, scenario, secret, fresh(16), probe)
    assert run.rc == 0, run.stderr
    key, copies = run.probes["converted"]
    assert key == secret and copies
    key, copies = run.probes["wiped"]
    assert key == bytes(32)
    assert copies and all(perms.startswith("rw") and name == "" for _, perms, name in copies)  # the V8 heap
    # What is left of the dead string at `dropped` depends on V8's background GC work (concurrent
    # sweeping, the memory reducer, freed pages returned to the OS) and on how long the checkpoints took:
    # the scenario files only observe it.
