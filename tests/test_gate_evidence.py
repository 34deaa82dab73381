"""Green only with evidence: SKIP and ERROR never exit 0 unless skips are allowed, SARIF says so, bad names and
missing programs are usage errors, reports are complete files with the right mode, Ctrl-C at start-up is one line."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from remanence.cli import main
from remanence.config import Config
from remanence.document import Document
from remanence.entry import interrupts_deferred
from remanence.gate import apply_gate
from remanence.paths import OutsideError, inside
from remanence.process import die_with_parent
from remanence.report import write_atomically
from remanence.targets import PROJECT_ROOT
from suite_run import require

REMANENCE = Path(sys.executable).parent / "remanence"


def one_line(err: str) -> str:
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err.strip()


# --- SKIP is missing evidence ------------------------------------------------------------------------------------

@pytest.fixture
def no_gdb(tmp_path, monkeypatch):
    """The issue's case: gdb missing from PATH, so every gcore snapshot is a SKIP."""
    require("c")
    bin_dir = tmp_path / "bin-without-gdb"
    bin_dir.mkdir()
    for folder in os.environ["PATH"].split(os.pathsep):
        for tool in Path(folder).glob("*") if Path(folder).is_dir() else ():
            if not tool.name.startswith("gdb") and not (bin_dir / tool.name).exists():
                (bin_dir / tool.name).symlink_to(tool)
    monkeypatch.setenv("PATH", str(bin_dir))


def gcore_only_run(capsys, out: Path, *options: str) -> tuple[int, dict, dict]:
    capsys.readouterr()
    code = main(["run", "malloc.nowipe", "--method", "gcore,gcore-all", "--out", str(out), "--format", "json,sarif",
                 "-q", *options])
    capsys.readouterr()
    return code, json.loads((out / "results.json").read_text()), json.loads((out / "results.sarif").read_text())


def test_a_skip_only_run_fails_and_its_sarif_says_the_execution_was_not_successful(no_gdb, tmp_path, capsys):
    code, doc, sarif = gcore_only_run(capsys, tmp_path / "out")
    assert {v["outcome"] for v in doc["verdicts"]} == {"SKIP"}
    assert code == 3 and doc["exit_code"] == 3 and doc["gate"]["new_failures"] == len(doc["verdicts"])
    invocation = sarif["runs"][0]["invocations"][0]
    assert invocation["executionSuccessful"] is False and sarif["runs"][0]["results"] == []
    notes = invocation["toolExecutionNotifications"]
    assert len(notes) == 4   # 2 checkpoints x 2 methods
    assert {n["level"] for n in notes} == {"error"}
    assert all("malloc.nowipe at checkpoint" in n["message"]["text"] and "gdb not found on PATH" in n["message"]["text"]
               for n in notes)
    assert (tmp_path / "out" / "results.json").stat().st_mode & 0o777 == 0o644


def test_skips_pass_only_when_the_user_allows_them(no_gdb, tmp_path, capsys):
    code, doc, sarif = gcore_only_run(capsys, tmp_path / "flag", "--allow-skip", "--show-secrets")
    invocation = sarif["runs"][0]["invocations"][0]
    assert (code, doc["gate"]["allow_skip"], invocation["executionSuccessful"]) == (0, True, True)
    assert {n["level"] for n in invocation["toolExecutionNotifications"]} == {"warning"}
    for report in ("results.json", "results.sarif"):   # --show-secrets: reports may hold the secret
        assert (tmp_path / "flag" / report).stat().st_mode & 0o777 == 0o600

    config = tmp_path / "remanence.toml"
    config.write_text("[run]\nallow_skip = true\n")
    code, doc, _ = gcore_only_run(capsys, tmp_path / "config", "--config", str(config))
    assert code == 0 and doc["gate"]["allow_skip"] is True


def verdict(outcome: str) -> dict:
    return {"scenario": "s", "repetition": 1, "checkpoint": "c", "method": "gcore", "expect": "absent",
            "outcome": outcome, "reason": "r", "hits": [], "fingerprints": ["0123456789abcdef"]}


def document(*outcomes: str) -> dict:
    return {"schema": "remanence-results", "schema_version": 1, "interrupted": False,
            "verdicts": [verdict(o) for o in outcomes]}


@pytest.mark.parametrize("before, now, state, code", [
    ("SKIP", "SKIP", "baseline", 0),          # could not be checked then either: not new
    ("INCONCLUSIVE", "SKIP", "baseline", 0),
    ("SKIP", "ERROR", "baseline", 0),
    ("PASS", "SKIP", "new", 3),               # evidence lost since the baseline
    ("SKIP", "FAIL", "new", 1),
])
def test_the_baseline_covers_a_skip_like_an_inconclusive(before, now, state, code):
    doc = apply_gate(document(now), Document.from_json(document(before), "baseline"), Config())
    assert (doc["verdicts"][0]["gate"]["state"], doc["exit_code"]) == (state, code)


