"""The pytest plugin (harness/pytest_plugin.py): scenario files collected and run as pytest items, in a
pytest subprocess (pytester), on real targets. Every run's secrets are recorded by a conftest in the
subprocess so the tests can prove none of them reaches pytest's output."""
pytest_plugins = ["pytester"]

import base64
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from remanence.targets import PROJECT_ROOT
from suite_run import read_results, require

pytestmark = pytest.mark.e2e
SCENARIOS = PROJECT_ROOT / "scenarios" / "c"
# pytester points HOME at its temp dir: keep the real target cache so the C target is not rebuilt per test.
REAL_CACHE = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
HEX64 = re.compile(r"[0-9a-fA-F]{64}")
HEXDUMP = re.compile(r"(\*\*|[0-9a-f]{2})( (\*\*|[0-9a-f]{2})){7}")

# Loaded by the pytest subprocess (and each xdist worker): records every secret the runner makes, and can
# pretend a method is unavailable here, so the SKIP path is exercised on any machine.
CONFTEST = '''
import os
import remanence.plan
import remanence.runner

_make_secret = remanence.runner.make_secret


def _recording(spec):
    secret = _make_secret(spec)
    with open(os.environ["REMANENCE_TEST_SECRETS"], "a") as f:
        f.write(secret.value.hex() + "\\n")
    return secret


remanence.runner.make_secret = _recording
_unavailable = remanence.plan.method_unavailable
_pretend = os.environ.get("REMANENCE_TEST_UNAVAILABLE", "").split(",")
remanence.plan.method_unavailable = lambda m: "pretended unavailable by the test" if m in _pretend else _unavailable(m)
'''

WRONG_ORIGINAL = 'name = "freed"\nexpect = "present"\nwhere = "heap"'
WRONG_REPLACED = 'name = "freed"\nexpect = "absent"'
FOUR_METHODS = 'methods = ["procmem", "gcore", "gcore-all", "kernel-core"]'


def without_swap(scenario: str) -> str:
    """A scenario file without the swap method and its expectations: these tests count the items of four methods."""
    scenario = scenario.replace(', "swap"]', "]")
    return re.sub(r"\[checkpoints\.per_method\.swap\]\n(?:\w[^\n]*\n)*\n?", "", scenario)

IDS = [
    "scenarios/c/malloc.nowipe.toml::in_use[procmem]",
    "scenarios/c/malloc.nowipe.toml::in_use[gcore]",
    "scenarios/c/malloc.nowipe.toml::freed[procmem]",
    "scenarios/c/malloc.nowipe.toml::freed[gcore]",
    "scenarios/c/selftest.fail.toml::in_use[procmem]",
    "scenarios/c/sodium.live.toml::in_use[procmem]",
    "scenarios/c/sodium.live.toml::in_use[gcore]",
    "scenarios/c/sodium.live.toml::in_use[gcore-all]",
    "scenarios/c/sodium.live.toml::in_use[kernel-core]",
    "scenarios/c/unknown.toml::in_use[procmem]",
    "scenarios/c/wrong.toml::in_use[procmem]",
    "scenarios/c/wrong.toml::in_use[gcore]",
    "scenarios/c/wrong.toml::freed[procmem]",
    "scenarios/c/wrong.toml::freed[gcore]",
]
# On scenarios/c, with kernel-core pretended unavailable: sodium.live's kernel-core item fails (a SKIP verdict is
# no evidence) or, with skips allowed, skips; wrong.toml's freed items fail (the key is there), selftest.fail's
# item fails with an ERROR verdict, unknown.toml errors.
OUTCOMES = dict(passed=9, failed=4, skipped=0, errors=1)
OUTCOMES_SKIPS_ALLOWED = dict(passed=9, failed=3, skipped=1, errors=1)


@pytest.fixture(scope="module", autouse=True)
def c_target():
    require("c", "gcore")


