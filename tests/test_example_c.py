"""The C SDK's example project (targets/examples/c) run by remanence as a user would: its leaky twin (memset before
free, dropped by the compiler) must FAIL the `absent` expectation after the wipe, its clean twin (explicit_bzero)
PASS everything. The example and the SDK are copied to a temporary tree in their checkout layout, so the build
(`make -s`, from the scenario files) writes there and the example finds the SDK at ../../sdk/c."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from remanence.snapshot import method_unavailable
from remanence.targets import TARGETS_DIR
from suite_run import SCHEMA

pytestmark = pytest.mark.skipif(shutil.which("make") is None or shutil.which("cc") is None,
                                reason="needs make and a C compiler")


@pytest.fixture
def example(tmp_path) -> Path:
    without_build = shutil.ignore_patterns("build")
    shutil.copytree(TARGETS_DIR / "sdk" / "c", tmp_path / "targets" / "sdk" / "c", ignore=without_build)
    shutil.copytree(TARGETS_DIR / "examples" / "c", tmp_path / "targets" / "examples" / "c", ignore=without_build)
    return tmp_path / "targets" / "examples" / "c"


@pytest.mark.parametrize("method", ["procmem", "gcore"])
def test_the_leaky_twin_fails_after_the_wipe_and_the_clean_twin_passes(example, tmp_path, method):
    if reason := method_unavailable(method):
        pytest.skip(f"{method} unavailable here: {reason}")
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "remanence", "run", "--scenarios", str(example), "--out", str(out),
                           "--method", method, "--format", "json"], capture_output=True, text=True, cwd="/")
    doc = json.loads((out / "results.json").read_text())
    jsonschema.validate(doc, SCHEMA)
    outcomes = {(v["scenario"], v["checkpoint"], v["subject"]): v["outcome"] for v in doc["verdicts"]
                if v["method"] == method}
    assert outcomes == {
        ("example.c.leaky", "in_use", "secret"): "PASS",
        ("example.c.leaky", "after_wipe", "secret"): "FAIL",
        ("example.c.clean", "in_use", "secret"): "PASS",
        ("example.c.clean", "after_wipe", "secret"): "PASS",
    }, done.stderr
    assert done.returncode == 1, done.stderr
    assert (example / "build" / "wipe_demo").is_file()


def test_the_example_program_checks_its_argv_before_speaking(example):
    subprocess.run(["make", "-s"], cwd=example, check=True, capture_output=True)
    r = subprocess.run([str(example / "build" / "wipe_demo"), "sloppy"], capture_output=True, text=True,
                       stdin=subprocess.DEVNULL, timeout=10)
    assert r.returncode == 64 and "usage:" in r.stderr and r.stdout == ""