def test_a_malformed_baseline_is_one_line_before_anything_runs(tmp_path, capsys):
    baseline = tmp_path / "baseline.json"
    baseline.write_text(json.dumps({**document("FAIL"), "verdicts": [1]}))
    capsys.readouterr()
    assert main(["run", "malloc.nowipe", "--baseline", str(baseline), "--out", str(tmp_path / "out")]) == 2
    assert one_line(capsys.readouterr().err) == f"remanence: baseline {baseline}: verdicts[0]: expected an object, got int"
    assert not (tmp_path / "out").exists()


# --- programs, names and paths -------------------------------------------------------------------------------------

def test_probing_a_program_that_does_not_exist_is_a_usage_error(tmp_path, capsys):
    capsys.readouterr()
    assert main(["probe", "--out", str(tmp_path / "out"), "--", "./does-not-exist"]) == 2
    assert "'./does-not-exist' is not an executable file" in one_line(capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


def test_a_command_scenario_whose_program_is_missing_is_a_usage_error(tmp_path, capsys):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "mine.toml").write_text(
        'name = "mine"\ntarget = "command"\n[command]\nargv = ["no-such-program-here"]\n'
        '[[checkpoints]]\nname = "later"\ntrigger = { idle = 1 }\nexpect = "absent"\nwhy = "wiped"\n')
    capsys.readouterr()
    assert main(["run", "--scenarios", str(tmp_path / "s"), "--out", str(tmp_path / "out")]) == 2
    err = one_line(capsys.readouterr().err)
    assert "mine.toml: command.argv: 'no-such-program-here' not found on PATH" in err


@pytest.mark.parametrize("name", ["../escape", "/tmp/x", "a/b", "..", ".", "a\0b", "x y"])
def test_names_that_would_be_paths_are_refused(tmp_path, capsys, name):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "bad.toml").write_text(
        (PROJECT_ROOT / "scenarios" / "c" / "malloc.nowipe.toml").read_text()
        .replace('name = "malloc.nowipe"', f"name = {json.dumps(name)}"))
    capsys.readouterr()
    assert main(["run", "--scenarios", str(tmp_path / "s"), "--keep-snapshots", "--out", str(tmp_path / "out")]) == 2
    assert "bad.toml: name: " in one_line(capsys.readouterr().err)

    assert main(["probe", "--name", name, "--out", str(tmp_path / "out"), "--", "true"]) == 2
    assert "probe --name" in one_line(capsys.readouterr().err)
    assert not (tmp_path / "out").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_inside_refuses_paths_out_of_the_folder(tmp_path):
    (tmp_path / "out").mkdir()
    assert inside(tmp_path / "out", "a/results.json") == (tmp_path / "out" / "a" / "results.json").resolve()
    (tmp_path / "out" / "link").symlink_to(tmp_path)
    for path in ("../x", "/etc/passwd", "link/x", ".", "a/../.."):
        with pytest.raises(OutsideError, match="refusing to write outside"):
            inside(tmp_path / "out", path)


# --- reports: complete files, right mode, interrupts deferred ---------------------------------------------------------

def test_an_interrupted_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "results.json"
    target.write_text("old")

    def interrupted(*args):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(os, "replace", interrupted)         # Ctrl-C just before the rename
        write_atomically(target, "new", 0o644)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["results.json"]
    write_atomically(target, "secret-holding", 0o600)
    assert target.read_text() == "secret-holding" and target.stat().st_mode & 0o777 == 0o600


def test_interrupts_wait_until_the_reports_are_written():
    with interrupts_deferred() as received:
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)                         # a signal handler runs between bytecodes: it had its chance
    assert received == [signal.SIGINT, signal.SIGTERM]
    with pytest.raises(KeyboardInterrupt):      # afterwards Ctrl-C interrupts again
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)


def handles_sigterm(pid: int) -> bool:
    """Has the process installed its own SIGTERM handler (the entry point's first instruction)?"""
    caught = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("SigCgt:"))
    return bool(int(caught.split()[1], 16) & (1 << (signal.SIGTERM - 1)))


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.1, 0.2])
def test_ctrl_c_during_start_up_is_one_line_and_exit_130(tmp_path, delay):
    """From the entry point's first instruction on (before that the interpreter itself is starting: ~50 ms in which
    no Python code of ours can run), Ctrl-C while the CLI is imported and the command starts is one line, exit 130."""
    process = subprocess.Popen([str(REMANENCE), "run", "malloc.nowipe", "--method", "procmem", "--out",
                                str(tmp_path / "out"), "-q"], cwd=tmp_path, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, preexec_fn=die_with_parent)
    deadline = time.monotonic() + 10
    while not handles_sigterm(process.pid) and time.monotonic() < deadline:
        time.sleep(0.002)
    time.sleep(delay)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "remanence: interrupted", err
