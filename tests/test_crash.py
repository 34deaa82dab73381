"""Expected crashes (`expect = "crash"`): the scenario file's rules, the verdict on how the target died (an accepted
signal PASSes; an exit, another signal or a target still running FAIL), the core the crash leaves judged with its own
expectation (the program's own core limit of 0 is a finding), and the built-in crash scenarios with their twins."""
from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import pytest

from remanence.cli import main
from remanence.model import Expect
from remanence.scenario import ScenarioError, load_scenario
from remanence.snapshot import CAP_SYS_RESOURCE, has_capability, method_unavailable
from remanence.targets import PROJECT_ROOT
from suite_run import TEST_PROGRAMS, read_results, assert_every_verdict_passes, require, run_suite, verdicts

CRASH = """
name = "demo.crash"
target = "c"
methods = ["procmem", "kernel-core"]

[[checkpoints]]
name = "in_use"
expect = "present"
why = "the key is live"

[[checkpoints]]
name = "past_end"
expect = "crash"
signals = ["SIGSEGV", "SIGBUS"]
why = "a guard page"

[checkpoints.core]
expect = "absent"
why = "MADV_DONTDUMP"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "demo.toml"
    path.write_text(text)
    return path


def test_a_crash_checkpoint_takes_the_core_with_its_own_expectation(tmp_path):
    spec = load_scenario(write(tmp_path, CRASH)).checkpoint("past_end")
    assert spec.expects_crash and spec.signals == ("SIGSEGV", "SIGBUS") and spec.signal_numbers == (11, 7)
    assert spec.methods == ("kernel-core",)
    assert spec.for_method("kernel-core").expect is Expect.ABSENT and spec.for_method("kernel-core").why == "MADV_DONTDUMP"


@pytest.mark.parametrize("old, new, key, words", [
    ('["SIGSEGV", "SIGBUS"]', '["SIGSEGV", "SIGSEGFAULT"]', "checkpoints[1].signals[1]", "'SIGSEGFAULT' is not a signal name"),
    ('signals = ["SIGSEGV", "SIGBUS"]\n', "", "checkpoints[1].signals", "required with expect = \"crash\""),
    ('[checkpoints.core]\nexpect = "absent"\nwhy = "MADV_DONTDUMP"\n', "", "checkpoints[1].core", "required key is missing"),
    ('methods = ["procmem", "kernel-core"]', 'methods = ["procmem"]', "checkpoints[1].expect", "needs 'kernel-core'"),
    ('why = "a guard page"', 'why = "a guard page"\nmethods = ["procmem", "kernel-core"]', "checkpoints[1].methods",
     'exactly ["kernel-core"]'),
    ('expect = "present"\nwhy = "the key is live"', 'expect = "crash"\nwhy = "early"\nsignals = ["SIGSEGV"]\n'
     '[checkpoints.core]\nexpect = "absent"\nwhy = "x"', "checkpoints[0].expect", "only the last checkpoint"),
    ('expect = "present"\nwhy = "the key is live"', 'expect = "present"\nwhy = "the key is live"\nsignals = ["SIGSEGV"]',
     "checkpoints[0].signals", 'only with expect = "crash"'),
    ('[checkpoints.core]\nexpect = "absent"', '[checkpoints.core]\nexpect = "crash"', "checkpoints[1].core.expect",
     "not one of"),
])
def test_a_broken_crash_checkpoint_is_one_line_naming_file_and_key(tmp_path, old, new, key, words):
    assert old in CRASH
    path = write(tmp_path, CRASH.replace(old, new))
    with pytest.raises(ScenarioError) as e:
        load_scenario(path)
    message = str(e.value)
    assert message.startswith(f"{path}: {key}: ") and words in message and "\n" not in message


# --- the verdict on the death, with real programs -----------------------------------------------------------

DIES = """
name = "dies.{mode}"
target = "program"
methods = ["procmem", "kernel-core"]
timeout = {timeout}

[program]
argv = ["{{python}}", "{program}", "{mode}"]

[[checkpoints]]
name = "in_use"
expect = "present"
where = "intended"
why = "positive control: the key is in the program's bytearray"

[[checkpoints]]
name = "act"
expect = "crash"
signals = ["SIGSEGV"]
why = "the program kills itself with SIGSEGV"

