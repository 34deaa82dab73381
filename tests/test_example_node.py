"""The Node SDK example (targets/examples/node) through the command line, as its README tells a new user to run
it: the leaky twin's wipe fails its `absent` checkpoint, the clean twin's passes, the run exits 1. procmem only:
a node core is about 900 MiB."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from remanence.snapshot import method_unavailable
from remanence.targets import PROJECT_ROOT

EXAMPLE = PROJECT_ROOT / "targets" / "examples" / "node"


def test_the_leaky_wipe_fails_and_the_clean_wipe_passes(tmp_path):
    if not (shutil.which("node") and shutil.which("npm")):
        pytest.skip("node and npm are needed")
    if reason := method_unavailable("procmem"):
        pytest.skip(f"procmem unavailable here: {reason}")
    done = subprocess.run([sys.executable, "-m", "remanence", "run", "--scenarios", str(EXAMPLE), "--out", str(tmp_path),
                           "--method", "procmem"], capture_output=True, text=True, cwd="/", timeout=600)
    doc = json.loads((tmp_path / "results.json").read_text())
    outcomes = {(v["scenario"], v["checkpoint"], v["subject"]): v["outcome"] for v in doc["verdicts"]}
    assert outcomes == {
        ("example.node.leaky", "in_use", "secret"): "PASS",
        ("example.node.leaky", "after_wipe", "secret"): "FAIL",
        ("example.node.clean", "in_use", "secret"): "PASS",
        ("example.node.clean", "after_wipe", "secret"): "PASS",
    }, done.stderr
    assert all(v["method"] == "procmem" and v["canary_seen"] for v in doc["verdicts"])
    # The leak is the hex string wipeKeyLeaky() made, whole, away from the wiped Buffer.
    [leak] = [v for v in doc["verdicts"] if (v["scenario"], v["checkpoint"]) == ("example.node.leaky", "after_wipe")]
    assert any(h["full"] and h["encoding"] == "hex-lower" for h in leak["hits"]), leak["hits"]
    assert not any(h["full"] and h["address"] == leak["intended_address"] for h in leak["hits"]), leak["hits"]
    assert all(r["target"] == "program" and r["error"] is None for r in doc["runs"])
    assert done.returncode == 1, done.stderr
