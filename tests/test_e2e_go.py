"""End to end on the Go target: runtime/secret (GOEXPERIMENT=runtimesecret) and memguard, real snapshots."""
from __future__ import annotations

import pytest

from remanence.snapshot import CAP_SYS_RESOURCE, has_capability
from remanence.targets import PROJECT_ROOT
from suite_run import assert_every_verdict_passes, run_suite, verdicts

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("e2e_go")]   # one worker runs the suite once
GO_SCENARIOS = PROJECT_ROOT / "scenarios" / "go"


@pytest.fixture(scope="module")
def go_suite(tmp_path_factory):
    return run_suite("go", GO_SCENARIOS, tmp_path_factory.mktemp("go-suite"))


def test_every_go_verdict_passes(go_suite):
    code, doc = go_suite
    assert_every_verdict_passes(code, doc, GO_SCENARIOS)


def test_gc_dependent_scenarios_repeat_and_agree(go_suite):
    _, doc = go_suite
    heap = [a for a in doc["aggregates"] if (a["scenario"], a["checkpoint"]) == ("secret.heap", "after_gc")]
    assert heap and all(a["runs"] == 5 and a["found"] == 0 and a["outcomes"] == {"PASS": 5} for a in heap)
    nodo = [a for a in doc["aggregates"] if (a["scenario"], a["checkpoint"]) == ("secret.heap_nodo", "after_gc")]
    assert nodo and all(a["runs"] == 5 and a["found"] == 5 for a in nodo)


def test_documented_limitations_leak_where_they_should(go_suite):
    _, doc = go_suite
    for scenario, checkpoint in (("secret.global", "after"), ("secret.escape", "after"), ("secret.none", "after"),
                                 ("secret.goroutine", "exited")):
        for v in verdicts(doc, scenario, checkpoint, "procmem"):
            assert any(h["full"] and h["in_intended_region"] for h in v["hits"]), (scenario, checkpoint)
    for v in verdicts(doc, "memguard.string_copy", "destroyed", "procmem"):
        assert any(h["region"]["kind"] == "anonymous" for h in v["hits"])
    for scenario in ("secret.return", "secret.panic", "secret.stack_growth", "secret.registers"):
        for method in ("procmem", "gcore", "gcore-all"):
            assert all(v["hits"] == [] for v in verdicts(doc, scenario, "after", method)), (scenario, method)


def test_registers_twin_shows_the_key_in_a_threads_saved_registers(go_suite):
    _, doc = go_suite
    for v in verdicts(doc, "secret.registers_nodo", "after", "kernel-core"):
        sets = {h["region"]["register_set"] for h in v["hits"] if h["region"]["kind"] == "registers"}
        assert sets & {"NT_FPREGSET", "NT_X86_XSTATE"}
        assert all(h["region"]["thread"] for h in v["hits"] if h["region"]["kind"] == "registers")
    for v in verdicts(doc, "secret.registers", "after", "kernel-core"):
        assert v["hits"] == [] and v["snapshot"]["not_produced"] is None


def test_memguard_end_of_life(go_suite):
    _, doc = go_suite
    for scenario in ("memguard.safe_exit", "memguard.interrupt"):
        [at_exit] = verdicts(doc, scenario, "exit", "exit")
        assert at_exit["hits"] == [] and at_exit["canary_seen"] is True
    [core] = verdicts(doc, "memguard.locked_live", "in_use", "kernel-core")
    if not has_capability(CAP_SYS_RESOURCE):  # without CAP_SYS_RESOURCE memguard's hard core limit 0 stands
        assert core["snapshot"]["not_produced"].startswith("no core produced: RLIMIT_CORE hard limit is 0")