def selftest(entry: str, timeout: float) -> str:
    return (f'name = "{entry}"\ntarget = "c"\nmethods = ["procmem"]\ntimeout = {timeout}\n'
            '\n[[checkpoints]]\nname = "in_use"\nexpect = "present"\nwhy = "planted"\n')


@pytest.fixture
def project(pytester, monkeypatch):
    """pytester's folder with scenario files under scenarios/ (and decoys that are not scenarios)."""
    monkeypatch.setenv("XDG_CACHE_HOME", REAL_CACHE)
    monkeypatch.setenv("REMANENCE_TEST_SECRETS", str(pytester.path / "secrets.log"))
    monkeypatch.setenv("REMANENCE_TEST_UNAVAILABLE", "kernel-core")
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    monkeypatch.delenv("PYTEST_ADDOPTS", raising=False)
    pytester.makeconftest(CONFTEST)
    c = pytester.path / "scenarios" / "c"
    c.mkdir(parents=True)
    nowipe = without_swap((SCENARIOS / "malloc.nowipe.toml").read_text())
    assert FOUR_METHODS in nowipe and WRONG_ORIGINAL in nowipe
    reduced = nowipe.replace(FOUR_METHODS, 'methods = ["procmem", "gcore"]')
    (c / "malloc.nowipe.toml").write_text(reduced)
    (c / "sodium.live.toml").write_text(without_swap((SCENARIOS / "sodium.live.toml").read_text()))
    (c / "wrong.toml").write_text(reduced.replace('name = "malloc.nowipe"', 'name = "wrong.nowipe"\nentry = "malloc.nowipe"')
                                  .replace(WRONG_ORIGINAL, WRONG_REPLACED))
    (c / "unknown.toml").write_text(selftest("nosuch.scenario", 5))
    (c / "selftest.fail.toml").write_text(selftest("selftest.fail", 5))
    pytester.makeini("[pytest]\n")   # the rootdir, whatever other config files the tree holds
    (pytester.path / "scenarios" / "pyproject.toml").write_text("[tool.black]\nline-length = 100\n")
    (pytester.path / "scenarios" / "remanence.toml").write_text("not a scenario = [")
    (pytester.path / "elsewhere").mkdir()
    (pytester.path / "elsewhere" / "x.toml").write_text("not a scenario = [")
    broken = pytester.path / "scenarios" / "broken"
    broken.mkdir()
    (broken / "bad.toml").write_text(selftest("bad.one", 5).replace("methods = [\"procmem\"]", "methods = [\"procmem\", \"x-ray\"]"))
    return pytester


def run(pytester, *args, timeout: float = 180):
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args, timeout=timeout)


def output(result) -> str:
    return "\n".join(result.outlines + result.errlines)


def secrets(pytester) -> list[bytes]:
    path = pytester.path / "secrets.log"
    return [bytes.fromhex(line) for line in path.read_text().split()] if path.exists() else []


def assert_no_secret(pytester, text: str, console: bool = True) -> None:
    values = secrets(pytester)
    assert values, "no run recorded its secret"
    for value in values:
        for form in (value.hex(), value.hex().upper(), base64.b64encode(value).decode(), value.decode("latin-1")):
            assert form not in text
    if console:   # results.json holds masked hexdumps by design; pytest's output holds none
        assert not HEX64.search(text), "a 64-hex-digit run in the output"
        assert not HEXDUMP.search(text), "a hexdump in the output"


