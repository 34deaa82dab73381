"""`remanence doctor`: every check listed, missing pieces named with what they disable, exit code by the suite's needs."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from remanence.cli import main
from remanence.targets import PROJECT_ROOT

SCENARIOS = PROJECT_ROOT / "scenarios"
CHECKS = ["ptrace", "core_pattern", "core limit", "gdb", "swap", "C toolchain", "libsodium", "C target build", "go",
          "Go target build", "node", "Node.js target build", "python venv", "Python target build"]


@pytest.fixture(autouse=True)
def no_ambient_config(monkeypatch, tmp_path):
    monkeypatch.delenv("REMANENCE_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)


def doctor(capsys, *args: str) -> tuple[int, dict]:
    code = main(["doctor", "--json", *args])
    return code, json.loads(capsys.readouterr().out)


def by_name(report: dict) -> dict[str, dict]:
    return {c["check"]: c for c in report["checks"]}


def test_json_lists_every_check(capsys):
    code, report = doctor(capsys)
    assert [c["check"] for c in report["checks"]] == CHECKS
    for c in report["checks"]:
        assert c["status"] in ("ok", "limited", "missing") and c["detail"]
        assert (c["status"] == "ok") == (c["affects"] == []) == (c["disables"] == "")
    assert report["exit_code"] == code == (3 if any(c["blocks_suite"] for c in report["checks"]) else 0)
    assert report["suite"]["count"] == len(list(SCENARIOS.rglob("*.toml")))
    assert {"target:c", "target:go", "method:procmem"} <= set(report["suite"]["needs"])


def test_no_build_leaves_out_the_builds(capsys):
    _, report = doctor(capsys, "--no-build")
    assert [c["check"] for c in report["checks"]] == [c for c in CHECKS if not c.endswith("build")]


def restricted_path(tmp_path: Path, monkeypatch, keep=("gdb", "gcc", "cc", "make", "pkg-config", "as", "ld")) -> Path:
    """PATH holding only `keep` (as symlinks): no go, no node."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in keep:
        if found := shutil.which(tool):
            (bin_dir / tool).symlink_to(found)
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.delenv("REMANENCE_GO", raising=False)
    return bin_dir


def test_missing_go_and_node_are_reported_with_what_they_disable(capsys, tmp_path, monkeypatch):
    restricted_path(tmp_path, monkeypatch)
    code, report = doctor(capsys)
    checks = by_name(report)
    go, build, node = checks["go"], checks["Go target build"], checks["node"]
    assert go["status"] == "missing" and "go not found on PATH" in go["detail"]
    assert go["affects"] == ["target:go"] and "Go scenarios" in go["disables"] and go["blocks_suite"] is True
    assert build["status"] == "missing" and build["affects"] == ["target:go"]
    assert node["status"] == "missing" and node["affects"] == ["target:node"] and "Node.js" in node["disables"]
    assert node["blocks_suite"] is True     # the built-in suite has Node scenarios
    assert checks["Node.js target build"]["detail"] == "not built: node missing (see above)"
    assert code == 3 == report["exit_code"]   # the built-in suite has Go scenarios


def test_exit_code_follows_what_the_suite_needs(capsys, tmp_path, monkeypatch):
    restricted_path(tmp_path, monkeypatch)
    code, report = doctor(capsys, "--scenarios", str(SCENARIOS / "c"))
    checks = by_name(report)
    assert checks["go"]["status"] == "missing" and checks["go"]["blocks_suite"] is False
    assert "target:go" not in report["suite"]["needs"]
    assert code == (3 if any(c["blocks_suite"] for c in report["checks"]) else 0)


def test_missing_gdb_disables_the_gcore_methods(capsys, tmp_path, monkeypatch):
    restricted_path(tmp_path, monkeypatch, keep=())
    code, report = doctor(capsys, "--no-build")
    gdb = by_name(report)["gdb"]
    assert gdb["status"] == "missing" and gdb["affects"] == ["method:gcore", "method:gcore-all"]
    assert gdb["blocks_suite"] is True and code == 3
    assert by_name(report)["C toolchain"]["status"] == "missing"


def test_a_working_node_is_ok(capsys, tmp_path, monkeypatch):
    bin_dir = restricted_path(tmp_path, monkeypatch)
    node = bin_dir / "node"
    node.write_text("#!/bin/sh\necho v99.1.0\n")
    node.chmod(0o755)
    (bin_dir / "npm").symlink_to(node)
    _, report = doctor(capsys, "--no-build")
    assert by_name(report)["node"]["status"] == "ok" and "v99.1.0" in by_name(report)["node"]["detail"]
    node.write_text("#!/bin/sh\necho v16.20.0\n")
    _, report = doctor(capsys, "--no-build")
    assert by_name(report)["node"]["status"] == "missing" and "older than 18" in by_name(report)["node"]["detail"]


def test_table_output(capsys, tmp_path, monkeypatch):
    restricted_path(tmp_path, monkeypatch)
    monkeypatch.setenv("COLUMNS", "400")   # one line per row, whatever the terminal
    code = main(["doctor", "--no-build"])
    out = capsys.readouterr().out
    assert code == 3
    for words in ("remanence doctor", "ptrace", "missing", "Go scenarios", "needed by the suite", "SKIP"):
        assert words in out
    assert os.environ["PATH"] == str(tmp_path / "bin")
