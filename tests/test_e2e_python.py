"""End to end on the Python target (PyNaCl): real snapshots of scenarios/python, derived values included."""
from __future__ import annotations

import pytest

from remanence.targets import PROJECT_ROOT
from suite_run import assert_every_verdict_passes, require, run_suite, verdicts

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("e2e_python")]   # one worker runs the suite once
PY_SCENARIOS = PROJECT_ROOT / "scenarios" / "python"
METHODS = ("procmem", "gcore", "gcore-all")


@pytest.fixture(scope="module")
def py_suite(tmp_path_factory):
    require("python", "gcore")
    return run_suite("python", PY_SCENARIOS, tmp_path_factory.mktemp("py-suite"))


def kinds(v: dict) -> list[str]:
    return sorted(h["region"]["kind"] for h in v["hits"] if h["full"])


def test_every_python_verdict_passes(py_suite):
    code, doc = py_suite
    assert_every_verdict_passes(code, doc, PY_SCENARIOS)
    assert all(r["target"] == "python" and r["error"] is None for r in doc["runs"])
    assert all(v["canary_seen"] for v in doc["verdicts"])


def test_every_scenario_repeats_and_agrees(py_suite):
    """repeat = 5 everywhere: freed-memory outcomes are the same in every run (no automatic GC, a
    checkpoint path that allocates nothing of a key's size class)."""
    _, doc = py_suite
    for scenario in {p.stem for p in PY_SCENARIOS.glob("*.toml")}:
        runs = [r for r in doc["runs"] if r["scenario"] == scenario]
        assert len(runs) == 5, scenario
    for a in doc["aggregates"]:
        assert a["runs"] == 5 and a["found"] in (0, 5), a


def test_derived_values_get_their_own_verdicts(py_suite):
    _, doc = py_suite
    subjects = {(v["scenario"], v["subject"]) for v in doc["verdicts"]}
    assert {s for sc, s in subjects if sc == "py.kx.xchacha"} == {
        "secret", "derived:client_secret_key", "derived:session_rx", "derived:session_tx",
        "derived:plaintext_c2s", "derived:plaintext_s2c"}
    assert {s for sc, s in subjects if sc == "py.bytearray.wiped"} == {"secret", "derived:kx_secret_key"}
    assert {s for sc, s in subjects if sc == "py.privatekey.dropped"} == {"secret", "derived:box_shared_key"}
    assert {s for sc, s in subjects if sc == "py.bytearray.bytes_copy"} == {"secret"}


def test_dropped_bytes_stay_whole_at_their_address(py_suite):
    """Python cannot wipe bytes: after del + gc.collect() the key is still at the reported address
    (a pymalloc block in an anonymous arena), for every method including the kernel core."""
    _, doc = py_suite
    for scenario in ("py.privatekey.dropped", "py.kx.xchacha"):
        for method in (*METHODS, "kernel-core"):
            for v in verdicts(doc, scenario, "dropped", method):
                hits = [h for h in v["hits"] if h["full"]]
                assert len(hits) == 1, (scenario, method, hits)
                assert hits[0]["address"] == v["intended_address"]
                assert hits[0]["in_intended_region"] and hits[0]["region"]["kind"] == "anonymous"


def test_wiped_bytearray_leaves_nothing_anywhere(py_suite):
    _, doc = py_suite
    for checkpoint in ("wiped", "dropped"):
        methods = METHODS + (("kernel-core",) if checkpoint == "dropped" else ())
        for method in methods:
            for subject in ("secret", "derived:kx_secret_key"):
                for v in verdicts(doc, "py.bytearray.wiped", checkpoint, method, subject):
                    assert v["hits"] == [], (checkpoint, method, subject)
    for method in METHODS:
        for v in verdicts(doc, "py.bytearray.wiped", "in_use", method):
            assert kinds(v) == ["anonymous"] and v["hits"][0]["in_intended_region"]


def test_bytes_copy_escapes_the_wipe(py_suite):
    _, doc = py_suite
    for method in METHODS:
        for v in verdicts(doc, "py.bytearray.bytes_copy", "in_use", method):
            assert kinds(v) == ["anonymous", "anonymous"]
        for checkpoint in ("wiped", "dropped"):
            for v in verdicts(doc, "py.bytearray.bytes_copy", checkpoint, method):
                # The PrivateKey's bytes copy, not the (wiped) bytearray; whether it counts as in the intended
                # region depends on whether the kernel merged the two pymalloc arenas' mappings.
                assert kinds(v) == ["anonymous"] and v["hits"][0]["address"] != v["intended_address"]


def test_kx_session_keys_and_plaintexts_survive_the_drop(py_suite):
    _, doc = py_suite
    for method in (*METHODS, "kernel-core"):
        for label, at_least in (("session_rx", 2), ("session_tx", 2), ("plaintext_c2s", 2), ("plaintext_s2c", 2),
                                ("client_secret_key", 1)):
            for v in verdicts(doc, "py.kx.xchacha", "dropped", method, f"derived:{label}"):
                assert kinds(v).count("anonymous") >= at_least, (method, label, kinds(v))


def test_kernel_core_shows_no_register_copy(py_suite):
    """At these checkpoints no thread's saved registers (NT_PRSTATUS/NT_FPREGSET/NT_X86_XSTATE) hold
    a key: the copies a kernel core finds are the ones in memory."""
    _, doc = py_suite
    for v in doc["verdicts"]:
        if v["method"] == "kernel-core":
            assert v["snapshot"]["not_produced"] is None, v["scenario"]
            assert all(h["region"]["kind"] != "registers" for h in v["hits"]), (v["scenario"], v["subject"])
