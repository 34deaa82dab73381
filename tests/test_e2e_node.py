"""End to end on the Node.js target (sodium-native), real snapshots: every verdict of scenarios/node passes
and the findings the scenario files rest on are there."""
from __future__ import annotations

import pytest

from remanence.targets import PROJECT_ROOT
from suite_run import assert_every_verdict_passes, run_suite, verdicts

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("e2e_node")]   # one worker runs the suite once
NODE_SCENARIOS = PROJECT_ROOT / "scenarios" / "node"


@pytest.fixture(scope="module")
def node_suite(tmp_path_factory):
    return run_suite("node", NODE_SCENARIOS, tmp_path_factory.mktemp("node-suite"))


def test_every_node_verdict_passes(node_suite):
    code, doc = node_suite
    assert_every_verdict_passes(code, doc, NODE_SCENARIOS)


def test_sodium_page_is_left_out_of_cores_but_read_by_procmem(node_suite):
    _, doc = node_suite
    for scenario, checkpoint in (("node.sodium.live", "in_use"), ("node.sodium.noaccess", "noaccess")):
        for method in ("procmem", "gcore-all"):
            for v in verdicts(doc, scenario, checkpoint, method):
                assert any(h["full"] and h["in_intended_region"] for h in v["hits"]), (scenario, method)
        for method in ("gcore", "kernel-core"):
            for v in verdicts(doc, scenario, checkpoint, method):
                assert v["hits"] == [] and v["canary_seen"], (scenario, method)
                assert v["snapshot"]["not_produced"] is None


def test_sodium_free_wipes_only_through_the_finalizer(node_suite):
    _, doc = node_suite
    for scenario, still, gone in (("node.sodium.freed", "freed", "after_gc"),
                                  ("node.sodium.dropped", "collected", "finalized")):
        for v in verdicts(doc, scenario, still, "procmem"):
            assert any(h["full"] and h["in_intended_region"] for h in v["hits"]), scenario
        for method in ("procmem", "gcore", "gcore-all"):
            assert all(v["hits"] == [] for v in verdicts(doc, scenario, gone, method)), (scenario, method)
    for run in (r for r in doc["runs"] if r["scenario"] == "node.sodium.freed"):
        assert any("still_mapped=true" in n for n in run["notes"]), run["notes"]


def test_plain_buffer_is_a_positive_control_and_fill_wipes_it(node_suite):
    _, doc = node_suite
    for method in ("procmem", "gcore", "gcore-all"):
        for v in verdicts(doc, "node.buffer.alloc", "in_use", method):
            assert any(h["full"] and h["in_intended_region"] and h["region"]["kind"] in ("heap", "anonymous")
                       for h in v["hits"])
    for method in ("procmem", "gcore", "gcore-all", "kernel-core"):
        assert all(v["hits"] == [] for v in verdicts(doc, "node.buffer.alloc", "wiped", method))
        # a dropped Buffer's backing store is freed, not wiped, but free() always overwrites its head: never whole there
        for v in verdicts(doc, "node.buffer.dropped", "after_gc", method):
            assert not any(h["in_intended_region"] and h["full"] for h in v["hits"]), method


def test_string_copy_outlives_the_wiped_buffer(node_suite):
    _, doc = node_suite
    encodings = {"node.string.hex": "hex-lower", "node.string.base64": "base64", "node.string.latin1": "raw"}
    for scenario, encoding in encodings.items():
        for method in ("procmem", "gcore", "gcore-all"):
            for v in verdicts(doc, scenario, "wiped", method):
                hits = [h for h in v["hits"] if h["full"] and h["encoding"] == encoding]
                assert hits and all(h["region"]["kind"] == "anonymous" and not h["in_intended_region"]
                                    for h in hits), (scenario, method)
        # at `converted` even the gcore that leaves the sodium page out carries the string
        for v in verdicts(doc, scenario, "converted", "gcore"):
            assert any(h["full"] and h["encoding"] == encoding for h in v["hits"]), scenario
