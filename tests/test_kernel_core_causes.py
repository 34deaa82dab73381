"""kernel-core tells causes apart: no core because the program forbade it (a finding), because the kernel could not
write it (BLOCKED: INCONCLUSIVE, never PASS), or for a cause not established (UNKNOWN: INCONCLUSIVE too).
Real processes, real kernel cores, a real read-only bind mount."""
from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from suite_run import compile_test_program
from remanence.cli import main
from remanence.model import NoImageCause
from remanence.process import die_with_parent
from remanence.snapshot import CAP_SYS_RESOURCE, has_capability
from remanence.snapshot.kernelcore import kernel_core_unavailable, take_kernel_core

NOBODY = 65534
PYTHON = "/usr/bin/python3"            # readable by nobody, unlike the venv's

pytestmark = [
    pytest.mark.skipif(kernel_core_unavailable() is not None, reason=f"kernel cores: {kernel_core_unavailable()}"),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (bind mounts, targets running as nobody)"),
    pytest.mark.skipif(has_capability(CAP_SYS_RESOURCE), reason="with CAP_SYS_RESOURCE the harness overrides the "
                                                                "target's core limits"),
]


@contextlib.contextmanager
def read_only(folder: Path):
    """`folder` as a read-only bind mount of itself (root ignores permission bits, not a read-only mount)."""
    subprocess.run(["mount", "--bind", str(folder), str(folder)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(folder)], check=True)
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


