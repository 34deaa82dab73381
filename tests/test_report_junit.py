"""junit.xml against the common JUnit schema (tests/schemas/junit-10.xsd, the one Jenkins' xUnit plugin and pytest's
own tests use), and the names CI dashboards group by: Jenkins splits a classname at its last dot into package and
class, GitLab shows the suite, then classname and name."""
from __future__ import annotations

import contextlib
import functools
import io
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import xmlschema

from remanence.cli import main
from remanence.report.junit_report import JunitReporter
from remanence.snapshot import method_unavailable
from suite_run import TEST_PROGRAMS
from test_report_formats import SAMPLES, document, hit, run, sample, verdict

XSD = Path(__file__).parent / "schemas" / "junit-10.xsd"


@functools.cache
def junit_schema() -> xmlschema.XMLSchema:
    return xmlschema.XMLSchema(XSD)


def schema_errors(text: str) -> list[str]:
    return [f"{e.path}: {e.reason}" for e in junit_schema().iter_errors(text)]


def jenkins_split(classname: str) -> tuple[str, str]:
    """What Jenkins' JUnit plugin makes of a classname: (package, class), split at the last dot."""
    package, _, cls = classname.rpartition(".")
    return package, cls


def assert_grouped_and_unique(root: ET.Element, targets: dict[str, str]) -> None:
    """Every testcase sits under package remanence.<target> with its whole scenario as the class, and no two testcases
    share a classname and name, in the file as a whole (Jenkins merges equal classnames across suites)."""
    seen = set()
    for suite in root.findall("testsuite"):
        scenario = suite.get("name")
        for tc in suite.findall("testcase"):
            assert jenkins_split(tc.get("classname")) == (f"remanence.{targets[scenario]}", scenario.replace(".", ":"))
            key = (tc.get("classname"), tc.get("name"))
            assert key not in seen, key
            seen.add(key)


# --- the schema itself -------------------------------------------------------------------------------------------

def test_the_schema_rejects_what_junit_xml_used_to_carry():
    """The schema is strict where the old junit.xml broke it: a `file` on a testcase, a `skipped` count on
    testsuites, an <error> element (it declares none)."""
    old = ('<testsuites tests="1" failures="0" errors="1" skipped="0"><testsuite name="s" tests="1" failures="0" '
           'errors="1"><testcase name="c[procmem]" classname="remanence.c.s" file="s.toml"><error message="m"/>'
           '</testcase></testsuite></testsuites>')
    reasons = " | ".join(schema_errors(old))
    assert "'skipped' attribute not allowed" in reasons and "'file' attribute not allowed" in reasons
    assert "Unexpected child with tag 'error'" in reasons


@pytest.mark.parametrize("name", SAMPLES)
def test_golden_samples_are_valid(name):
    text = JunitReporter().render(sample(name))
    assert schema_errors(text) == []
    targets = {r["scenario"]: r["target"] for r in sample(name)["runs"]}
    assert_grouped_and_unique(ET.fromstring(text), targets)


# --- a document with every outcome -------------------------------------------------------------------------------

def stepped(v: dict, checkpoint: str, index: int, count: int) -> dict:
    """The verdict at step `index` of a repeating checkpoint, named as results.json names it."""
    return {**v, "checkpoint": f"{checkpoint} [step {index}/{count}]",
            "step": {"checkpoint": checkpoint, "index": index, "count": count,
                     "label": "at the checkpoint" if index == 1 else f"after {index - 1} collections",
                     "seconds": 0.5 * (index - 1)}}


