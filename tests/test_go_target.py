"""What only the Go target (targets/go) does, beyond the protocol rules every target follows
(test_protocol_conformance.py): runtime/secret's erasure (stack, heap, registers, stack growth), memguard's
locked buffers and its core-limit change.

Everything here runs the real program as the runner builds it (GOEXPERIMENT=runtimesecret CGO_ENABLED=0
go build -trimpath), driven over a socketpair passed as fd 3, exactly as the harness drives it. No other
harness code is used.
"""

from __future__ import annotations

import os
import resource

import pytest
from protocol_targets import converse
from target_driver import fresh, read_mem, readable_memory_contains, smaps_entry


def core_limit(pid: int) -> tuple[str, str]:
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max core file size"):
                soft, hard = line.split()[4:6]
                return soft, hard
    raise AssertionError("no core limit line")


@pytest.mark.parametrize(
    "scenario, before, after, expect_secret_after",
    [
        ("secret.return", "inside", "after", False),   # Do erased f's stack
        ("secret.none", "inside", "after", True),      # the stale key stays
        ("secret.panic", "inside", "after", False),
        ("secret.panic_nodo", "inside", "after", True),
        ("secret.keepalive", "inside", "after", False),
        ("secret.keepalive_nodo", "inside", "after", True),
        ("secret.goexit", "inside", "after", False),   # goexit0 cleared the whole stack
        ("secret.heap", "before_gc", "after_gc", False),  # zeroed when freed
        ("secret.heap_nodo", "before_gc", "after_gc", True),
        ("secret.panic_value", "recovered", "dropped", False),
        ("secret.escape", "after", "dropped", False),
        ("secret.global", "inside", "after", True),
        ("memguard.string_copy", "in_use", "destroyed", True),
    ],
)
def test_what_is_left_at_the_reported_address(scenario, before, after, expect_secret_after):
    """Sanity of the scenario construction itself (the harness does the real
    judging): what is at the reported address before and after."""
    secret = fresh(32)

    def probe(t, name, addr, probes):
        if addr != "-":
            probes[name] = read_mem(t.pid, int(addr, 16), len(secret))

    run = converse("go", scenario, secret, fresh(16), probe)
    assert run.rc == 0, run.stderr
    if scenario != "memguard.string_copy":
        assert run.probes[before] == secret
    if expect_secret_after:
        assert run.probes[after] == secret
    else:
        assert run.probes[after] == bytes(len(secret))


@pytest.mark.parametrize("scenario, old_clear", [("secret.stack_growth", True), ("secret.stack_growth_nodo", False)])
def test_stack_growth_moves_the_key(scenario, old_clear):
    secret = fresh(32)

    def probe(t, name, addr, probes):
        probes[name] = addr
        probes[name + "@inside"] = read_mem(t.pid, int(probes["inside"], 16), len(secret))
        probes[name + "@self"] = read_mem(t.pid, int(addr, 16), len(secret))

    run = converse("go", scenario, secret, fresh(16), probe)
    assert run.rc == 0, run.stderr
    p = run.probes
    assert p["grown"] != p["inside"] and p["after"] == p["inside"]
    assert p["inside@self"] == secret
    assert p["grown@self"] == secret                   # the key moved to the new stack
    assert (p["grown@inside"] == bytes(32)) == old_clear  # the old stack: cleared by the copy only in Do
    if old_clear:
        assert p["after@self"] == bytes(32)


@pytest.mark.parametrize("scenario", ["secret.registers", "secret.registers_nodo"])
def test_registers_scenarios_leave_no_memory_copy(scenario):
    """At `after` the key (and each 16-byte half) is nowhere in memory: in the _nodo twin only the
    registers keep it, which is what the harness's gcore verdicts then show."""
    secret = fresh(32)

    def probe(t, name, addr, probes):
        probes[name] = [readable_memory_contains(t.pid, part) for part in (secret, secret[:16], secret[16:])]

    run = converse("go", scenario, secret, fresh(16), probe)
    assert run.rc == 0, run.stderr
    assert run.probes["inside"][0]  # positive control
    assert run.probes["after"] == [[], [], []]


def test_memguard_buffer_is_locked_and_dontdump():
    secret = fresh(32)

    def probe(t, name, addr, probes):
        probes["key"] = read_mem(t.pid, int(addr, 16), len(secret))
        probes["smaps"] = smaps_entry(t.pid, int(addr, 16))
        probes["core"] = core_limit(t.pid)

    run = converse("go", "memguard.locked_live", secret, fresh(16), probe)
    assert run.rc == 0, run.stderr
    assert run.probes["key"] == secret
    flags = run.probes["smaps"]["VmFlags"].split()
    assert "dd" in flags, flags  # memcall.Lock: MADV_DONTDUMP
    if os.geteuid() == 0:
        assert "lo" in flags, flags
    # memguard's package init sets RLIMIT_CORE to 0/0.
    assert run.probes["core"] == ("0", "0")


def _limit_text(v: int) -> str:
    return "unlimited" if v == resource.RLIM_INFINITY else str(v)


@pytest.mark.parametrize("scenario", ["secret.return", "secret.registers_nodo", "memguard.locked_live", "memguard.purge"])
def test_core_limit_kept_except_for_memguard_scenarios(scenario):
    """memguard's package init sets RLIMIT_CORE to 0/0 in every process of the
    binary; the keepcore package neutralises that (seccomp) for scenarios
    that are not about memguard, so a kernel core can still be raised."""
    inherited = tuple(_limit_text(v) for v in resource.getrlimit(resource.RLIMIT_CORE))

    def probe(t, name, addr, probes):
        if "core" not in probes:
            probes["core"] = core_limit(t.pid)
            if not scenario.startswith("memguard.") and resource.getrlimit(resource.RLIMIT_CORE)[1] != 0:
                # What a kernel-core snapshot does: raise the soft limit of the running target.
                hard = resource.prlimit(t.pid, resource.RLIMIT_CORE)[1]
                resource.prlimit(t.pid, resource.RLIMIT_CORE, (hard, hard))
                probes["raised"] = core_limit(t.pid)

    run = converse("go", scenario, fresh(32), fresh(16), probe)
    assert run.rc == 0, run.stderr
    assert b"could not keep the core dump limit" not in run.stderr
    if scenario.startswith("memguard."):
        assert run.probes["core"] == ("0", "0")
    else:
        assert run.probes["core"] == inherited
        if "raised" in run.probes:
            assert run.probes["raised"] == (inherited[1], inherited[1])
