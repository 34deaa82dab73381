"""End to end on real parts: the C target with real libsodium, real /proc/PID/mem, real gdb gcore."""
from __future__ import annotations

import base64
import contextlib
import io
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import remanence.runner
from remanence.cli import main
from remanence.process import TargetProcess
from remanence.scenario import load_scenarios
from remanence.snapshot import method_unavailable
from remanence.snapshot import CAP_SYS_RESOURCE, has_capability
from remanence.targets import PROJECT_ROOT, TargetUnavailable, build_target
from suite_run import read_results

pytestmark = pytest.mark.e2e
SCENARIOS = PROJECT_ROOT / "scenarios"


@pytest.fixture(scope="session", autouse=True)
def c_target():
    try:
        return build_target("c")
    except TargetUnavailable as e:
        pytest.skip(f"C target unavailable here: {e}")


@pytest.fixture(scope="session", autouse=True)
def gdb_present():
    if reason := method_unavailable("gcore"):
        pytest.skip(f"gcore unavailable here: {reason}")


class Capture:
    """Records every secret the runner makes, so tests can prove none of them leaks into our own output."""

    def __init__(self, monkeypatch):
        self.values: list[bytes] = []
        original = remanence.runner.make_secret

        def recording(spec):
            secret = original(spec)
            self.values.append(secret.value)
            return secret
        monkeypatch.setattr(remanence.runner, "make_secret", recording)

    def assert_absent_from(self, text: bytes, where: str) -> None:
        for value in self.values:
            for form in (value, value.hex().encode(), value.hex().upper().encode(), base64.b64encode(value)):
                assert form not in text, f"a secret leaked into {where}"


def run_cli(args: list[str], out: Path, capsys) -> tuple[int, dict | None, str]:
    code = main(["run", "--out", str(out), *args])
    captured = capsys.readouterr()
    path = out / "results.json"
    return code, read_results(path) if path.exists() else None, captured.out + captured.err


def verdicts_of(doc: dict, scenario: str, checkpoint: str | None = None, method: str | None = None) -> list[dict]:
    return [v for v in doc["verdicts"] if v["scenario"] == scenario
            and (checkpoint is None or v["checkpoint"] == checkpoint) and (method is None or v["method"] == method)]


# The tests of the suite's one run: under xdist (--dist loadgroup) one worker takes them all and runs it once.
on_the_suite = pytest.mark.xdist_group("e2e_c_suite")


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    """The whole built-in suite, once: (exit code, results.json, console text, captured secrets, temp dir)."""
    monkeypatch = pytest.MonkeyPatch()
    tmp = tmp_path_factory.mktemp("suite")
    scratch = tmp / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    capture = Capture(monkeypatch)
    out = tmp / "out"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["run", "--scenarios", str(SCENARIOS / "c"), "--out", str(out)])
    monkeypatch.undo()
    doc = read_results(out / "results.json")
    return code, doc, stdout.getvalue() + stderr.getvalue(), capture, scratch, out


@on_the_suite
def test_suite_passes_and_is_schema_valid(suite):
    code, doc, console, *_ = suite
    failing = [(v["scenario"], v["checkpoint"], v["method"], v["outcome"], v["reason"]) for v in doc["verdicts"]
               if v["outcome"] != "PASS"]
    assert failing == []
    assert code == 0 and doc["exit_code"] == 0
    scenarios = {v["scenario"] for v in doc["verdicts"]}
    assert scenarios == {s.name for s in load_scenarios(SCENARIOS / "c")}
    assert "sodium.live" in console and "PASS" in console


@on_the_suite
def test_every_snapshot_saw_the_canary(suite):
    _, doc, *_ = suite
    # A crash verdict judges how the target died, not a snapshot.
    assert all(v["canary_seen"] for v in doc["verdicts"] if v["subject"] != "crash")