def every_outcome() -> tuple[dict, dict[str, str]]:
    """PASS, FAIL (new and in the baseline), INCONCLUSIVE, ERROR, SKIP (all and some repetitions); a derived value,
    a crash, a repeating checkpoint over 12 repetitions, a followed process tree; scenario names with dots, and two
    that differ only by a dot and an underscore."""
    targets = {"py.kx.xchacha": "python", "sodium.overflow": "c", "secret.heap": "go", "secret_heap": "go",
               "tree.fork": "program"}
    verdicts = []
    s = "py.kx.xchacha"
    verdicts += [verdict(s, "exchanged", "procmem", "PASS", expect="present", repetition=r, kind="found",
                         hits=[hit(s, "exchanged", "procmem")]) for r in (1, 2)]
    verdicts += [{**verdict(s, "exchanged", "procmem", "FAIL", repetition=r, kind="leak",
                            hits=[hit(s, "exchanged", "procmem")]), "subject": "derived:session_rx"} for r in (1, 2)]
    verdicts += [verdict(s, "wiped", "gcore", "INCONCLUSIVE", repetition=r, kind="no-canary",
                         reason="the canary was not seen") for r in (1, 2)]
    verdicts += [verdict(s, "wiped", "gcore-all", "ERROR", repetition=1, kind="error", reason="gdb <crashed> \x1b[0m"),
                 verdict(s, "wiped", "gcore-all", "PASS", repetition=2, kind="absent")]
    verdicts += [verdict(s, "wiped", "swap", "SKIP", repetition=r, kind="skip", reason="swap needs mkswap")
                 for r in (1, 2)]
    verdicts += [verdict(s, "wiped", "procmem", "SKIP", repetition=1, kind="skip", reason="timed out"),
                 verdict(s, "wiped", "procmem", "PASS", repetition=2, kind="absent")]
    s = "sodium.overflow"
    verdicts += [{**verdict(s, "past_end", "kernel-core", "PASS", expect="crash", kind="crashed",
                            reason="killed by SIGSEGV, as expected"), "subject": "crash"},
                 verdict(s, "past_end", "kernel-core", "FAIL", kind="leak", hits=[hit(s, "past_end", "kernel-core")],
                         gate={"state": "baseline", "suppression": None})]
    for s in ("secret.heap", "secret_heap"):
        for r in range(1, 13):
            for i in range(1, 6):
                for m in ("procmem", "gcore"):
                    outcome = "FAIL" if (s, r, i, m) == ("secret.heap", 7, 3, "gcore") else "PASS"
                    verdicts.append(stepped(verdict(s, "after_gc", m, outcome, repetition=r,
                                                    kind="leak" if outcome == "FAIL" else "absent"), "after_gc", i, 5))
    s = "tree.fork"
    followed = hit(s, "served", "procmem")
    followed.update(pid=4243, command="tree_holder: worker 1")
    verdicts.append({**verdict(s, "served", "procmem", "FAIL", kind="leak", hits=[followed],
                               reason="pid 4243 (tree_holder: worker 1): expected absent, found 1"),
                     "processes": [{"pid": 4242, "command": "tree_holder --server", "canary_seen": True, "hits": 0,
                                    "snapshot": None},
                                   {"pid": 4243, "command": "tree_holder: worker 1", "canary_seen": True, "hits": 1,
                                    "snapshot": None}]})
    runs = [run(s, r, target) for s, target in targets.items() for r in range(1, 13 if s.startswith("secret") else 3)]
    return document(verdicts, runs=runs), targets


def test_every_outcome_is_valid_grouped_unique_and_never_green_without_evidence():
    doc, targets = every_outcome()
    text = JunitReporter().render(doc)
    assert schema_errors(text) == []
    root = ET.fromstring(text)
    assert_grouped_and_unique(root, targets)

    # One testcase per scenario x checkpoint (step included) x method x subject, whatever the repetitions.
    keys = {(v["scenario"], v["checkpoint"], v["method"], v.get("subject", "secret")) for v in doc["verdicts"]}
    assert int(root.get("tests")) == len(root.findall("testsuite/testcase")) == len(keys) == 6 + 2 + 2 * 10 + 1
    heap = root.find("testsuite[@name='secret.heap']")
    assert heap.find("testcase[@name='after_gc [step 3/5][gcore]']/failure").get("message").startswith(
        "FAIL in 1 of 12 repetitions")
    assert heap.get("file") == "scenarios/go/secret.heap.toml"      # where the scenario file went
    assert heap.find("properties/property[@name='source']").get("value") == "scenarios/go/secret.heap.toml"

    cases = {(tc.get("classname"), tc.get("name")): tc for tc in root.iter("testcase")}
    kx = "remanence.python.py:kx:xchacha"
    assert cases[kx, "exchanged[procmem]"].find("failure") is None
    assert cases[kx, "exchanged[procmem] derived:session_rx"].find("failure").get("type") == "secret-copy-remains"
    # Missing evidence is a failure typed with its outcome, never a pass; a SKIP of every repetition is skipped.
    assert cases[kx, "wiped[gcore]"].find("failure").get("type") == "INCONCLUSIVE"
    error = cases[kx, "wiped[gcore-all]"].find("failure")
    assert error.get("type") == "ERROR" and error.get("message").startswith("ERROR in 1 of 2 repetitions: gdb <crashed>")
    assert "\x1b" not in error.get("message")
    assert cases[kx, "wiped[swap]"].find("skipped").get("message") == "swap needs mkswap"
    assert "SKIP in 1 of 2 repetitions: timed out" in cases[kx, "wiped[procmem]"].find("system-out").text
    overflow = "remanence.c.sodium:overflow"
    assert cases[overflow, "past_end[kernel-core] crash"].find("failure") is None
    known = cases[overflow, "past_end[kernel-core]"]
    assert known.find("failure") is None and "known failure (in the baseline)" in known.find("system-out").text
    tree = cases["remanence.program.tree:fork", "served[procmem]"].find("failure")
    assert "of pid 4243 (tree_holder: worker 1)" in tree.text

    suites = root.findall("testsuite")
    assert [(s.get("name"), s.get("failures"), s.get("errors"), s.get("skipped")) for s in suites] == [
        ("py.kx.xchacha", "3", "0", "1"), ("sodium.overflow", "0", "0", "0"), ("secret.heap", "1", "0", "0"),
        ("secret_heap", "0", "0", "0"), ("tree.fork", "1", "0", "0")]
    assert (root.get("failures"), root.get("errors")) == ("5", "0")