[checkpoints.core]
expect = "{core}"
why = "the core of a crash holds the program's heap"
"""


@pytest.fixture(scope="module")
def deaths(tmp_path_factory):
    """Every way dies.py can end after `act`, run once through the command line: (exit code, results document)."""
    for method in ("procmem", "kernel-core"):
        if reason := method_unavailable(method):
            pytest.skip(f"{method} unavailable here: {reason}")
    folder = tmp_path_factory.mktemp("deaths")
    shutil.copy(TEST_PROGRAMS / "dies.py", folder)
    for mode, core, timeout in (("segv", "present", 30), ("nocore", "absent", 30), ("term", "present", 30),
                                ("exit", "present", 30), ("hang", "present", 3)):
        (folder / f"{mode}.toml").write_text(DIES.format(mode=mode, core=core, timeout=timeout, program="dies.py"))
    out = folder / "out"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        code = main(["run", "--scenarios", str(folder), "--out", str(out), "--format", "json,sarif,junit,md,html"])
    doc = read_results(out / "results.json")
    return code, doc, out


def death(doc: dict, mode: str) -> dict:
    [verdict] = verdicts(doc, f"dies.{mode}", "act", "kernel-core", "crash")
    assert verdict["expect"] == "crash"
    return verdict


def core(doc: dict, mode: str) -> dict:
    [verdict] = verdicts(doc, f"dies.{mode}", "act", "kernel-core")
    return verdict


def test_death_by_an_accepted_signal_passes_and_its_core_is_judged(deaths):
    _, doc, _ = deaths
    v = death(doc, "segv")
    assert (v["outcome"], v["kind"]) == ("PASS", "crashed") and "killed by SIGSEGV (core dumped)" in v["reason"]
    c = core(doc, "segv")
    assert (c["outcome"], c["kind"]) == ("PASS", "found") and any(h["in_intended_region"] for h in c["hits"])


def test_a_program_that_set_its_own_core_limit_to_0_leaves_no_core_by_its_own_policy(deaths):
    _, doc, _ = deaths
    assert death(doc, "nocore")["outcome"] == "PASS"
    c = core(doc, "nocore")
    assert (c["outcome"], c["kind"]) == ("PASS", "no-image-by-policy")
    assert "no core produced: the program set its own core limit to 0" in c["reason"]


@pytest.mark.parametrize("mode, words", [
    ("term", "killed by SIGTERM, not by SIGSEGV"),
    ("exit", "exit status 0 instead of crashing (expected SIGSEGV)"),
    ("hang", "still running 3 s after continue (expected SIGSEGV): killed"),
])
def test_an_exit_another_signal_or_no_end_fails(deaths, mode, words):
    code, doc, _ = deaths
    v = death(doc, mode)
    assert (v["outcome"], v["kind"]) == ("FAIL", "no-crash") and words in v["reason"], v["reason"]
    assert code == 1
    if mode == "exit":     # no crash: the core proves nothing either way
        assert core(doc, mode)["outcome"] == "INCONCLUSIVE" and "did not crash" in core(doc, mode)["reason"]


def test_every_report_names_a_missing_crash(deaths):
    _, _, out = deaths
    sarif = json.loads((out / "results.sarif").read_text())
    rules = sarif["runs"][0]["tool"]["driver"]["rules"]
    assert {rules[r["ruleIndex"]]["name"] for r in sarif["runs"][0]["results"]} >= {"no-crash"}
    assert 'type="no-crash"' in (out / "junit.xml").read_text()
    html = (out / "report.html").read_text()
    assert "expect a crash" in html and "crash: how the target died" in html
    assert "| crash |" in (out / "summary.md").read_text()


def test_a_harness_provoked_core_notes_the_programs_own_limit_of_0(tmp_path):
    """kernel-core at an ordinary checkpoint raises the hard limit where the harness may (it is a snapshot method);
    either way its notes say the program had set its own limit to 0."""
    for method in ("procmem", "kernel-core"):
        if reason := method_unavailable(method):
            pytest.skip(f"{method} unavailable here: {reason}")
    shutil.copy(TEST_PROGRAMS / "dies.py", tmp_path)
    text = DIES.format(mode="nocore_wait", core="present", timeout=30, program="dies.py")
    text = text[:text.index('expect = "crash"')] + 'expect = "present"\nwhy = "the core holds the heap"\n'
    (tmp_path / "s.toml").write_text(text)
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main(["run", str(tmp_path / "s.toml"), "--out", str(tmp_path / "out"), "--format", "json"])
    raised = has_capability(CAP_SYS_RESOURCE)
    assert code == (0 if raised else 1), err.getvalue()
    doc = read_results(tmp_path / "out" / "results.json")
    [v] = verdicts(doc, "dies.nocore_wait", "act", "kernel-core")
    said = "(soft and hard): raised by the harness" if raised else ", and it could not be raised"
    [limits] = [n for n in v["snapshot"]["notes"] if n.startswith("RLIMIT_CORE")]
    assert f"the program set its own core limit to 0{said}" in limits and limits.count("own core limit") == 1, limits
    assert (v["outcome"], v["kind"]) == (("PASS", "found") if raised else ("FAIL", "no-image-by-policy"))


# --- the built-in crash scenarios and their twins -----------------------------------------------------------

C_CRASHES = ("sodium.overflow", "sodium.underflow", "sodium.readonly_write", "sodium.noaccess_read")


def test_libsodium_crashes_kill_with_no_key_in_the_core_and_their_twins_go_on(tmp_path):
    folder = tmp_path / "scenarios"
    folder.mkdir()
    for path in (PROJECT_ROOT / "scenarios" / "c").glob("*.toml"):
        if path.stem.split(".")[0] == "sodium" and path.stem.rsplit(".", 1)[0] in C_CRASHES or path.stem in C_CRASHES:
            shutil.copy(path, folder)
    assert len(list(folder.iterdir())) == 8
    require("c", "procmem", "kernel-core")
    code, doc = run_suite("c", folder, tmp_path / "out")
    assert_every_verdict_passes(code, doc, folder)
    for name in C_CRASHES:
        for v in verdicts(doc, name, doc_checkpoint(doc, name), "kernel-core"):
            assert v["kind"] == "absent" and "MADV_DONTDUMP" in v["reason"]


def doc_checkpoint(doc: dict, scenario: str) -> str:
    return next(v["checkpoint"] for v in doc["verdicts"] if v["scenario"] == scenario and v["subject"] == "crash")


@pytest.mark.parametrize("language, scenario, signal, core_kind, core_words", [
    ("go", "memguard.frozen_write", "SIGABRT", "no-image-by-policy", "the program set its own core limit to 0"),
    ("node", "node.sodium.readonly_write", "SIGSEGV", "absent", "MADV_DONTDUMP"),
])
def test_go_and_node_crashes_die_as_measured(tmp_path, language, scenario, signal, core_kind, core_words):
    """Go's runtime turns the fault into a fatal error (SIGABRT under GOTRACEBACK=crash) and memguard forbids the
    core; Node's SIGSEGV handler hands a fault outside WebAssembly back to the default action."""
    require(language, "procmem", "kernel-core")
    folder = tmp_path / "scenarios"
    folder.mkdir()
    shutil.copy(PROJECT_ROOT / "scenarios" / language / f"{scenario}.toml", folder)
    code, doc = run_suite(language, folder, tmp_path / "out")
    assert_every_verdict_passes(code, doc, folder)
    checkpoint = doc_checkpoint(doc, scenario)
    assert all(f"killed by {signal}" in v["reason"] for v in verdicts(doc, scenario, checkpoint, "kernel-core", "crash"))
    for v in verdicts(doc, scenario, checkpoint, "kernel-core"):
        assert v["kind"] == core_kind and core_words in v["reason"]


def test_a_crash_where_none_is_expected_says_how_the_target_died(tmp_path):
    """A checkpoint after an unexpected crash is never reached, and its verdict names the signal."""
    require("c", "procmem")
    (tmp_path / "x.toml").write_text('''
name = "x.unexpected"
target = "c"
entry = "sodium.overflow"
methods = ["procmem"]

[[checkpoints]]
name = "in_use"
expect = "present"
why = "the key is live"

[[checkpoints]]
name = "past_end"
expect = "present"
why = "the key is live"

[[checkpoints]]
name = "after"
expect = "present"
why = "a twin would go on"
''')
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        code = main(["run", str(tmp_path / "x.toml"), "--out", str(tmp_path / "out"), "--format", "json"])
    doc = read_results(tmp_path / "out" / "results.json")
    [v] = verdicts(doc, "x.unexpected", "after", "procmem")
    assert code == 3 and v["outcome"] == "ERROR" and "checkpoint never reached: target ended (killed by SIGSEGV)" in v["reason"]
