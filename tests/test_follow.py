"""Whole process trees (`follow = true`, `--follow`): the secret held by a process other than the one started is
found, the hit names that process, and every process of the tree is gone at the end. Driven through the CLI
with tests/programs/tree_holder.c: a shell wrapper that does not exec, a forking server, a double-forking daemon."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from suite_run import compile_test_program, read_results
from remanence import workspace as workspace_module
from remanence.cli import main


pytestmark = pytest.mark.skipif(shutil.which("gcc") is None or shutil.which("gdb") is None,
                                reason="needs gcc (to build the test program) and gdb (gcore)")


@pytest.fixture(scope="module")
def holder(tmp_path_factory) -> Path:
    return compile_test_program("tree_holder", tmp_path_factory.mktemp("tree_holder"))


def scenario(folder: Path, name: str, argv: list[str], expect: str, follow: bool | None = None) -> Path:
    """A command scenario: the secret piped on stdin, one checkpoint once some process of the program says it
    holds the secret."""
    folder.mkdir(parents=True, exist_ok=True)
    text = (f'name = "{name}"\ntarget = "command"\nmethods = ["procmem", "gcore"]\ntimeout = 20\n'
            + ("" if follow is None else f"follow = {json.dumps(follow)}\n")
            + f'[command]\nargv = {json.dumps(argv)}\ndelivery = "stdin"\n'
            + f'[[checkpoints]]\nname = "holding"\ntrigger = {{ output = "holding" }}\nexpect = "{expect}"\n'
            + 'why = "a process of the tree holds the secret"\n')
    (folder / f"{name}.toml").write_text(text)
    return folder


def run(folder: Path, out: Path, *options: str) -> tuple[int, dict]:
    result = subprocess.run([sys.executable, "-m", "remanence", "run", "--scenarios", str(folder), *options,
                             "--out", str(out), "--format", "json", "-q"],
                            env=dict(os.environ, NO_COLOR="1"), capture_output=True, text=True, timeout=120)
    assert result.returncode in (0, 1, 3), result.stderr
    doc = read_results(out / "results.json")
    return result.returncode, doc


def said(doc: dict, role: str) -> int:
    """The pid a process of tree_holder announced ("<role> <pid>") in the program's output."""
    return int(re.search(rf"^{role} (\d+)$", doc["runs"][0]["target_output"], re.M)[1])


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] not in ("Z", "X")
    except OSError:
        return False


