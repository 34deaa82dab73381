"""Without a Go that has runtime/secret, Go scenarios are skipped with the reason, never failed."""
import json
from pathlib import Path

import pytest

from remanence.cli import main

SCENARIO = """
name = "secret.fake"
target = "go"
methods = ["procmem"]

[[checkpoints]]
name = "after"
expect = "absent"
why = "erased"
"""


def fake_go(tmp_path: Path, version: str, platform: str = "linux amd64") -> Path:
    go = tmp_path / "go"
    go.write_text(f"#!/bin/sh\nprintf '%s\\n' {version} {platform}\n")
    go.chmod(0o755)
    return go


@pytest.mark.parametrize("version, platform, words", [
    ("go1.22.5", "linux amd64", "go1.22.5 is older than go1.26"),
    ("go1.26.8", "darwin arm64", "this Go targets darwin/arm64"),
])
def test_go_scenarios_skip_with_the_reason(tmp_path, monkeypatch, capsys, version, platform, words):
    monkeypatch.setenv("REMANENCE_GO", str(fake_go(tmp_path, version, platform)))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "fake.toml").write_text(SCENARIO)
    code = main(["run", "--scenarios", str(tmp_path / "s"), "--out", str(tmp_path / "out")])
    assert code == 3       # SKIP is missing evidence: not a green gate
    assert main(["run", "--scenarios", str(tmp_path / "s"), "--out", str(tmp_path / "out"), "--allow-skip"]) == 0
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    [verdict] = doc["verdicts"]
    assert verdict["outcome"] == "SKIP" and words in verdict["reason"]
    assert words in doc["runs"][0]["skip_reason"]
    capsys.readouterr()
    monkeypatch.setenv("COLUMNS", "400")  # one line per row, so the reason is not wrapped
    assert main(["list", "--scenarios", str(tmp_path / "s")]) == 0
    [row] = [line for line in capsys.readouterr().out.splitlines() if "secret.fake" in line]
    assert "no: " in row and words in row


def test_missing_go_is_a_skip(tmp_path, monkeypatch):
    monkeypatch.setenv("REMANENCE_GO", "")
    monkeypatch.setenv("PATH", str(tmp_path))
    from remanence.targets import TargetUnavailable, build_target
    with pytest.raises(TargetUnavailable, match="go not found on PATH"):
        build_target("go")
