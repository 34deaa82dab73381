"""The Python SDK example (targets/examples/python) through the command line, as its README tells a new user to
run it: the leaky twin's wipe fails its `absent` checkpoint, the clean twin's passes."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from remanence.snapshot import method_unavailable
from remanence.targets import PROJECT_ROOT

EXAMPLE = PROJECT_ROOT / "targets" / "examples" / "python"


def test_the_leaky_wipe_fails_and_the_clean_wipe_passes(tmp_path):
    if reason := method_unavailable("procmem"):
        pytest.skip(f"procmem unavailable here: {reason}")
    done = subprocess.run([sys.executable, "-m", "remanence", "run", "--scenarios", str(EXAMPLE), "--out", str(tmp_path),
                           "--method", "procmem"], capture_output=True, text=True, cwd="/", timeout=300)
    doc = json.loads((tmp_path / "results.json").read_text())
    outcomes = {(v["scenario"], v["checkpoint"], v["subject"]): v["outcome"] for v in doc["verdicts"]}
    assert outcomes == {
        ("example.python.leaky", "in_use", "secret"): "PASS",
        ("example.python.leaky", "after_wipe", "secret"): "FAIL",
        ("example.python.clean", "in_use", "secret"): "PASS",
        ("example.python.clean", "after_wipe", "secret"): "PASS",
    }, done.stderr
    assert all(v["method"] == "procmem" and v["canary_seen"] for v in doc["verdicts"])
    # The leak is the freed bytes object, whole, at the address the program reported.
    [leak] = [v for v in doc["verdicts"] if (v["scenario"], v["checkpoint"]) == ("example.python.leaky", "after_wipe")]
    assert any(h["full"] and h["address"] == leak["intended_address"] for h in leak["hits"]), leak["hits"]
    assert all(r["target"] == "program" and r["error"] is None for r in doc["runs"])
    assert done.returncode == 1, done.stderr