@on_the_suite
def test_known_leaks_are_found_where_they_should_be(suite):
    _, doc, *_ = suite
    for method in ("procmem", "gcore", "gcore-all"):
        [freed] = verdicts_of(doc, "malloc.nowipe", "freed", method)
        heap_hits = [h for h in freed["hits"] if h["region"]["kind"] == "heap"]
        assert heap_hits and heap_hits[0]["full"], f"{method}: no full copy in the heap after free"
        assert heap_hits[0]["address"] == freed["intended_address"]
        [stale] = verdicts_of(doc, "stack.nowipe", "returned", method)
        assert any(h["region"]["kind"] == "stack" for h in stale["hits"])
    [in_use] = verdicts_of(doc, "stdio.copy", "in_use", "procmem")
    assert {h["in_intended_region"] for h in in_use["hits"]} == {True, False}
    assert any(h["region"]["kind"] == "heap" and not h["in_intended_region"] and not h["guarded"] for h in in_use["hits"])
    assert all(h["guarded"] == h["in_intended_region"] for h in in_use["hits"])


@on_the_suite
def test_kernel_cores_and_exit_stops(suite):
    _, doc, *_ = suite
    [core] = verdicts_of(doc, "malloc.nowipe", "freed", "kernel-core")
    assert core["outcome"] == "PASS" and any(h["region"]["kind"] == "heap" and h["full"] for h in core["hits"])
    assert any(r["kind"] == "registers" and r["register_set"] == "NT_X86_XSTATE" for r in core["snapshot"]["regions"])
    [guarded] = verdicts_of(doc, "sodium.live", "in_use", "kernel-core")
    assert guarded["hits"] == [] and "MADV_DONTDUMP" in guarded["reason"]
    [at_exit] = verdicts_of(doc, "sodium.freed", "exit", "exit")
    assert at_exit["outcome"] == "PASS" and at_exit["canary_seen"] is True
    assert [r["exit"] for r in doc["runs"] if r["scenario"] == "malloc.nowipe"] == ["killed by SIGABRT (core dumped)"]
    assert [r["exit"] for r in doc["runs"] if r["scenario"] == "sodium.freed"] == ["exit status 0"]


def test_no_kernel_core_is_a_finding(tmp_path, capsys):
    folder = tmp_path / "s"
    folder.mkdir()
    (folder / "nocore.toml").write_text("""
name = "selftest.nocore"
target = "c"
methods = ["procmem", "kernel-core"]

[[checkpoints]]
name = "in_use"
expect = "present"
why = "planted"

[checkpoints.per_method.kernel-core]
expect = "absent"
why = "the target set its hard core limit to 0, as memguard does"
""")
    code, doc, _ = run_cli(["--scenarios", str(folder)], tmp_path / "out", capsys)
    [core] = verdicts_of(doc, "selftest.nocore", "in_use", "kernel-core")
    if has_capability(CAP_SYS_RESOURCE):  # CAP_SYS_RESOURCE: the harness can raise the limit, so a core appears
        assert core["outcome"] == "FAIL" and code == 1
    else:
        assert (code, core["outcome"]) == (0, "PASS")
        assert core["reason"].startswith("no core produced: the program set its own core limit to 0")
        assert core["snapshot"]["not_produced"].startswith("no core produced")


@on_the_suite
def test_guarded_page_is_attributed_and_dont_dump_is_explained(suite):
    _, doc, *_ = suite
    [live] = verdicts_of(doc, "sodium.live", "in_use", "procmem")
    [hit] = [h for h in live["hits"] if h["in_intended_region"]]
    assert hit["region"]["locked"] is True and hit["region"]["dont_dump"] is True
    assert hit["region"]["perms"].startswith("rw") and hit["guarded"] is True
    [core] = verdicts_of(doc, "sodium.live", "in_use", "gcore")
    assert core["hits"] == [] and "MADV_DONTDUMP" in core["reason"]
    excluded = [g for g in core["snapshot"]["gaps"] if g["kind"] == "excluded"]
    assert any(int(g["start"], 16) <= int(core["intended_address"], 16) < int(g["start"], 16) + g["size"] for g in excluded)
    [denied] = verdicts_of(doc, "sodium.mlock_denied", "in_use", "procmem")
    assert [h["region"]["locked"] for h in denied["hits"] if h["in_intended_region"]] == [False]
    assert any(n.startswith("mlock=denied") for r in doc["runs"] if r["scenario"] == "sodium.mlock_denied" for n in r["notes"])


