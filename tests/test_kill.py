"""A killed harness (what a CI cancel does: SIGKILL, no chance to clean up) leaves nothing behind: no target,
no gdb, no daemon a target started, no work folder or snapshot holding the secret; and a target that dies
mid-checkpoint costs only its own run."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from remanence import workspace as workspace_module
from remanence.process import stat_fields
from suite_run import require

# Killed harnesses, their leftovers looked for machine-wide (processes by name, cgroups): under xdist
# (--dist loadgroup) these run one after another on one worker, never beside each other.
pytestmark = pytest.mark.xdist_group("kills")

CHECKPOINT_S = 10


def scenario_file(folder: Path, name: str, checkpoints: list[str], methods: list[str], entry: str | None = None,
                  kernel_core_last: bool = False, target: str = "c") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    text = f'name = "{name}"\ntarget = "{target}"\nmethods = {json.dumps(methods)}\ntimeout = {CHECKPOINT_S}\n'
    if entry:
        text += f'entry = "{entry}"\n'
    text += "[secret]\nform = \"binary\"\nlength = 32\n"
    for checkpoint in checkpoints:
        text += f'[[checkpoints]]\nname = "{checkpoint}"\nexpect = "observe"\nwhy = "a kill test"\n'
    (folder / f"{name}.toml").write_text(text)


def descendants(pid: int) -> set[int]:
    """Every process below `pid` now (children of every thread, recursively)."""
    found, queue = set(), [pid]
    while queue:
        parent = queue.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = (task / "children").read_text().split()
            except OSError:
                continue
            for child in map(int, children):
                if child not in found:
                    found.add(child)
                    queue.append(child)
    return found


def alive(pid: int) -> bool:
    """Running or stopped; a zombie holds no memory (and init reaps it on a machine with a real init)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def harness_cgroups(pid: int) -> list[Path]:
    roots = [r for r in workspace_module.CGROUP2_ROOTS if (r / "cgroup.procs").exists()]
    return [g for r in roots[:1] for g in r.glob(f"{workspace_module.PREFIX}{pid}-*")]


def start_harness(args: list[str], tmp: Path) -> subprocess.Popen:
    env = dict(os.environ, TMPDIR=str(tmp), NO_COLOR="1", PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "remanence", *args], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def kill_after_lines(proc: subprocess.Popen, lines: int, extra_s: float) -> tuple[set[int], list[str]]:
    """Let the harness print `lines` progress lines, wait `extra_s` more, note its process tree, SIGKILL it."""
    seen = []
    while len(seen) < lines:
        line = proc.stderr.readline()
        if not line:
            break
        seen.append(line.strip())
    time.sleep(extra_s)
    tree = descendants(proc.pid)
    proc.kill()
    proc.wait()
    proc.stderr.close()
    return tree, seen


def wait_until_clean(tree: set[int], tmp: Path, harness_pid: int, timeout: float = 10.0) -> tuple[list, list, list]:
    deadline = time.monotonic() + timeout
    while True:
        survivors = sorted(p for p in tree if alive(p))
        files = sorted(os.path.join(top, name) for top, dirs, names in os.walk(tmp) for name in dirs + names)
        groups = harness_cgroups(harness_pid)
        if not (survivors or files or groups) or time.monotonic() > deadline:
            return survivors, files, groups
        time.sleep(0.05)


def assert_nothing_left(tree: set[int], tmp: Path, harness_pid: int, moment: str) -> None:
    survivors, files, groups = wait_until_clean(tree, tmp, harness_pid)
    described = {p: Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ")[:80] for p in survivors
                 if Path(f"/proc/{p}/cmdline").exists()}
    assert not survivors, f"killed {moment}: processes of the run still alive: {described}"
    assert not files, f"killed {moment}: files of the run left: {files}"
    assert not groups, f"killed {moment}: cgroups left: {groups}"


