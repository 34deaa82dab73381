"""The Go target (targets/go) against the protocol in targets/PROTOCOL.md.

Everything here runs the real program: it is built with the harness's build
command (GOEXPERIMENT=runtimesecret CGO_ENABLED=0 go build -trimpath) into a
temporary directory and driven over a socketpair passed as fd 3, exactly as
the harness will drive it. No harness code is used.
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
                           dies_before_ready, drive, exit_after_eof, fresh, read_mem, readable_memory_contains,
                           scenario_file_names, smaps_entry, target_env)

ROOT = Path(__file__).resolve().parents[1]
GO_DIR = ROOT / "targets" / "go"
SCENARIO_DIR = ROOT / "scenarios" / "go"
MIN_GO = (1, 26)

# scenario -> checkpoint names, in order (the scenario files rely on these)
SCENARIOS = {
    "secret.none": ["inside", "after"],
    "secret.return": ["inside", "after"],
    "secret.panic": ["inside", "after"],
    "secret.panic_nodo": ["inside", "after"],
    "secret.panic_value": ["inside", "recovered", "dropped"],
    "secret.panic_value_nodo": ["inside", "recovered", "dropped"],
    "secret.goexit": ["inside", "in_defer", "after"],
    "secret.goexit_nodo": ["inside", "in_defer", "after"],
    "secret.heap": ["before_gc", "after_gc"],
    "secret.heap_nodo": ["before_gc", "after_gc"],
    "secret.map": ["inside", "before_gc", "after_gc"],
    "secret.map_nodo": ["inside", "before_gc", "after_gc"],
    "secret.keepalive": ["inside", "after", "after_gc"],
    "secret.keepalive_nodo": ["inside", "after", "after_gc"],
    "secret.escape": ["inside", "after", "dropped"],
    "secret.global": ["inside", "after"],
    "secret.goroutine": ["inside", "after", "exited"],
    "secret.stack_growth": ["inside", "grown", "after"],
    "secret.stack_growth_nodo": ["inside", "grown", "after"],
    "secret.registers": ["inside", "after"],
    "secret.registers_nodo": ["inside", "after"],
    "secret.signal": ["inside", "after", "after_gc"],
    "secret.signal_nodo": ["inside", "after", "after_gc"],
    "memguard.locked_live": ["in_use"],
    "memguard.destroyed": ["in_use", "destroyed"],
    "memguard.enclave": ["loaded", "sealed"],
    "memguard.enclave_open": ["open", "destroyed"],
    "memguard.string_copy": ["in_use", "destroyed"],
    "memguard.purge": ["in_use", "purged"],
    "memguard.safe_exit": ["in_use"],
    "memguard.interrupt": ["in_use"],
    "memguard.with_secret_do": ["loaded", "sealed", "inside", "after"],
}

# Scenarios that end the process themselves after `done`, and their status.
EXIT_STATUS = {"memguard.safe_exit": 0, "memguard.interrupt": 1}

# Checkpoints reported without an address (`-`).
NO_ADDRESS = {("secret.map", "before_gc"), ("secret.map", "after_gc"),
              ("secret.map_nodo", "before_gc"), ("secret.map_nodo", "after_gc"),
              ("memguard.with_secret_do", "sealed")}

# Notes each scenario sends (regular expressions over the whole note body).
NOTES = {
    "secret.panic_value": [r"gc_cycles=\d+"],
    "secret.panic_value_nodo": [r"gc_cycles=\d+"],
    "secret.goexit": [r"secret_enabled_in_outer_defer=true"],
    "secret.goexit_nodo": [r"secret_enabled_in_outer_defer=false"],
    "secret.heap": [r"gc_cycles=\d+"],
    "secret.heap_nodo": [r"gc_cycles=\d+"],
    "secret.map": [r"gc_cycles=\d+"],
    "secret.map_nodo": [r"gc_cycles=\d+"],
    "secret.keepalive": [r"gc_cycles=\d+"],
    "secret.keepalive_nodo": [r"gc_cycles=\d+"],
    "secret.escape": [r"gc_cycles=\d+"],
    "secret.goroutine": [r"do_panicked=false goroutine_in_secret_mode=false"],
    "secret.stack_growth": [r"stack_moved=true old_stack_clear_at_grown=true"],
    "secret.stack_growth_nodo": [r"stack_moved=true old_stack_clear_at_grown=false"],
    "secret.registers": [r"register_sets=general\+sse\S*"],
    "secret.registers_nodo": [r"register_sets=general\+sse\S*"],
    "secret.signal": [r"register_sets=general\+sse\S*"],
    "secret.signal_nodo": [r"register_sets=general\+sse\S*"],
}

TIMEOUT = 30.0
ADDR_RE = re.compile(r"0x[0-9a-f]+")


# --------------------------------------------------------------------- build


def _go() -> str | None:
    return os.environ.get("REMANENCE_GO") or shutil.which("go")


def _go_problem() -> str | None:
    go = _go()
    if go is None:
        return "go not found on PATH (Go >= 1.26 is needed for runtime/secret)"
    probe = subprocess.run([go, "env", "GOVERSION", "GOOS", "GOARCH"], capture_output=True, text=True)
    fields = probe.stdout.split()
    if probe.returncode != 0 or len(fields) != 3:
        return f"{go} env failed: {probe.stderr.strip()[-300:]}"
    m = re.match(r"go(\d+)\.(\d+)", fields[0])
    if not m or (int(m[1]), int(m[2])) < MIN_GO:
        return f"{fields[0]} is older than go1.26, the first with runtime/secret"
    if f"{fields[1]}/{fields[2]}" not in ("linux/amd64", "linux/arm64"):
        return f"runtime/secret only erases on linux/amd64 and linux/arm64, not {fields[1]}/{fields[2]}"
    return None


pytestmark = pytest.mark.skipif(_go_problem() is not None, reason=_go_problem() or "")


def _build(out: Path, *tags: str) -> Path:
    cmd = [_go(), "build", "-trimpath"]
    if tags:
        cmd += ["-tags", ",".join(tags)]
    cmd += ["-o", str(out), "."]
    env = dict(os.environ, GOEXPERIMENT="runtimesecret", CGO_ENABLED="0")
    r = subprocess.run(cmd, cwd=GO_DIR, capture_output=True, text=True, env=env)
    assert r.returncode == 0, f"go build failed:\n{r.stdout}\n{r.stderr}"
    assert out.is_file() and os.access(out, os.X_OK)
    return out


@pytest.fixture(scope="session")
def build_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("go-target")


@pytest.fixture(scope="session")
def target_bin(build_dir) -> Path:
    return _build(build_dir / "remanence-target-go")


@pytest.fixture(scope="session")
def dup_bin(build_dir) -> Path:
    return _build(build_dir / "remanence-target-go-dup", "remanence_duplicate_for_test")


# ------------------------------------------------------------------- driving


def _env(secret_len, canary_len, **overrides) -> dict[str, str]:
    # What the harness gives a Go target: a fixed, minimal environment.
    base = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LC_ALL": "C", "GOTRACEBACK": "crash"}
    return target_env(base, secret_len, canary_len, **overrides)


def start_target(binary, argv, env) -> Target:
    return Target(binary, argv, env, TIMEOUT)


def converse(binary, scenario, secret, canary, on_checkpoint=None) -> Run:
    return drive(start_target(binary, [scenario], _env(len(secret), len(canary))), secret, canary, on_checkpoint)


def core_limit(pid: int) -> tuple[str, str]:
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max core file size"):
                soft, hard = line.split()[4:6]
                return soft, hard
    raise AssertionError("no core limit line")


# --------------------------------------------------------------------- tests


def test_list_names_all_scenarios(target_bin):
    r = subprocess.run([str(target_bin), "--list"], capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr
    names = r.stdout.split()
    assert names == sorted(SCENARIOS)
    assert r.stdout.endswith("\n")


def test_every_scenario_has_a_scenario_file():
    assert scenario_file_names(SCENARIO_DIR, "go") == set(SCENARIOS)


@pytest.mark.parametrize("argv", [["no.such"], [], ["secret.return", "extra"]])
def test_unknown_or_missing_scenario_exits_64(target_bin, argv):
    r = subprocess.run([str(target_bin), *argv], capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 64
    name = argv[0] if argv else ""
    m = re.search(rf"unknown scenario '{re.escape(name)}'; known: (.*)", r.stderr)
    assert m, r.stderr
    assert m.group(1).split() == sorted(SCENARIOS)
    assert r.stdout == ""


def test_duplicate_registration_aborts_before_any_scenario(dup_bin):
    r = subprocess.run([str(dup_bin), "--list"], capture_output=True, text=True, timeout=TIMEOUT,
                       env=_env(32, 16))
    assert r.returncode != 0
    assert "duplicate scenario registration 'secret.return'" in r.stderr
    assert r.stdout == ""

    # Started for real, it dies before saying anything on the channel.
    t = start_target(dup_bin, ["secret.heap"], _env(32, 16))
    assert dies_before_ready(t) != 0
    assert b"duplicate scenario registration 'secret.return'" in t.stderr


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_full_conversation(target_bin, scenario):
    secret, canary = fresh(32), fresh(48)
    run = converse(target_bin, scenario, secret, canary)
    assert run.rc == EXIT_STATUS.get(scenario, 0), run.stderr
    assert run.lines[-1] == "done"
    assert [name for name, _ in run.checkpoints] == SCENARIOS[scenario]
    for name, addr in run.checkpoints:
        if (scenario, name) in NO_ADDRESS:
            assert addr == "-"
        else:
            assert ADDR_RE.fullmatch(addr), (name, addr)
    assert len(run.notes) == len(NOTES.get(scenario, [])), run.notes
    for pattern, body in zip(NOTES.get(scenario, []), run.notes):
        assert re.fullmatch(pattern, body), (pattern, body)
    for blob in (run.stdout, run.stderr, "\n".join(run.lines).encode()):
        assert secret not in blob and canary not in blob
        assert secret.hex().encode() not in blob


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
def test_what_is_left_at_the_reported_address(target_bin, scenario, before, after, expect_secret_after):
    """Sanity of the scenario construction itself (the harness does the real
    judging): what is at the reported address before and after."""
    secret = fresh(32)

    def probe(t, name, addr, probes):
        if addr != "-":
            probes[name] = read_mem(t.pid, int(addr, 16), len(secret))

    run = converse(target_bin, scenario, secret, fresh(16), probe)
    assert run.rc == 0, run.stderr
    if scenario != "memguard.string_copy":
        assert run.probes[before] == secret
    if expect_secret_after:
        assert run.probes[after] == secret
    else:
        assert run.probes[after] == bytes(len(secret))


@pytest.mark.parametrize("scenario, old_clear", [("secret.stack_growth", True), ("secret.stack_growth_nodo", False)])
def test_stack_growth_moves_the_key(target_bin, scenario, old_clear):
    secret = fresh(32)

    def probe(t, name, addr, probes):
        probes[name] = addr
        probes[name + "@inside"] = read_mem(t.pid, int(probes["inside"], 16), len(secret))
        probes[name + "@self"] = read_mem(t.pid, int(addr, 16), len(secret))

    run = converse(target_bin, scenario, secret, fresh(16), probe)
    assert run.rc == 0, run.stderr
    p = run.probes
    assert p["grown"] != p["inside"] and p["after"] == p["inside"]
    assert p["inside@self"] == secret
    assert p["grown@self"] == secret                   # the key moved to the new stack
    assert (p["grown@inside"] == bytes(32)) == old_clear  # the old stack: cleared by the copy only in Do
    if old_clear:
        assert p["after@self"] == bytes(32)


@pytest.mark.parametrize("scenario", ["secret.registers", "secret.registers_nodo"])
def test_registers_scenarios_leave_no_memory_copy(target_bin, scenario):
    """At `after` the key (and each 16-byte half) is nowhere in memory: in the _nodo twin only the
    registers keep it, which is what the harness's gcore verdicts then show."""
    secret = fresh(32)

    def probe(t, name, addr, probes):
        probes[name] = [readable_memory_contains(t.pid, part) for part in (secret, secret[:16], secret[16:])]

    run = converse(target_bin, scenario, secret, fresh(16), probe)
    assert run.rc == 0, run.stderr
    assert run.probes["inside"][0]  # positive control
    assert run.probes["after"] == [[], [], []]


