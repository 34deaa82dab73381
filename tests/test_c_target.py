"""The C target (targets/c) against the protocol in targets/PROTOCOL.md.

Everything here runs the real program: it is built with make into a temporary
directory and driven over a socketpair passed as fd 3, exactly as the harness
will drive it.  No harness code is used.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import subprocess
from pathlib import Path

import pytest
from target_driver import (Run, Target, after_bad_environment, after_bogus_reply, after_secret_of_length,
                           dies_before_ready, drive, exit_after_eof, fresh, read_mem, smaps_entry,
                           target_env)

ROOT = Path(__file__).resolve().parents[1]
C_DIR = ROOT / "targets" / "c"

# scenario -> checkpoint names, in order (the harness's scenario files rely on these)
SCENARIOS = {
    "sodium.live": ["in_use"],
    "sodium.freed": ["in_use", "freed"],
    "sodium.noaccess": ["in_use", "noaccess"],
    "sodium.readonly": ["in_use", "readonly"],
    "sodium.mlock_denied": ["in_use"],
    "malloc.nowipe": ["in_use", "freed"],
    "malloc.memset": ["in_use", "freed"],
    "malloc.memzero": ["in_use", "freed"],
    "stack.nowipe": ["in_use", "returned"],
    "stack.explicit_bzero": ["in_use", "returned"],
    "stdio.copy": ["in_use", "closed", "freed"],
}

TIMEOUT = 10.0
ADDR_RE = re.compile(r"0x[0-9a-f]+")

pytestmark = pytest.mark.skipif(
    shutil.which("make") is None or shutil.which("cc") is None,
    reason="needs make and a C compiler",
)


# --------------------------------------------------------------------- build


def _make(out: Path, *targets: str) -> None:
    r = subprocess.run(
        ["make", "-C", str(C_DIR), f"OUT={out}", *targets],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, f"make {' '.join(targets)} failed:\n{r.stdout}\n{r.stderr}"


@pytest.fixture(scope="session")
def build_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("c-target")


@pytest.fixture(scope="session")
def target_bin(build_dir) -> Path:
    _make(build_dir)
    binary = build_dir / "remanence-target-c"
    assert binary.is_file() and os.access(binary, os.X_OK)
    return binary


@pytest.fixture(scope="session")
def dup_bin(build_dir) -> Path:
    _make(build_dir, "dup")
    binary = build_dir / "remanence-target-c-dup"
    assert binary.is_file()
    return binary


# ------------------------------------------------------------------- driving


def _env(secret_len, canary_len, **overrides) -> dict[str, str]:
    return target_env({"PATH": os.environ.get("PATH", "/usr/bin:/bin")}, secret_len, canary_len, **overrides)


def start_target(binary, argv, env) -> Target:
    return Target(binary, argv, env, TIMEOUT)


def converse(binary, scenario, secret, canary, on_checkpoint=None) -> Run:
    return drive(start_target(binary, [scenario], _env(len(secret), len(canary))), secret, canary, on_checkpoint)


def mappings(pid: int) -> list[tuple[int, int, str, str]]:
    out = []
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            parts = line.split()
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            out.append((lo, hi, parts[1], parts[5] if len(parts) > 5 else ""))
    return out


def heap_bytes(pid: int) -> bytes:
    for lo, hi, _perms, name in mappings(pid):
        if name == "[heap]":
            return read_mem(pid, lo, hi - lo)
    raise AssertionError("no [heap] mapping")


# --------------------------------------------------------------------- tests


def test_list_names_all_scenarios(target_bin):
    r = subprocess.run([str(target_bin), "--list"], capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr
    names = r.stdout.split()
    assert len(names) == len(set(names))
    assert set(SCENARIOS) <= set(names)  # all 11
    # Besides the 11, only the harness's selftest.* misbehaving scenarios.
    assert all(n.startswith("selftest.") for n in set(names) - set(SCENARIOS)), names


@pytest.mark.parametrize("argv", [["no.such"], [], ["sodium.live", "extra"]])
def test_unknown_or_missing_scenario_exits_64(target_bin, argv):
    r = subprocess.run([str(target_bin), *argv], capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 64
    name = argv[0] if argv else ""
    m = re.search(rf"unknown scenario '{re.escape(name)}'; known: (.*)", r.stderr)
    assert m, r.stderr
    listed = subprocess.run([str(target_bin), "--list"], capture_output=True, text=True).stdout
    assert m.group(1).split() == listed.split()
    assert set(SCENARIOS) <= set(listed.split())


def test_duplicate_registration_aborts_before_any_scenario(dup_bin):
    r = subprocess.run([str(dup_bin), "--list"], capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode != 0
    assert "duplicate scenario registration 'sodium.live'" in r.stderr
    assert r.stdout == ""

    # Started for real, it dies before saying anything on the channel.
    t = start_target(dup_bin, ["malloc.nowipe"], _env(32, 16))
    assert dies_before_ready(t) != 0
    assert b"duplicate scenario registration 'sodium.live'" in t.stderr


def test_make_dup_check_target_passes(build_dir):
    _make(build_dir, "dup-check")


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_full_conversation(target_bin, scenario):
    secret, canary = fresh(32), fresh(48)
    run = converse(target_bin, scenario, secret, canary)
    assert run.rc == 0, run.stderr
    assert run.lines[-1] == "done"
    assert [name for name, _ in run.checkpoints] == SCENARIOS[scenario]
    addrs = [addr for _, addr in run.checkpoints]
    for addr in addrs:
        assert ADDR_RE.fullmatch(addr), addr
    # every later checkpoint reports the same (current or former) key address
    assert len(set(addrs)) == 1, addrs
    if scenario == "sodium.mlock_denied":
        assert len(run.notes) == 1 and re.fullmatch(r"mlock=denied errno=\d+", run.notes[0])
    else:
        assert run.notes == []
    for blob in (run.stdout, run.stderr, "\n".join(run.lines).encode()):
        assert secret not in blob and canary not in blob


def test_sodium_live_key_and_canary_are_in_memory(target_bin):
    secret, canary = fresh(32), fresh(64)

    def probe(t, name, addr, probes):
        probes["key"] = read_mem(t.pid, int(addr, 16), len(secret))
        probes["heap"] = heap_bytes(t.pid)
        probes["smaps"] = smaps_entry(t.pid, int(addr, 16))

    run = converse(target_bin, "sodium.live", secret, canary, probe)
    assert run.rc == 0, run.stderr
    assert run.probes["key"] == secret
    assert canary in run.probes["heap"]  # the positive control
    assert secret not in run.probes["heap"]  # read straight into sodium_malloc memory
    flags = run.probes["smaps"]["VmFlags"].split()
    assert "dd" in flags, flags  # libsodium's MADV_DONTDUMP
    if os.geteuid() == 0 or resource.getrlimit(resource.RLIMIT_MEMLOCK)[0] > 0:
        assert "lo" in flags, flags


def test_mlock_denied_really_unlocked(target_bin):
    secret = fresh(32)

    def probe(t, name, addr, probes):
        probes["key"] = read_mem(t.pid, int(addr, 16), len(secret))
        probes["smaps"] = smaps_entry(t.pid, int(addr, 16))
        with open(f"/proc/{t.pid}/status") as f:
            probes["status"] = f.read()

    run = converse(target_bin, "sodium.mlock_denied", secret, fresh(16), probe)
    assert run.rc == 0, run.stderr
    assert run.notes == [f"mlock=denied errno={1}"]  # EPERM
    assert run.probes["key"] == secret
    assert "lo" not in run.probes["smaps"]["VmFlags"].split()
    assert run.probes["smaps"]["Locked"] == "0 kB"
    cap_eff = int(re.search(r"CapEff:\s*([0-9a-f]+)", run.probes["status"]).group(1), 16)
    cap_prm = int(re.search(r"CapPrm:\s*([0-9a-f]+)", run.probes["status"]).group(1), 16)
    CAP_IPC_LOCK = 14
    assert not cap_eff & (1 << CAP_IPC_LOCK) and not cap_prm & (1 << CAP_IPC_LOCK)


@pytest.mark.parametrize(
    "scenario, checkpoint, expect_secret",
    [
        ("malloc.nowipe", "freed", True),  # key at offset 16 survives free()
        ("malloc.memzero", "freed", False),
        ("stack.nowipe", "returned", True),  # the deep frame kept it intact
        ("stack.explicit_bzero", "returned", False),
    ],
)
def test_scenarios_leave_what_they_claim(target_bin, scenario, checkpoint, expect_secret):
    """Sanity of the scenario construction itself (the harness does the real
    judging): what is at the reported address after the wipe-or-not."""
    secret = fresh(40)

    def probe(t, name, addr, probes):
        probes[name] = read_mem(t.pid, int(addr, 16), len(secret))

    run = converse(target_bin, scenario, secret, fresh(16), probe)
    assert run.rc == 0, run.stderr
    assert run.probes["in_use"] == secret
    if expect_secret:
        assert run.probes[checkpoint] == secret
    else:
        assert run.probes[checkpoint] == bytes(len(secret))


def test_stdio_copy_has_the_stdio_buffer_copy(target_bin):
    secret = fresh(48)

    def probe(t, name, addr, probes):
        if name == "in_use":
            probes["key"] = read_mem(t.pid, int(addr, 16), len(secret))
            probes["heap"] = heap_bytes(t.pid)

    run = converse(target_bin, "stdio.copy", secret, fresh(16), probe)
    assert run.rc == 0, run.stderr
    assert run.probes["key"] == secret
    assert run.probes["heap"].count(secret) == 1  # the FILE's buffer


@pytest.mark.parametrize(
    "scenario, secret_len",
    [("stack.nowipe", 65), ("stack.explicit_bzero", 4096), ("stdio.copy", 4096)],
)
def test_secret_too_long_for_the_scenario_fails_70(target_bin, scenario, secret_len):
    line, rc = after_secret_of_length(start_target(target_bin, [scenario], _env(secret_len, 16)), secret_len)
    assert line is not None and line.startswith("error "), line
    assert rc == 70


@pytest.mark.parametrize(
    "overrides",
    [
        {"REMANENCE_SECRET_LEN": "0"},
        {"REMANENCE_SECRET_LEN": "4097"},
        {"REMANENCE_SECRET_LEN": "12x"},
        {"REMANENCE_SECRET_LEN": None},
        {"REMANENCE_CANARY_LEN": None},
        {"REMANENCE_PROTOCOL": "2"},
    ],
)
def test_bad_environment_fails_70_after_ready(target_bin, overrides):
    line, rc = after_bad_environment(start_target(target_bin, ["sodium.live"], _env(32, 16, **overrides)))
    assert line is not None and line.startswith("error "), line
    assert rc == 70


@pytest.mark.parametrize("scenario", ["sodium.live", "stdio.copy", "stack.nowipe"])
@pytest.mark.parametrize("stage", ["before_canary", "mid_canary", "mid_secret", "at_checkpoint"])
def test_eof_on_fd3_exits_75(target_bin, scenario, stage):
    secret, canary = fresh(32), fresh(16)
    t = start_target(target_bin, [scenario], _env(len(secret), len(canary)))
    rc, line = exit_after_eof(t, stage, secret, canary)
    if stage == "at_checkpoint":
        assert line is not None and line.startswith("checkpoint in_use "), line
    assert rc == 75, t.stderr


def test_reply_other_than_continue_fails_70_without_echo(target_bin):
    secret = fresh(32)
    t = start_target(target_bin, ["malloc.nowipe"], _env(len(secret), 16))
    checkpoint, line, rc = after_bogus_reply(t, secret)
    assert checkpoint.startswith("checkpoint in_use ")
    assert rc == 70
    assert line == "error expected 'continue' after checkpoint in_use"
    assert b"bogus" not in t.stderr


def test_continue_may_arrive_in_pieces(target_bin):
    """The control-line reader must cope with a line split across writes and
    still find the next checkpoint exchange intact."""
    secret = fresh(32)
    t = start_target(target_bin, ["stdio.copy"], _env(len(secret), 16))
    try:
        assert t.readline() == "ready 1"
        t.send(fresh(16))
        t.send(secret[:10])
        t.send(secret[10:])
        assert t.readline().startswith("checkpoint in_use ")
        t.send(b"cont")
        t.send(b"inue\n")
        assert t.readline().startswith("checkpoint closed ")
        t.send(b"continue\n")
        assert t.readline().startswith("checkpoint freed ")
        t.send(b"continue\n")
        assert t.readline() == "done"
        rc = t.wait()
    finally:
        t.kill()
    assert rc == 0, t.stderr
