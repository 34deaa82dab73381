"""The four SDK example projects (targets/examples/<language>) run by remanence as their READMEs tell a new user
to: the leaky twin of each "wipe my key" function must FAIL its `absent` expectation after the wipe, the clean
twin PASS everything, with the canary seen in every snapshot, and the run exit 1. Each example and its SDK are
copied to a temporary tree in their checkout layout, so the build (from the scenario files: make, go build, npm
install) writes there and finds the SDK at ../../sdk/<language>."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from remanence.snapshot import method_unavailable
from remanence.targets import TARGETS_DIR
from suite_run import read_results

TOOLS = {"c": ("make", "cc"), "go": ("go",), "node": ("node", "npm"), "python": ()}


def where_the_leak_is(leak: dict) -> bool:
    """Each example leaves its copy somewhere else: what the leaky twin's FAIL must have found."""
    full = [h for h in leak["hits"] if h["full"]]
    at_intended = [h for h in full if h["address"] == leak["intended_address"]]
    return {
        "c": bool(at_intended),                 # the memset the compiler dropped: the key whole in the freed chunk
        "go": bool(full) and not at_intended,   # the array append moved the key out of, not the wiped one
        "node": any(h["encoding"] == "hex-lower" for h in full) and not at_intended,   # the hex string
        "python": bool(at_intended),            # the freed bytes object the program reported
    }[leak["scenario"].split(".")[1]]


def copy_example(language: str, root: Path) -> Path:
    skipped = shutil.ignore_patterns("build", "node_modules", "__pycache__")
    for part in (f"sdk/{language}", f"examples/{language}"):
        if (TARGETS_DIR / part).is_dir():     # Python's SDK is the module remanence.sdk
            shutil.copytree(TARGETS_DIR / part, root / "targets" / part, ignore=skipped)
    return root / "targets" / "examples" / language


# language -> the methods its example is run with, all in one run (the C example is read by gdb too)
METHODS = {"c": ("procmem", "gcore"), "go": ("procmem",), "node": ("procmem",), "python": ("procmem",)}


@pytest.fixture(scope="module")
def example_runs(tmp_path_factory):
    """language -> (its example's run with the methods of METHODS[language] that work here: the finished process,
    results.json); each run made once, by the first test that needs it."""
    runs = {}

    def run(language: str) -> tuple[subprocess.CompletedProcess, dict]:
        if language not in runs:
            methods = [m for m in METHODS[language] if not method_unavailable(m)]
            root = tmp_path_factory.mktemp(f"example-{language}")
            example, out = copy_example(language, root), root / "out"
            done = subprocess.run([sys.executable, "-m", "remanence", "run", "--scenarios", str(example), "--out",
                                   str(out), "--method", ",".join(methods), "--format", "json"],
                                  capture_output=True, text=True, cwd="/", timeout=900)
            runs[language] = done, read_results(out / "results.json")
        return runs[language]
    return run


@pytest.mark.parametrize("language, method", [
    pytest.param(language, method, marks=pytest.mark.xdist_group(f"example_{language}"))   # one worker, one run
    for language, methods in METHODS.items() for method in methods])
def test_the_leaky_twin_fails_after_the_wipe_and_the_clean_twin_passes(language, method, example_runs):
    if missing := [t for t in TOOLS[language] if not shutil.which(t)]:
        pytest.skip(f"needs {', '.join(missing)}")
    if reason := method_unavailable(method):
        pytest.skip(f"{method} unavailable here: {reason}")
    done, doc = example_runs(language)
    assert {v["method"] for v in doc["verdicts"]} == {m for m in METHODS[language] if not method_unavailable(m)}
    verdicts = [v for v in doc["verdicts"] if v["method"] == method]
    leaky, clean = f"example.{language}.leaky", f"example.{language}.clean"
    assert {(v["scenario"], v["checkpoint"], v["subject"]): v["outcome"] for v in verdicts} == {
        (leaky, "in_use", "secret"): "PASS", (leaky, "after_wipe", "secret"): "FAIL",
        (clean, "in_use", "secret"): "PASS", (clean, "after_wipe", "secret"): "PASS",
    }, done.stderr[-3000:]
    assert all(v["canary_seen"] for v in verdicts)
    assert all(r["target"] == "program" and r["error"] is None for r in doc["runs"])
    [leak] = [v for v in verdicts if (v["scenario"], v["checkpoint"]) == (leaky, "after_wipe")]
    assert where_the_leak_is(leak), leak["hits"]
    assert done.returncode == 1, done.stderr[-3000:]


def test_the_c_example_program_checks_its_argv_before_speaking(tmp_path):
    if not (shutil.which("make") and shutil.which("cc")):
        pytest.skip("needs make and a C compiler")
    example = copy_example("c", tmp_path)
    subprocess.run(["make", "-s"], cwd=example, check=True, capture_output=True)
    r = subprocess.run([str(example / "build" / "wipe_demo"), "sloppy"], capture_output=True, text=True,
                       stdin=subprocess.DEVNULL, timeout=10)
    assert r.returncode == 64 and "usage:" in r.stderr and r.stdout == ""
