"""The Go SDK's example project (targets/examples/go): its own build command and scenario files, run as a user
would run them. The leaky twin's wipe must be caught, the clean twin's must hold."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from remanence.layout import TARGETS_DIR
from remanence.snapshot import method_unavailable

EXAMPLE = TARGETS_DIR / "examples" / "go"


@pytest.fixture(scope="module")
def example_run(tmp_path_factory):
    if not shutil.which("go"):
        pytest.skip("go not found on PATH (the example is built with `go build`)")
    if reason := method_unavailable("procmem"):
        pytest.skip(f"procmem unavailable here: {reason}")
    out = tmp_path_factory.mktemp("example-go")
    done = subprocess.run([sys.executable, "-m", "remanence", "run", "--scenarios", str(EXAMPLE), "--out", str(out),
                           "--method", "procmem"], capture_output=True, text=True, timeout=600)
    return done, json.loads((out / "results.json").read_text())


def outcomes(doc: dict, scenario: str) -> dict[str, str]:
    return {v["checkpoint"]: v["outcome"] for v in doc["verdicts"] if v["scenario"] == scenario}


def test_the_leaky_twin_fails_its_wipe_and_the_run_exits_1(example_run):
    done, doc = example_run
    assert done.returncode == 1, done.stderr[-2000:]
    assert outcomes(doc, "example.go.leaky") == {"in_use": "PASS", "after_wipe": "FAIL"}
    [after] = [v for v in doc["verdicts"] if (v["scenario"], v["checkpoint"]) == ("example.go.leaky", "after_wipe")]
    # The copy left behind is the array append moved the key out of, not the wiped one the program points at.
    assert after["hits"] and all(h["address"] != after["intended_address"] for h in after["hits"])


def test_the_clean_twin_passes_with_its_positive_controls(example_run):
    _, doc = example_run
    assert outcomes(doc, "example.go.clean") == {"in_use": "PASS", "after_wipe": "PASS"}
    for v in doc["verdicts"]:
        assert v["canary_seen"] is True