def running_copies(binary: Path) -> list[int]:
    """Processes (not zombies) still running `binary`, whatever they renamed themselves to."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.readlink(entry / "exe") == str(binary) and alive(int(entry.name)):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_a_shell_wrapper_hides_its_child_unless_the_tree_is_followed(tmp_path, holder):
    folder = scenario(tmp_path / "scenarios", "wrapper", ["/bin/sh", "-c", f"{holder}; true"], "absent")

    code, doc = run(folder, tmp_path / "alone")
    child = said(doc, "holder")
    assert code == 3
    for v in doc["verdicts"]:        # the shell alone shows nothing, and that proves nothing
        assert v["outcome"] == "INCONCLUSIVE" and not v["hits"], v["reason"]
        assert f"not snapshotted: pid {child} ({holder})" in v["reason"]
        assert "processes" not in v

    code, doc = run(folder, tmp_path / "followed", "--follow")
    child = said(doc, "holder")
    assert code == 1
    for v in doc["verdicts"]:
        assert v["outcome"] == "FAIL", v["reason"]
        assert v["hits"] and {(h["pid"], h["command"]) for h in v["hits"]} == {(child, str(holder))}
        assert f"pid {child} ({holder}): expected absent" in v["reason"]
        shell = v["processes"][0]
        assert shell["command"].endswith(f" -c {holder}; true") and shell["hits"] == 0
        assert [p["pid"] for p in v["processes"]][1:] == [child] and all(p["canary_seen"] for p in v["processes"])
    assert running_copies(holder) == []


def test_a_forking_server_hit_names_the_worker_that_holds_the_key(tmp_path, holder):
    folder = scenario(tmp_path / "scenarios", "server", [str(holder), "--server"], "present", follow=True)
    code, doc = run(folder, tmp_path / "out")
    assert code == 0, [v["reason"] for v in doc["verdicts"]]
    parent, worker1, worker2 = (said(doc, role) for role in ("parent", "worker1", "worker2"))
    assert doc["runs"][0]["pid"] == parent
    for v in doc["verdicts"]:
        assert v["outcome"] == "PASS" and v["canary_seen"]
        assert {(h["pid"], h["command"]) for h in v["hits"]} == {(worker2, "tree_holder: worker 2")}
        assert {(p["pid"], p["command"], p["hits"] > 0) for p in v["processes"]} == {
            (parent, f"{holder} --server", False), (worker1, "tree_holder: worker 1", False),
            (worker2, "tree_holder: worker 2", True)}
        assert f"pid {worker2} (tree_holder: worker 2): found as expected" in v["reason"]
    assert running_copies(holder) == []


@pytest.mark.parametrize("cgroup", [True, False], ids=["cgroup", "proc-only"])
def test_a_double_forking_daemon_is_snapshotted_and_killed(tmp_path, holder, monkeypatch, cgroup):
    folder = scenario(tmp_path / "scenarios", "daemon", [str(holder), "--daemon"], "absent", follow=True)
    if cgroup:
        code, doc = run(folder, tmp_path / "out")
    else:   # a machine without a writable cgroup2: found through /proc, as an orphan we reaped as subreaper
        monkeypatch.setattr(workspace_module.Workspace, "run_cgroup", lambda self, folder: None)
        code = main(["run", "--scenarios", str(folder), "--out", str(tmp_path / "out"), "--format", "json", "-q"])
        doc = read_results(tmp_path / "out" / "results.json")
    daemon = said(doc, "daemon")
    assert code == 1
    for v in doc["verdicts"]:
        assert v["outcome"] == "FAIL", v["reason"]
        assert {h["pid"] for h in v["hits"]} == {daemon}, (v["processes"], v["hits"], doc["runs"][0]["target_output"])
        assert [p["pid"] for p in v["processes"]] == [said(doc, "parent"), daemon]
    assert any("outside its process group (daemons) were still running at the end of the run: killed" in n
               for n in doc["runs"][0]["notes"])
    assert not alive(daemon) and running_copies(holder) == []


def test_a_process_whose_snapshot_lacks_the_canary_keeps_absent_inconclusive(tmp_path):
    """`env -i` starts a child without the environment that carries the canary: nothing proves its snapshot could
    have shown the secret, so the probe's absent cannot pass, and the reason names that process."""
    out = tmp_path / "out"
    # "done" only once the child is sleep: before its exec it is a copy of sh, or env, and holds the canary
    code = main(["probe", "--stdin", "--follow", "--at", "output=done", "--out", str(out), "--format", "json", "-q",
                 "--", "/bin/sh", "-c", "env -i /bin/sleep 600 & until [ \"$(cat /proc/$!/comm)\" = sleep ]; do :; done; "
                 "cat >/dev/null; echo done; wait"])
    doc = read_results(out / "results.json")
    assert "follow = true" in (out / "probe.sh.toml").read_text().splitlines()
    assert code == 3
    for v in doc["verdicts"]:
        sleeper = next(p for p in v["processes"] if p["command"] == "/bin/sleep 600")
        assert v["outcome"] == "INCONCLUSIVE" and not v["hits"] and not v["canary_seen"]
        assert not sleeper["canary_seen"] and v["processes"][0]["canary_seen"]
        assert v["reason"] == (f"pid {sleeper['pid']} (/bin/sleep 600): not found, but the canary was not seen either: "
                               "this snapshot could not show ordinary memory")


def test_a_follow_that_is_not_a_boolean_is_one_line_naming_the_file_and_key(tmp_path, holder):
    folder = scenario(tmp_path / "scenarios", "wrapper", [str(holder)], "absent")
    path = folder / "wrapper.toml"
    path.write_text('follow = "yes"\n' + path.read_text())
    result = subprocess.run([sys.executable, "-m", "remanence", "run", "--scenarios", str(folder), "--out",
                             str(tmp_path / "out")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.endswith(f"{path}: follow: expected bool, got str 'yes'")