def assert_next_start_finds_nothing(tmp: Path, harness_pid: int, monkeypatch) -> None:
    """Nothing of this harness's (tests on other xdist workers kill harnesses of their own)."""
    monkeypatch.setattr("tempfile.tempdir", str(tmp))
    ours = f"/{workspace_module.PREFIX}{harness_pid}-"
    assert [p for p in workspace_module.remove_stale() if str(tmp) in p or ours in p] == []


KILL_MOMENTS = [(0, 0.0), (0, 0.3), (1, 0.0), (1, 0.05), (2, 0.0), (2, 0.1), (3, 0.0), (3, 0.15), (4, 0.0), (5, 0.0)]


def kill_at_moments(folder: Path, out: Path, tmp_path: Path, methods: str, monkeypatch) -> list[str]:
    moments = []
    for number, (lines, extra) in enumerate(KILL_MOMENTS):
        tmp = tmp_path / f"tmp{number}"
        tmp.mkdir()
        # One run at a time: the moments are counted in progress lines, which parallel runs would interleave.
        proc = start_harness(["run", "--scenarios", str(folder), "--method", methods, "--out", str(out / str(number)),
                              "--format", "json", "-j", "1"], tmp)
        tree, seen = kill_after_lines(proc, lines, extra)
        moment = f"after {seen[-1] if seen else 'start-up'!r} + {extra} s"
        moments.append(moment)
        assert_nothing_left(tree, tmp, proc.pid, moment)
        assert not (out / str(number) / "snapshots").exists()
        assert_next_start_finds_nothing(tmp, proc.pid, monkeypatch)
    return moments


def test_killing_a_c_run_at_ten_moments_leaves_nothing(tmp_path, monkeypatch):
    require("c", "procmem", "gcore", "gcore-all", "kernel-core")
    folder = tmp_path / "scenarios"
    scenario_file(folder, "kill.daemon", ["in_use"], ["procmem", "gcore", "gcore-all", "kernel-core"],
                  entry="selftest.daemon")
    scenario_file(folder, "kill.nowipe", ["in_use", "freed"], ["procmem", "gcore", "gcore-all", "kernel-core"],
                  entry="malloc.nowipe")
    moments = kill_at_moments(folder, tmp_path / "out", tmp_path, "procmem,gcore,gcore-all,kernel-core", monkeypatch)
    assert len(set(moments)) == len(KILL_MOMENTS), moments
    print(moments)


def test_killing_a_go_run_at_ten_moments_leaves_nothing(tmp_path, monkeypatch):
    require("go", "procmem", "gcore")
    folder = tmp_path / "scenarios"
    scenario_file(folder, "kill.go.heap", ["before_gc", "after_gc"], ["procmem", "gcore"], target="go",
                  entry="secret.heap")
    kill_at_moments(folder, tmp_path / "out", tmp_path, "procmem,gcore", monkeypatch)


KILLED_AS_ITS_WORK_FOLDER_APPEARS = """
import os, signal, pathlib
from remanence import workspace
make_folder = pathlib.Path.mkdir
def mkdir_then_die(path, *args, **kwargs):
    make_folder(path, *args, **kwargs)
    if path.name.startswith(workspace.PREFIX) and path.parent == pathlib.Path(os.environ["TMPDIR"]):
        os.kill(os.getpid(), signal.SIGKILL)
pathlib.Path.mkdir = mkdir_then_die
workspace.Workspace()
"""