def test_memguard_buffer_is_locked_and_dontdump(target_bin):
    secret = fresh(32)

    def probe(t, name, addr, probes):
        probes["key"] = read_mem(t.pid, int(addr, 16), len(secret))
        probes["smaps"] = smaps_entry(t.pid, int(addr, 16))
        probes["core"] = core_limit(t.pid)

    run = converse(target_bin, "memguard.locked_live", secret, fresh(16), probe)
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
def test_core_limit_kept_except_for_memguard_scenarios(target_bin, scenario):
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

    run = converse(target_bin, scenario, fresh(32), fresh(16), probe)
    assert run.rc == 0, run.stderr
    assert b"could not keep the core dump limit" not in run.stderr
    if scenario.startswith("memguard."):
        assert run.probes["core"] == ("0", "0")
    else:
        assert run.probes["core"] == inherited
        if "raised" in run.probes:
            assert run.probes["raised"] == (inherited[1], inherited[1])


@pytest.mark.parametrize(
    "scenario, secret_len",
    [("secret.map", 129), ("secret.map_nodo", 4096), ("secret.registers", 15), ("secret.registers_nodo", 8),
     ("secret.signal", 1)],
)
def test_secret_outside_the_scenario_limits_fails_70(target_bin, scenario, secret_len):
    line, rc = after_secret_of_length(start_target(target_bin, [scenario], _env(secret_len, 16)), secret_len)
    assert line is not None and line.startswith("error "), line
    assert rc == 70


