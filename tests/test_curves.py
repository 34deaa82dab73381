"""Repeating checkpoints ([checkpoints.repeat]): validation, the series in the results document and the schema,
and its chart in the HTML report."""
from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import jsonschema
import pytest
from suite_run import read_results, require

from remanence.cli import main
from remanence.document import ABSENT, Document, dumps, schema
from remanence.report.html_report import HtmlReporter, build_view
from remanence.scenario import Repeat, ScenarioError, load_scenario

GOLDEN = Path(__file__).parent / "golden" / "sample-results.json"   # a document written before steps existed

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


@pytest.fixture(scope="module")
def go_curves(tmp_path_factory):
    """secret.heap and its no-Do twin, procmem only, twice each: copies per collection."""
    require("go", "procmem")
    out = tmp_path_factory.mktemp("curves")
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        code = main(["run", "secret.heap", "secret.heap_nodo", "--method", "procmem", "--repeat", "2",
                     "--out", str(out), "--format", "json"])
    return code, read_results(out / "results.json")


def test_the_runner_records_copies_per_collection_in_the_series(go_curves):
    """runtime/secret's promise over time: the heap copy made inside Do is gone from the first collection on;
    without Do it stays through every collection."""
    code, doc = go_curves
    assert code == 0 and all(v["outcome"] == "PASS" for v in doc["verdicts"])
    series = {s["scenario"]: s for s in doc["series"]}
    assert set(series) == {"secret.heap", "secret.heap_nodo"}
    for name, s in series.items():
        assert (s["checkpoint"], s["method"], s["subject"], s["repetitions"]) == ("before_gc", "procmem", "secret", [1, 2])
        assert [st["label"] for st in s["steps"]] == ["at the checkpoint"] + [
            f"after {n} collection{'s' if n > 1 else ''}" for n in range(1, 6)]
        assert all(st["measured"] == 2 for st in s["steps"])
    assert [st["found"] for st in series["secret.heap"]["steps"]] == [2, 0, 0, 0, 0, 0]
    assert all(st["full"] == [0, 0] for st in series["secret.heap"]["steps"][1:])
    assert [st["found"] for st in series["secret.heap_nodo"]["steps"]] == [2] * 6
    stepped = [v for v in doc["verdicts"] if v["scenario"] == "secret.heap" and v["repetition"] == 1 and "step" in v]
    assert [v["checkpoint"] for v in stepped] == [f"before_gc [step {i}/6]" for i in range(1, 7)]
    assert [v["expect"] for v in stepped] == ["present"] + ["absent"] * 5    # the repeat's own expectation
    seconds = [v["step"]["seconds"] for v in stepped]
    assert seconds[0] == 0 and seconds == sorted(seconds)


def test_the_html_report_draws_one_chart_per_series_with_a_point_per_step(go_curves):
    _, doc = go_curves
    page = HtmlReporter().render(doc)
    charts = re.findall(r'<svg class="curve".*?</svg>', page, re.S)
    assert len(charts) == 2                     # one per scenario x checkpoint x subject: its methods are lines
    for chart in charts:
        assert "<title " in chart and "<desc " in chart and "copies" in chart and "rate" in chart
        for panel in ("copies", "rate"):
            line = re.search(rf'<g class="line" data-method="procmem" data-panel="{panel}".*?</g>', chart, re.S)[0]
            assert line.count("<circle") == 6
    heap = next(c for c in charts if 'id="c-secret.heap-before_gc-' in c)
    rate = re.search(r'data-panel="rate".*?</g>', heap, re.S)[0]
    assert "2 of 2 repetition(s) had a full copy" in rate and rate.count("0 of 2 repetition(s)") == 5


def test_the_html_findings_give_a_repeating_checkpoint_one_row_with_a_mark_per_step(go_curves):
    """secret.Do's promise at a glance: the copy is gone from the first collection on; without Do it stays."""
    _, doc = go_curves
    rows = {(sc["name"], row["checkpoint"]): row for group in build_view(doc)["findings"] for sc in group["scenarios"]
            for row in sc["rows"]}
    for scenario, after_first in (("secret.heap", "clean"), ("secret.heap_nodo", "full-copy")):
        row = rows[(scenario, "before_gc")]
        (cell,) = [c for c in row["cells"] if c["outcome"]]
        assert row["steps"] == 6 and [p["kind"] for p in cell["steps"]] == ["full-copy"] + [after_first] * 5
        assert cell["kind"] == after_first and cell["word"] == ("clean 2/2" if after_first == "clean" else "full 2/2")


def test_a_document_with_steps_reads_back_and_an_old_one_without_still_reads(go_curves):
    _, doc = go_curves
    back = Document.from_json(json.loads(json.dumps(doc)), "results.json")
    assert back.to_json() == doc
    assert {v.scenario_checkpoint for v in back.verdicts if v.scenario == "secret.heap"} == {"before_gc", "after_gc"}
    old = Document.from_json(json.loads(GOLDEN.read_text()), str(GOLDEN))
    assert old.series is ABSENT and "series" not in old.to_json()
    assert all(v.step is ABSENT for v in old.verdicts)
    jsonschema.validate(json.loads(dumps(old.to_json())), schema())
