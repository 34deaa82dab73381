"""`target = "program"`: a user's own program speaking the protocol, built and started from its [program] table.
The built-in C target binary stands in for a user's program here; the SDK examples have tests of their own."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from remanence.scenario import ScenarioError, load_scenario
from remanence.targets import build_target
from suite_run import require

CHECKPOINTS = """
[[checkpoints]]
name = "in_use"
expect = "present"
where = "intended"
why = "the key is live in the heap chunk"

[[checkpoints]]
name = "freed"
expect = "absent"
why = "the program claims to wipe it (it does not: malloc.nowipe frees without wiping)"
"""


def scenario(folder: Path, program: str, name: str = "mine.nowipe") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.toml"
    path.write_text(f'name = "{name}"\ntarget = "program"\nmethods = ["procmem"]\n\n[program]\n{program}\n{CHECKPOINTS}')
    return path


def run(folder: Path, out: Path, *names: str) -> tuple[int, dict, str]:
    done = subprocess.run([sys.executable, "-m", "remanence", "run", "--scenarios", str(folder), "--out", str(out),
                           "--format", "json", *names], capture_output=True, text=True, cwd="/")
    doc = json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else {}
    return done.returncode, doc, done.stderr


def outcomes(doc: dict) -> dict[str, str]:
    return {v["checkpoint"]: v["outcome"] for v in doc["verdicts"]}


def test_a_program_built_by_its_build_command_runs_with_its_argv_and_its_leak_fails(tmp_path):
    require("c", "procmem")
    binary = build_target("c").command[0]
    project = tmp_path / "project"
    scenario(project, f'argv = ["build/mine", "malloc.nowipe"]\nbuild = ["sh", "-c", "mkdir -p build && cp {binary} build/mine"]')
    code, doc, err = run(project, tmp_path / "out")
    assert (project / "build" / "mine").is_file(), err
    assert outcomes(doc) == {"in_use": "PASS", "freed": "FAIL"}, err
    assert code == 1 and doc["runs"][0]["target"] == "program"


def test_a_program_whose_build_fails_is_an_error_naming_the_build_not_a_skip(tmp_path):
    project = tmp_path / "project"
    scenario(project, 'argv = ["build/mine"]\nbuild = ["sh", "-c", "echo no compiler for you >&2; exit 3"]')
    code, doc, err = run(project, tmp_path / "out")
    assert set(outcomes(doc).values()) == {"ERROR"} and code == 3
    assert all("no compiler for you" in v["reason"] for v in doc["verdicts"])


def test_a_missing_program_without_a_build_is_one_line_before_anything_runs(tmp_path):
    project = tmp_path / "project"
    path = scenario(project, 'argv = ["./nothing-here"]')
    code, doc, err = run(project, tmp_path / "out")
    assert code == 2 and doc == {}
    assert err.strip().count("\n") == 0 and str(path) in err and "program.argv" in err and "nothing-here" in err


def test_the_python_placeholder_is_the_interpreter_running_remanence_even_through_a_venv_symlink(tmp_path):
    from remanence.plan import make_plan
    path = scenario(tmp_path, 'argv = ["{python}", "-c", "pass"]')
    program = make_plan([load_scenario(path)]).runs[0].program
    assert program.command[0] == os.path.abspath(sys.executable)


@pytest.mark.parametrize("program, key", [
    ('argv = []', "program.argv"),
    ('argv = ["x"]\nbuild = []', "program.build"),
    ('argv = ["x"]\ncwd = "no-such-folder"', "program.cwd"),
    ('argv = ["x"]\nenv = { "1BAD" = "v" }', "program.env.1BAD"),
    ('argv = ["x"]\nshell = true', "program.shell"),
])
def test_a_broken_program_table_names_the_file_and_key(tmp_path, program, key):
    path = scenario(tmp_path, program)
    with pytest.raises(ScenarioError) as e:
        load_scenario(path)
    assert e.value.key.startswith(key) or key in str(e.value)


def test_program_and_entry_do_not_mix(tmp_path):
    path = tmp_path / "x.toml"
    path.write_text(f'name = "x"\ntarget = "program"\nentry = "y"\n[program]\nargv = ["x"]\n{CHECKPOINTS}')
    with pytest.raises(ScenarioError, match="entry"):
        load_scenario(path)
    path.write_text(f'name = "x"\ntarget = "c"\n[program]\nargv = ["x"]\n{CHECKPOINTS}')
    with pytest.raises(ScenarioError, match="only for target"):
        load_scenario(path)