@pytest.mark.parametrize("secret_len", [1, 4096])
@pytest.mark.parametrize("scenario", ["secret.return", "secret.heap", "secret.stack_growth", "memguard.destroyed"])
def test_extreme_secret_lengths(target_bin, scenario, secret_len):
    run = converse(target_bin, scenario, fresh(secret_len), fresh(16))
    assert run.rc == 0, run.stderr
    assert [name for name, _ in run.checkpoints] == SCENARIOS[scenario]


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
def test_bad_environment_fails_70_after_ready(target_bin, overrides):
    line, rc = after_bad_environment(start_target(target_bin, ["secret.return"], _env(32, 16, **overrides)))
    assert line is not None and line.startswith("error "), line
    assert rc == 70


@pytest.mark.parametrize("scenario", ["secret.return", "secret.goroutine", "memguard.locked_live"])
@pytest.mark.parametrize("stage", ["before_canary", "mid_canary", "mid_secret", "at_checkpoint"])
def test_eof_on_fd3_exits_75(target_bin, scenario, stage):
    secret, canary = fresh(32), fresh(16)
    t = start_target(target_bin, [scenario], _env(len(secret), len(canary)))
    rc, line = exit_after_eof(t, stage, secret, canary)
    if stage == "at_checkpoint":
        assert line is not None and line.startswith("checkpoint "), line
    assert rc == 75, t.stderr