@on_the_suite
def test_no_secret_leaks_through_the_harness(suite):
    _, doc, console, capture, scratch, out = suite
    assert len(capture.values) == sum(s.repeat for s in load_scenarios(SCENARIOS / "c"))   # one secret a run
    capture.assert_absent_from((out / "results.json").read_bytes(), "results.json")
    capture.assert_absent_from(console.encode(), "the console")
    assert list(scratch.iterdir()) == [], "snapshot folders were left behind"
    assert not (out / "snapshots").exists()
    for run in doc["runs"]:
        assert len(run["secret"]["sha256_prefix"]) == 12


def test_a_wrong_expectation_fails_the_run(tmp_path, capsys):
    text = (SCENARIOS / "c" / "malloc.nowipe.toml").read_text()
    wrong = text.replace('name = "freed"\nexpect = "present"\nwhere = "heap"', 'name = "freed"\nexpect = "absent"')
    assert wrong != text
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "wrong.toml").write_text(wrong)
    code, doc, _ = run_cli(["--scenarios", str(tmp_path / "s"), "--method", "procmem"], tmp_path / "out", capsys)
    assert code == 1 and doc["exit_code"] == 1
    [freed] = verdicts_of(doc, "malloc.nowipe", "freed", "procmem")
    assert freed["outcome"] == "FAIL" and "expected absent, found" in freed["reason"]


def test_keep_snapshots_are_private(tmp_path, capsys):
    code, doc, _ = run_cli(["--method", "procmem,gcore", "--keep-snapshots", "sodium.live"], tmp_path, capsys)
    assert code == 0
    kept = [Path(v["snapshot"]["kept_path"]) for v in doc["verdicts"]]
    assert len(kept) == 2
    for path in kept:
        assert path.is_file() and path.stat().st_mode & 0o777 == 0o600
        assert path.parent.stat().st_mode & 0o777 == 0o700


def selftest_scenario(folder: Path, entry: str, checkpoints=("in_use",), timeout: float = 5) -> None:
    folder.mkdir(exist_ok=True)
    body = "".join(f'\n[[checkpoints]]\nname = "{c}"\nexpect = "present"\nwhy = "planted"\n' for c in checkpoints)
    (folder / f"{entry}.toml").write_text(
        f'name = "{entry}"\ntarget = "c"\nmethods = ["procmem"]\ntimeout = {timeout}\n{body}')


