"""What only the C target (targets/c) does, beyond the protocol rules every target follows
(test_protocol_conformance.py): where libsodium, malloc, the stack and stdio leave the key.

Everything here runs the real program as the runner builds it, driven over a socketpair passed as fd 3,
exactly as the harness drives it. No other harness code is used.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import subprocess

import pytest
from protocol_targets import PROJECT_ROOT, converse
from target_driver import fresh, read_mem, smaps_entry

pytestmark = pytest.mark.skipif(shutil.which("make") is None or shutil.which("cc") is None,
                                reason="needs make and a C compiler")


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


def test_make_dup_check_target_passes(tmp_path):
    r = subprocess.run(["make", "-C", str(PROJECT_ROOT / "targets" / "c"), f"OUT={tmp_path}", "dup-check"],
                       capture_output=True, text=True)
    assert r.returncode == 0, f"make dup-check failed:\n{r.stdout}\n{r.stderr}"


def test_sodium_live_key_and_canary_are_in_memory():
    secret, canary = fresh(32), fresh(64)

    def probe(t, name, addr, probes):
        probes["key"] = read_mem(t.pid, int(addr, 16), len(secret))
        probes["heap"] = heap_bytes(t.pid)
        probes["smaps"] = smaps_entry(t.pid, int(addr, 16))

    run = converse("c", "sodium.live", secret, canary, probe)
    assert run.rc == 0, run.stderr
    assert run.probes["key"] == secret
    assert canary in run.probes["heap"]  # the positive control
    assert secret not in run.probes["heap"]  # read straight into sodium_malloc memory
    flags = run.probes["smaps"]["VmFlags"].split()
    assert "dd" in flags, flags  # libsodium's MADV_DONTDUMP
    if os.geteuid() == 0 or resource.getrlimit(resource.RLIMIT_MEMLOCK)[0] > 0:
        assert "lo" in flags, flags


def test_mlock_denied_really_unlocked():
    secret = fresh(32)

    def probe(t, name, addr, probes):
        probes["key"] = read_mem(t.pid, int(addr, 16), len(secret))
        probes["smaps"] = smaps_entry(t.pid, int(addr, 16))
        with open(f"/proc/{t.pid}/status") as f:
            probes["status"] = f.read()

    run = converse("c", "sodium.mlock_denied", secret, fresh(16), probe)
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
def test_scenarios_leave_what_they_claim(scenario, checkpoint, expect_secret):
    """Sanity of the scenario construction itself (the harness does the real
    judging): what is at the reported address after the wipe-or-not."""
    secret = fresh(40)

    def probe(t, name, addr, probes):
        probes[name] = read_mem(t.pid, int(addr, 16), len(secret))

    run = converse("c", scenario, secret, fresh(16), probe)
    assert run.rc == 0, run.stderr
    assert run.probes["in_use"] == secret
    if expect_secret:
        assert run.probes[checkpoint] == secret
    else:
        assert run.probes[checkpoint] == bytes(len(secret))


def test_stdio_copy_has_the_stdio_buffer_copy():
    secret = fresh(48)

    def probe(t, name, addr, probes):
        if name == "in_use":
            probes["key"] = read_mem(t.pid, int(addr, 16), len(secret))
            probes["heap"] = heap_bytes(t.pid)

    run = converse("c", "stdio.copy", secret, fresh(16), probe)
    assert run.rc == 0, run.stderr
    assert run.probes["key"] == secret
    assert run.probes["heap"].count(secret) == 1  # the FILE's buffer