def section(text: str, title: str) -> str:
    """One failure's text from pytest's output: from its ____ title line to the next."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("_") and title in line)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith(("_", "="))), len(lines))
    return "\n".join(lines[start:end])


def results_json(pytester, folder: str = "out") -> dict:
    return read_results(pytester.path / folder / "results.json")


# --- collection -----------------------------------------------------------------------------------------

def test_collection_ids_markers_and_determinism(project):
    first = run(project, "--collect-only", "-q", "scenarios/c")
    assert first.ret == 0, output(first)
    ids = [line for line in first.outlines if "::" in line]
    assert ids == IDS
    second = run(project, "--collect-only", "-q", "scenarios/c")
    assert first.outlines[:-1] == second.outlines[:-1] and first.outlines[-1].split(" in ")[0] == \
        second.outlines[-1].split(" in ")[0]
    everything = run(project, "--collect-only", "-q", "--continue-on-collection-errors")
    assert [line for line in everything.outlines if "::" in line] == IDS   # decoys and broken files: no items
    assert "elsewhere" not in output(everything) and "pyproject" not in output(everything)


def test_broken_file_is_a_collection_error_naming_file_and_key(project):
    result = run(project, "--collect-only", "scenarios/broken")
    text = output(result)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    assert "ERROR collecting scenarios/broken/bad.toml" in text
    assert "bad.toml: methods[1]: unknown method 'x-ray'" in text
    assert "Traceback" not in text and "pytest_plugin.py" not in text


def test_markers_are_registered(project):
    result = run(project, "--markers")
    text = output(result)
    for marker in ("remanence:", "c:", "go:", "procmem:", "gcore:", "gcore_all:", "kernel_core:", "exit:"):
        assert f"@pytest.mark.{marker}" in text
    strict = run(project, "--collect-only", "-q", "--strict-markers", "-m", "go or gcore_all", "scenarios/c")
    assert [line for line in strict.outlines if "::" in line] == ["scenarios/c/sodium.live.toml::in_use[gcore-all]"]


def test_keep_snapshots_needs_an_output_folder(project):
    result = run(project, "--remanence-keep-snapshots", "--collect-only", "scenarios/c")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--remanence-keep-snapshots needs --remanence-out" in output(result)


# --- running --------------------------------------------------------------------------------------------

def test_run_outcomes_and_redacted_failure_text(project):
    result = run(project, "-rA", "--remanence-out", "out", "scenarios/c")
    text = output(result)
    result.assert_outcomes(**OUTCOMES)
    assert_no_secret(project, text)
    assert "Traceback" not in text and "pytest_plugin.py" not in text

    wrong = section(text, "wrong.nowipe: freed [procmem]")
    assert "FAIL: expected absent, found" in wrong
    assert "expected: absent" in wrong
    assert "why:      free() does not wipe" in wrong
    assert "repetition 1: FAIL: expected absent, found" in wrong
    assert "[heap]" in wrong and "raw full at 0x" in wrong
    assert "scenarios/c/wrong.toml:" in wrong

    error = section(text, "selftest.fail: in_use [procmem]")
    assert "verdict:  ERROR: the target or a snapshot failed; an ERROR verdict fails the gate" in error
    assert "target reported: deliberate failure" in error

    unknown = section(text, "nosuch.scenario: in_use [procmem]")
    assert "unknown.toml: entry: 'nosuch.scenario' is not registered in the c target" in unknown
    skipped = section(text, "sodium.live: in_use [kernel-core]")
    assert "verdict:  SKIP: the check could not be done here" in skipped and "pretended unavailable by the test" in skipped

    doc = results_json(project)
    assert sorted(r["scenario"] for r in doc["runs"]) == ["malloc.nowipe", "selftest.fail", "sodium.live", "wrong.nowipe"]
    assert doc["exit_code"] == 1 and doc["summary"]["FAIL"] == 2 and doc["summary"]["ERROR"] == 1
    assert_no_secret(project, json.dumps(doc), console=False)


def test_marker_selection_runs_only_selected_methods(project):
    result = run(project, "--strict-markers", "-m", "c and procmem", "--remanence-out", "out",
                 "--remanence-keep-snapshots", "scenarios/c")
    result.assert_outcomes(passed=4, failed=2, errors=1)
    assert "7 deselected" in output(result)
    doc = results_json(project)
    assert {v["method"] for v in doc["verdicts"]} == {"procmem"}, "deselected methods were snapshotted"
    assert sorted(r["scenario"] for r in doc["runs"]) == ["malloc.nowipe", "selftest.fail", "sodium.live", "wrong.nowipe"]
    kept = [Path(v["snapshot"]["kept_path"]) for v in doc["verdicts"] if v["snapshot"]]
    assert len(kept) == 5 and all(p.is_file() and p.stat().st_mode & 0o777 == 0o600 for p in kept)


def test_xdist_loadgroup_same_outcomes_one_run_per_scenario(project):
    result = run(project, "-n", "2", "--dist", "loadgroup", "-v", "--remanence-out", "out", "-o",
                 "remanence_allow_skip=true", "scenarios/c")
    text = output(result)
    result.assert_outcomes(**OUTCOMES_SKIPS_ALLOWED)
    assert_no_secret(project, text)
    assert "wrong.toml::freed[procmem]@wrong.nowipe" in text
    doc = results_json(project)
    # Each scenario ran once, in one worker, and the controller merged the workers' results.
    assert sorted(r["scenario"] for r in doc["runs"]) == ["malloc.nowipe", "selftest.fail", "sodium.live", "wrong.nowipe"]
    assert len(secrets(project)) == 4   # one secret per run: unknown.toml never starts a target
    assert doc["summary"]["FAIL"] == 2 and doc["exit_code"] == 1
    for file in ("malloc.nowipe", "sodium.live", "wrong"):
        workers = set(re.findall(rf"\[(gw\d)\] .*scenarios/c/{re.escape(file)}\.toml::", text))
        assert len(workers) == 1, f"{file}: items ran in {workers}"


def test_xdist_load_mode_is_still_correct(project):
    result = run(project, "-n", "2", "--dist", "load", "--remanence-allow-skip", "scenarios/c/wrong.toml",
                 "scenarios/c/sodium.live.toml")
    result.assert_outcomes(passed=5, failed=2, skipped=1)
    assert_no_secret(project, output(result))


def test_ctrl_c_stops_the_session_and_kills_the_target(project):
    (project.path / "scenarios" / "hang").mkdir()
    (project.path / "scenarios" / "hang" / "hang.toml").write_text(selftest("selftest.fork_hang", 120))
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--log-cli-level=INFO",
                             "--remanence-out", "out", "scenarios/hang"], cwd=project.path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    seen = []
    started = time.monotonic()
    for line in proc.stdout:
        seen.append(line)
        if b"selftest.fork_hang#1: starting" in line:
            break
    else:
        raise AssertionError(b"".join(seen).decode(errors="replace"))
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=60)
    text = b"".join(seen).decode(errors="replace") + rest.decode(errors="replace")
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, text
    assert "KeyboardInterrupt" in text and time.monotonic() - started < 60
    assert "1 passed" not in text and "1 failed" not in text
    doc = results_json(project)
    assert doc["interrupted"] is True
    [hang] = doc["runs"]
    assert hang["exit"] == "killed by SIGKILL"


def test_repetitions_run_side_by_side_with_remanence_jobs(project):
    repeated = (project.path / "scenarios" / "c" / "malloc.nowipe.toml").read_text().replace(
        'name = "malloc.nowipe"', 'name = "malloc.nowipe"\nrepeat = 3')
    (project.path / "scenarios" / "repeated").mkdir()
    (project.path / "scenarios" / "repeated" / "nowipe.toml").write_text(repeated)
    result = run(project, "--remanence-jobs", "2", "--remanence-out", "out", "scenarios/repeated")
    result.assert_outcomes(passed=4)
    doc = results_json(project)
    assert [(r["scenario"], r["repetition"]) for r in doc["runs"]] == [("malloc.nowipe", n) for n in (1, 2, 3)]
    assert len(secrets(project)) == 3 and all(v["outcome"] == "PASS" for v in doc["verdicts"])
    assert "--remanence-jobs 0 is out of range" in output(run(project, "--remanence-jobs", "0", "scenarios/repeated"))