def alive(pid: int) -> bool:
    """Running or stopped; a zombie waiting for init to reap it counts as dead."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def test_hung_target_is_killed_with_its_process_group(tmp_path, capsys):
    selftest_scenario(tmp_path / "s", "selftest.fork_hang", timeout=2)
    started = time.monotonic()
    code, doc, _ = run_cli(["--scenarios", str(tmp_path / "s")], tmp_path / "out", capsys)
    assert time.monotonic() - started < 30
    assert code == 3
    [run] = doc["runs"]
    assert "timed out after 2 s" in run["error"] and run["exit"] == "killed by SIGKILL"
    child = int(next(n for n in run["notes"] if n.startswith("child="))[6:])
    deadline = time.monotonic() + 5
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(child), "the target's child outlived the run"
    assert [v["outcome"] for v in doc["verdicts"]] == ["ERROR"]


MISBEHAVING = {
    "selftest.crash": (("in_use", "after"), "killed by SIGSEGV"),
    "selftest.surprise": (("in_use",), "target reached checkpoint 'surprise'"),
    "selftest.fail": (("in_use",), "target reported: deliberate failure"),
}


@pytest.fixture(scope="module")
def misbehaving_run(tmp_path_factory) -> tuple[int, dict]:
    """(exit code, results.json) of one procmem run of every misbehaving target above, then sodium.live."""
    tmp = tmp_path_factory.mktemp("misbehaving")
    for entry, (checkpoints, _) in MISBEHAVING.items():
        selftest_scenario(tmp / "s", entry, checkpoints)
    (tmp / "s" / "next.toml").write_text((SCENARIOS / "c" / "sodium.live.toml").read_text())
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        code = main(["run", "--scenarios", str(tmp / "s"), "--method", "procmem", "--out", str(tmp / "out")])
    return code, read_results(tmp / "out" / "results.json")


@pytest.mark.xdist_group("e2e_c_misbehaving")
@pytest.mark.parametrize("entry", MISBEHAVING)
def test_misbehaving_targets_give_errors_and_the_run_goes_on(misbehaving_run, entry):
    code, doc = misbehaving_run
    words = MISBEHAVING[entry][1]
    assert code == 3
    errors = [v for v in verdicts_of(doc, entry) if v["outcome"] == "ERROR"]
    assert errors and all(words in v["reason"] for v in errors)
    assert [v["outcome"] for v in verdicts_of(doc, "sodium.live")] == ["PASS"]


def test_unknown_entry_is_a_scenario_error(tmp_path, capsys):
    selftest_scenario(tmp_path / "s", "nosuch.scenario")
    code = main(["run", "--scenarios", str(tmp_path / "s"), "--out", str(tmp_path / "out")])
    assert code == 2
    assert "nosuch.scenario.toml: entry: 'nosuch.scenario' is not registered in the c target" in capsys.readouterr().err


def test_interrupted_run_still_writes_results_and_kills_the_target(tmp_path):
    selftest_scenario(tmp_path / "s", "selftest.fork_hang", timeout=120)
    (tmp_path / "s" / "first.toml").write_text((SCENARIOS / "c" / "malloc.nowipe.toml").read_text())
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "remanence", "run", "--scenarios", str(tmp_path / "s"), "--out", str(out),
                             "--method", "procmem"], cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    seen = []
    for line in proc.stdout:  # wait until the hanging target has started
        seen.append(line)
        if b"selftest.fork_hang#1: starting" in line:
            break
    else:
        raise AssertionError(b"".join(seen).decode(errors="replace"))
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 130
    doc = read_results(out / "results.json")
    assert doc["interrupted"] is True
    assert [v["outcome"] for v in verdicts_of(doc, "malloc.nowipe")] == ["PASS", "PASS"]
    [hang] = [r for r in doc["runs"] if r["scenario"] == "selftest.fork_hang"]
    assert hang["exit"] == "killed by SIGKILL"
    assert [v["outcome"] for v in verdicts_of(doc, "selftest.fork_hang")] == ["ERROR"]



def test_the_secret_travels_only_over_the_control_socket(tmp_path, c_target):
    secret, canary = b"S" * 8 + bytes(range(24)), bytes(range(100, 132))
    with TargetProcess(c_target.argv("sodium.live"), len(secret), len(canary), tmp_path / "log", tmp_path) as target:
        target.expect_ready(10)
        target.send_secrets(canary, secret)
        event = target.next_event(10)
        assert (event.kind, event.text) == ("checkpoint", "in_use")
        environ = Path(f"/proc/{target.pid}/environ").read_bytes()
        cmdline = Path(f"/proc/{target.pid}/cmdline").read_bytes()
        target.resume()
        assert target.next_event(10).kind == "done"
        target.wait_exit(10)
    assert cmdline == c_target.command[0].encode() + b"\0sodium.live\0"
    assert sorted(environ.split(b"\0")[:-1]) == [b"LC_ALL=C", b"PATH=/usr/local/bin:/usr/bin:/bin", b"REMANENCE_CANARY_LEN=32",
                                                 b"REMANENCE_PROTOCOL=1", b"REMANENCE_SECRET_LEN=32"]
    assert os.WIFEXITED(target.status) and os.WEXITSTATUS(target.status) == 0
