"""Repeating checkpoints ([checkpoints.repeat]): validation, the series in the results document and the schema,
and its chart in the HTML report."""
from __future__ import annotations

from pathlib import Path

import pytest

from remanence.scenario import Repeat, ScenarioError, load_scenario

SCENARIO = """
name = "demo.curve"
target = "python"
methods = ["procmem", "gcore"]

[[checkpoints]]
name = "dropped"
expect = "observe"
why = "how long the copy lives"

[checkpoints.repeat]
collections = 5
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "demo.toml"
    path.write_text(text)
    return path


def test_a_repeating_checkpoint_loads_with_its_steps(tmp_path):
    spec = load_scenario(write(tmp_path, SCENARIO)).checkpoints[0]
    assert spec.repeat == Repeat(collections=5, methods=("procmem", "gcore")) and spec.repeat.steps == 6
    assert [spec.repeat.label(i) for i in (0, 1, 2)] == ["at the checkpoint", "after 1 collection", "after 2 collections"]
    timed = load_scenario(write(tmp_path, SCENARIO.replace("collections = 5", "every = 0.5\nuntil = 2"))).checkpoints[0]
    assert (timed.repeat.every, timed.repeat.until, timed.repeat.steps) == (0.5, 2.0, 5)
    assert timed.repeat.label(3) == "at 1.5 s"


@pytest.mark.parametrize("old, new, key, words", [
    ("collections = 5", "collections = 0", "checkpoints[0].repeat.collections", "out of range 1..100"),
    ("collections = 5", "collections = 101", "checkpoints[0].repeat.collections", "out of range 1..100"),
    ("collections = 5", "collections = 2\nevery = 1", "checkpoints[0].repeat.collections", "not both"),
    ("collections = 5", "every = 1", "checkpoints[0].repeat", "until = T"),
    ("collections = 5", "every = 0\nuntil = 1", "checkpoints[0].repeat.every", "out of range"),
    ("collections = 5", "every = 1\nuntil = 3601", "checkpoints[0].repeat.until", "out of range"),
    ("collections = 5", "every = 2\nuntil = 1", "checkpoints[0].repeat.until", "shorter than every"),
    ("collections = 5", "every = 0.001\nuntil = 10", "checkpoints[0].repeat.every", "more than 1000"),
    ("collections = 5", "colections = 5", "checkpoints[0].repeat.colections", "unknown key"),
    ("collections = 5", 'collections = "5"', "checkpoints[0].repeat.collections", "expected int"),
    ("collections = 5", 'collections = 5\nmethods = ["gcore-all"]', "checkpoints[0].repeat.methods[0]",
     "not a live method taken at this checkpoint"),
    ("collections = 5", 'collections = 5\nmethods = []', "checkpoints[0].repeat.methods", "one or more"),
    ("collections = 5", 'collections = 5\nwhy = "x"', "checkpoints[0].repeat.expect", "required with why"),
    ("collections = 5", 'collections = 5\nexpect = "absent"', "checkpoints[0].repeat.why", "required key"),
])
def test_a_broken_repeat_is_one_line_naming_the_key(tmp_path, old, new, key, words):
    path = write(tmp_path, SCENARIO.replace(old, new))
    with pytest.raises(ScenarioError) as err:
        load_scenario(path)
    assert str(err.value).startswith(f"{path}: {key}: ") and "\n" not in str(err.value)
    assert words in str(err.value)


def test_later_steps_take_the_repeats_methods_and_expectation_and_a_core_comes_last(tmp_path):
    text = SCENARIO.replace('"gcore"]', '"gcore", "kernel-core"]').replace('expect = "observe"', 'expect = "present"') \
        .replace("collections = 5", 'collections = 2\nmethods = ["procmem"]\nexpect = "observe"\nwhy = "a curve"')
    spec = load_scenario(write(tmp_path, text)).checkpoints[0]
    steps = [spec.step(i) for i in range(spec.repeat.steps)]
    assert [s.methods for s in steps] == [("procmem", "gcore"), ("procmem",), ("procmem", "kernel-core")]
    assert [s.for_method("procmem").expect.value for s in steps] == ["present", "observe", "observe"]
    assert steps[2].for_method("kernel-core").expect.value == "present"


def test_the_exit_checkpoint_cannot_repeat(tmp_path):
    text = SCENARIO.replace('methods = ["procmem", "gcore"]', 'methods = ["exit"]').replace('"dropped"', '"exit"')
    with pytest.raises(ScenarioError, match=r"checkpoints\[0\]\.repeat: the 'exit' checkpoint happens once"):
        load_scenario(write(tmp_path, text))