# --- a real run through the command line -------------------------------------------------------------------------

DIES = """
name = "junit.dies.{mode}"
target = "program"
methods = ["procmem", "kernel-core"]
repeat = 2
timeout = 30

[program]
argv = ["{{python}}", "dies.py", "{mode}"]

[[checkpoints]]
name = "in_use"
expect = "present"
where = "intended"
why = "positive control: the key is in the program's bytearray"

[checkpoints.repeat]
collections = 2

[[checkpoints]]
name = "act"
expect = "crash"
signals = ["SIGSEGV"]
why = "the program kills itself with SIGSEGV"

[checkpoints.core]
expect = "present"
why = "the core of a crash holds the program's heap"
"""

# A SKIP: no CPU has this flag.
UNSUPPORTED = """
name = "junit.unsupported"
target = "c"
entry = "malloc.nowipe"
methods = ["procmem"]
requires_cpu = ["no_cpu_has_this_flag"]

[[checkpoints]]
name = "in_use"
expect = "present"
why = "never reached: the scenario needs a CPU flag this machine lacks"
"""


def test_a_real_runs_junit_is_valid_and_grouped(tmp_path):
    """A program that crashes as expected (repeating checkpoint, crash subject, its core), one that exits instead
    (FAIL no-crash, its core INCONCLUSIVE), one that needs a CPU flag no CPU has (SKIP), through `remanence run`."""
    for method in ("procmem", "kernel-core"):
        if reason := method_unavailable(method):
            pytest.skip(f"{method} unavailable here: {reason}")
    folder = tmp_path / "scenarios"
    folder.mkdir()
    shutil.copy(TEST_PROGRAMS / "dies.py", folder)
    for mode in ("segv", "exit"):
        (folder / f"dies.{mode}.toml").write_text(DIES.format(mode=mode))
    (folder / "unsupported.toml").write_text(UNSUPPORTED)
    out = tmp_path / "out"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        code = main(["run", str(folder), "--out", str(out), "--format", "junit", "-j", "1"])
    assert code == 1
    text = (out / "junit.xml").read_text(encoding="utf-8")
    assert schema_errors(text) == []
    root = ET.fromstring(text)
    assert_grouped_and_unique(root, {"junit.dies.segv": "program", "junit.dies.exit": "program", "junit.unsupported": "c"})
    suites = {s.get("name"): s for s in root.findall("testsuite")}
    segv = {tc.get("name"): tc for tc in suites["junit.dies.segv"].findall("testcase")}
    assert set(segv) == {"in_use [step 1/3][procmem]", "in_use [step 2/3][procmem]", "in_use [step 3/3][procmem]",
                         "act[kernel-core] crash", "act[kernel-core]"}
    assert all(tc.find("failure") is None and tc.find("skipped") is None for tc in segv.values()), text
    assert "repetition 2: PASS" in segv["act[kernel-core] crash"].find("system-out").text
    assert suites["junit.dies.segv"].get("file") == str(folder / "dies.segv.toml")
    exits = suites["junit.dies.exit"].find("testcase[@name='act[kernel-core] crash']/failure")
    assert exits.get("type") == "no-crash" and exits.get("message").startswith("FAIL in 2 of 2 repetitions")
    no_core = suites["junit.dies.exit"].find("testcase[@name='act[kernel-core]']/failure")
    assert no_core.get("type") == "INCONCLUSIVE" and "no core produced" in no_core.get("message")
    unsupported = suites["junit.unsupported"].find("testcase[@name='in_use[procmem]']/skipped")
    assert "no_cpu_has_this_flag" in unsupported.get("message")