def test_missing_fd3_exits_75(target_bin):
    r = subprocess.run([str(target_bin), "secret.return"], capture_output=True, timeout=TIMEOUT,
                       env=_env(32, 16), close_fds=True)
    assert r.returncode == 75


def test_reply_other_than_continue_fails_70_without_echo(target_bin):
    secret = fresh(32)
    t = start_target(target_bin, ["secret.none"], _env(len(secret), 16))
    checkpoint, line, rc = after_bogus_reply(t, secret)
    assert checkpoint.startswith("checkpoint inside ")
    assert rc == 70
    assert line == "error expected 'continue' after checkpoint inside"
    assert b"bogus" not in t.stderr


def test_continue_may_arrive_in_pieces(target_bin):
    """The control-line reader must cope with a line split across writes and
    with the secret split across writes."""
    secret = fresh(32)
    t = start_target(target_bin, ["secret.none"], _env(len(secret), 16))
    try:
        assert t.readline() == "ready 1"
        t.send(fresh(16))
        t.send(secret[:10])
        t.send(secret[10:])
        assert t.readline().startswith("checkpoint inside ")
        t.send(b"cont")
        t.send(b"inue\n")
        assert t.readline().startswith("checkpoint after ")
        t.send(b"continue\n")
        assert t.readline() == "done"
        rc = t.wait()
    finally:
        t.kill()
    assert rc == 0, t.stderr
