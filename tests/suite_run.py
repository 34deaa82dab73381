"""Running a folder of built-in scenarios through the command line and reading its verdicts, and skipping when
this machine cannot: shared by the tests that run real targets."""
from __future__ import annotations

import contextlib
import io
import json
import subprocess
from pathlib import Path

import jsonschema
import pytest

from remanence.cli import main
from remanence.document import read, schema
from remanence.snapshot import method_unavailable
from remanence.targets import TargetUnavailable, build_target

SCHEMA = schema()   # of the results.json files remanence writes

TEST_PROGRAMS = Path(__file__).parent / "programs"


def compile_test_program(name: str, folder: Path) -> Path:
    """tests/programs/<name>.c built into `folder`, warnings as errors."""
    binary = folder / name
    subprocess.run(["gcc", "-O2", "-Wall", "-Werror", "-o", str(binary), str(TEST_PROGRAMS / f"{name}.c")], check=True)
    return binary


def read_results(path: Path) -> dict:
    """A results.json a run wrote, checked against the schema, as the plain data reporters render: every verdict with
    its own snapshot, hit regions and contexts (the file stores each once and refers to it)."""
    jsonschema.validate(json.loads(Path(path).read_text()), SCHEMA)
    return read(path).to_json()


def require(language: str, *methods: str) -> None:
    """Skip the test, with the reason, unless the target builds and the snapshot methods work here."""
    try:
        build_target(language)
    except TargetUnavailable as e:
        pytest.skip(f"{language} target unavailable here: {e}")
    for method in methods:
        if reason := method_unavailable(method):
            pytest.skip(f"{method} unavailable here: {reason}")


def run_suite(language: str, scenarios: Path, out: Path) -> tuple[int, dict]:
    """(exit code, results document) of `remanence run --scenarios SCENARIOS`; a skip if the target cannot be built."""
    require(language)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        code = main(["run", "--scenarios", str(scenarios), "--out", str(out), "--format", "json"])
    return code, read_results(out / "results.json")


def verdicts(doc: dict, scenario: str, checkpoint: str, method: str, subject: str = "secret") -> list[dict]:
    """The verdicts at a checkpoint of the scenario file: every step of a repeating one."""
    found = [v for v in doc["verdicts"]
             if (v["scenario"], v.get("step", {}).get("checkpoint", v["checkpoint"]), v["method"], v["subject"])
             == (scenario, checkpoint, method, subject)]
    assert found, f"no verdict for {scenario} {checkpoint} {method} {subject}"
    return found


def assert_every_verdict_passes(code: int, doc: dict, scenarios: Path) -> None:
    """Every verdict PASS, exit 0, one run (at least) for every scenario file (the document: read_results's)."""
    failing = [(v["scenario"], v["repetition"], v["checkpoint"], v["method"], v["subject"], v["outcome"], v["reason"])
               for v in doc["verdicts"] if v["outcome"] != "PASS"]
    assert failing == []
    assert code == 0
    assert {r["scenario"] for r in doc["runs"]} == {p.stem for p in scenarios.glob("*.toml")}