def test_a_harness_killed_the_moment_its_work_folder_exists_leaves_no_folder(tmp_path):
    """The narrowest window of a kill: the folder made, nothing else done yet."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", KILLED_AS_ITS_WORK_FOLDER_APPEARS], env=dict(os.environ, TMPDIR=str(tmp)),
                            stderr=subprocess.PIPE, text=True)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == -9, stderr
    _, files, groups = wait_until_clean(set(), tmp, proc.pid)
    assert (files, groups) == ([], [])


def test_a_daemon_started_by_the_target_is_killed_and_reaped_at_the_end_of_its_run(tmp_path):
    require("c", "procmem")
    folder = tmp_path / "scenarios"
    scenario_file(folder, "daemon", ["in_use"], ["procmem"], entry="selftest.daemon")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proc = subprocess.run([sys.executable, "-m", "remanence", "run", "--scenarios", str(folder), "--out",
                           str(tmp_path / "out"), "--format", "json", "-q"], env=dict(os.environ, TMPDIR=str(tmp)),
                          capture_output=True, text=True, timeout=120)
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    [run] = doc["runs"]
    assert any("outside its process group (daemons)" in note and note.startswith("1 ") for note in run["notes"]), run["notes"]
    [verdict] = doc["verdicts"]
    assert verdict["outcome"] == "PASS" and proc.returncode == 0, (verdict["reason"], proc.stderr[-500:])
    assert list(tmp.iterdir()) == []
    # The daemon kept a copy of the key: had it survived, a process holding the secret would still be running.
    leftovers = [p for p in Path("/proc").glob("[0-9]*") if alive(int(p.name))
                 and b"selftest.daemon" in (p / "cmdline").read_bytes()]
    assert leftovers == []


def test_a_target_that_dies_mid_checkpoint_costs_only_its_run(tmp_path):
    require("c", "procmem", "gcore", "gcore-all")
    folder = tmp_path / "scenarios"
    scenario_file(folder, "dies", ["in_use", "after"], ["procmem", "gcore", "gcore-all"], entry="selftest.die_in_checkpoint")
    scenario_file(folder, "later", ["in_use", "freed"], ["procmem"], entry="malloc.nowipe")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "remanence", "run", "--scenarios", str(folder), "--out", str(out),
                           "--format", "json,junit,sarif"], capture_output=True, text=True, timeout=120)
    assert "Traceback" not in proc.stderr
    assert proc.returncode == 3, proc.stderr[-2000:]
    doc = json.loads((out / "results.json").read_text())
    dies = [v for v in doc["verdicts"] if v["scenario"] == "dies"]
    after = [v for v in dies if v["checkpoint"] == "after"]
    assert after and all(v["outcome"] == "ERROR" and "killed by SIGSEGV" in v["reason"] for v in after), after
    assert any(v["outcome"] == "ERROR" for v in dies if v["checkpoint"] == "in_use") or \
        all(v["outcome"] == "PASS" for v in dies if v["checkpoint"] == "in_use")
    [run] = [r for r in doc["runs"] if r["scenario"] == "dies"]
    assert "SIGSEGV" in (run["exit"] or "")
    later = [v for v in doc["verdicts"] if v["scenario"] == "later"]
    assert len(later) == 2 and all(v["outcome"] == "PASS" for v in later), later
    assert (out / "junit.xml").exists() and (out / "results.sarif").exists()


def test_a_work_folder_s_owner_counts_as_gone_once_it_has_begun_to_exit(tmp_path, monkeypatch):
    """An owner's locks go as it exits, before it is a zombie (seen: a SIGKILLed harness still 'R' with PF_EXITING
    set while another took its swap lock); its area is abandoned from then on. That moment cannot be held still,
    so the live owner's real stat line is read with the flag added."""
    owner = subprocess.Popen(["sleep", "60"])
    try:
        real = stat_fields(f"/proc/{owner.pid}/stat")
        swap_file = tmp_path / f"{workspace_module.PREFIX}{owner.pid}-{real[19]}-0badcafe" / "remanence.swap"
        assert not workspace_module.abandoned(swap_file)
        exiting = real[:6] + [str(int(real[6]) | 0x4)] + real[7:]
        monkeypatch.setattr(workspace_module, "stat_fields", lambda path: exiting)
        assert workspace_module.abandoned(swap_file)
    finally:
        owner.kill()
        owner.wait()