@pytest.fixture
def public_dir():
    """A folder uid 65534 can reach (pytest's tmp folders are 0700 root)."""
    folder = Path(tempfile.mkdtemp(prefix="remanence-kc-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder)


# --- end to end: a program holding the secret, run from a read-only folder -----------------------------------

@pytest.fixture(scope="module")
def askpass(tmp_path_factory) -> Path:
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc")
    return compile_test_program("askpass", tmp_path_factory.mktemp("askpass"))


SCENARIO = """
name = "{name}"
target = "command"
methods = ["procmem", "kernel-core"]

[command]
argv = ["./askpass", {flags}]
cwd = "work"
delivery = "stdin"

[[checkpoints]]
name = "after"
trigger = {{ output = "{trigger}" }}
expect = "absent"
why = "the test's expectation; the program either keeps or wipes it"
"""


def run_suite(tmp_path: Path, label: str) -> tuple[int, dict[str, dict]]:
    out = tmp_path / f"out-{label}"
    code = main(["run", "--scenarios", str(tmp_path / "suite"), "--out", str(out), "--format", "json", "-q",
                 "--timeout", "20"])
    doc = json.loads((out / "results.json").read_text())
    return code, {v["scenario"]: v for v in doc["verdicts"] if v["method"] == "kernel-core"} | {
        v["scenario"] + "/procmem": v for v in doc["verdicts"] if v["method"] == "procmem"}


def test_a_read_only_working_folder_is_never_a_pass(tmp_path, askpass):
    suite, work = tmp_path / "suite", tmp_path / "suite" / "work"
    work.mkdir(parents=True)
    shutil.copy(askpass, work / "askpass")
    (suite / "keeps.toml").write_text(SCENARIO.format(name="t.keeps", flags='"--no-wipe"', trigger="kept"))
    (suite / "wipes.toml").write_text(SCENARIO.format(name="t.wipes", flags='"--hold-ms", "100"', trigger="wiped"))

    code, writable = run_suite(tmp_path, "writable")
    assert writable["t.keeps"]["outcome"] == "FAIL", writable["t.keeps"]["reason"]
    assert writable["t.wipes"]["outcome"] == "PASS", writable["t.wipes"]["reason"]
    assert code == 1
    assert sorted(p.name for p in work.iterdir()) == ["askpass"]      # the cores were moved out and deleted

    with read_only(work):
        code, blocked = run_suite(tmp_path, "read-only")
    for name in ("t.keeps", "t.wipes"):
        verdict = blocked[name]
        assert verdict["outcome"] == "INCONCLUSIVE", verdict["reason"]
        assert f"{work} is on a read-only mount" in verdict["reason"]
        assert "the environment stopped it" in verdict["reason"]
    assert blocked["t.keeps/procmem"]["outcome"] == "FAIL"         # the program did keep it: procmem says so
    assert blocked["t.wipes/procmem"]["outcome"] == "PASS"
    assert sorted(p.name for p in work.iterdir()) == ["askpass"]


# --- each cause, for real -----------------------------------------------------------------------------------

# The target: sets its own limits (RLIMIT_CORE soft:hard, RLIMIT_FSIZE) and dumpability as told, says ready, waits.
TARGET = """
import ctypes, resource, sys, time
core, fsize, dumpable = sys.argv[1:4]
if core != "-":
    resource.setrlimit(resource.RLIMIT_CORE, tuple(int(x) for x in core.split(":")))
if fsize != "-":
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(fsize), int(fsize)))
if dumpable == "0" and ctypes.CDLL(None).prctl(4, 0, 0, 0, 0) != 0:    # PR_SET_DUMPABLE
    sys.exit(9)
print("ready", flush=True)
time.sleep(60)
"""
INF = str(resource.RLIM_INFINITY)


def start_target(cwd: Path, core="-", fsize="-", dumpable="1", as_nobody=False) -> subprocess.Popen:
    ids = {"user": NOBODY, "group": NOBODY, "extra_groups": []} if as_nobody else {}
    proc = subprocess.Popen([PYTHON, "-c", TARGET, core, fsize, dumpable], cwd=cwd, stdout=subprocess.PIPE,
                            preexec_fn=die_with_parent, **ids)
    assert proc.stdout.readline() == b"ready\n"
    return proc


def waiter(proc: subprocess.Popen):
    def wait_for_exit(timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while True:
            pid, status = os.waitpid(proc.pid, os.WNOHANG)
            if pid:
                proc.returncode = status       # reaped here: Popen must not wait for it again
                return status
            if time.monotonic() > deadline:
                raise TimeoutError(f"{proc.pid} still running")
            time.sleep(0.01)
    return wait_for_exit


def abort(proc: subprocess.Popen, private: Path):
    try:
        return take_kernel_core(proc.pid, private, waiter(proc), timeout=30)
    finally:
        if proc.returncode is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()


CASES = {
    # name: (target settings, the target runs as nobody, cwd writable by it, cause, words the reason must hold)
    "hard-limit-0": (dict(core="0:0"), False, True, NoImageCause.POLICY,
                     ["the program set its own core limit to 0, and it could not be raised"]),
    "not-dumpable": (dict(core=f"{INF}:{INF}", dumpable="0"), True, True, NoImageCause.POLICY,
                     ["(process not dumpable)"]),
    "root-not-dumpable": (dict(dumpable="0"), False, True, NoImageCause.UNKNOWN,
                          ["no cause was established", "dumpable: not observable", "checked:", "writable mount"]),
    "core-limit-below-a-page": (dict(core="0:100"), False, True, NoImageCause.BLOCKED,
                                ["RLIMIT_CORE soft limit of 100 bytes is below one page"]),
    "core-limit-cuts-it": (dict(core="0:16384"), False, True, NoImageCause.BLOCKED,
                           ["the core was cut short at 16384 of", "RLIMIT_CORE soft limit of 16384 bytes"]),
    "file-size-limit": (dict(fsize="16384"), False, True, NoImageCause.BLOCKED,
                        ["the core was cut short at 16384 of", "RLIMIT_FSIZE of 16384 bytes"]),
    "folder-not-writable": (dict(core=f"{INF}:{INF}"), True, False, NoImageCause.BLOCKED,
                            ["is not writable by the target (fsuid 65534"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_why_no_core(case, tmp_path, public_dir):
    settings, as_nobody, writable, cause, words = CASES[case]
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    if as_nobody and writable:
        os.chown(public_dir, NOBODY, NOBODY)
    snap = abort(start_target(public_dir, as_nobody=as_nobody, **settings), private)
    assert snap.not_produced_cause == cause, snap.not_produced
    assert snap.not_produced.startswith("no core produced: ")
    for word in words:
        assert word in snap.not_produced
    assert list(private.iterdir()) == [] and list(public_dir.iterdir()) == []      # nothing of the core is left


def test_a_read_only_folder_is_blocked_and_a_writable_one_gives_a_core(tmp_path, public_dir):
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    snap = abort(start_target(public_dir), private)
    assert snap.not_produced is None and snap.regions and snap.path.parent == private
    assert list(public_dir.iterdir()) == []        # moved out of the target's folder
    snap.path.unlink()
    with read_only(public_dir):
        snap = abort(start_target(public_dir), private)
    assert snap.not_produced_cause == NoImageCause.BLOCKED
    assert f"the kernel could not write the core: {public_dir} is on a read-only mount" in snap.not_produced
    assert list(private.iterdir()) == []
