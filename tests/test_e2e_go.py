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
        assert core["snapshot"]["not_produced"].startswith("no core produced: the program set its own core limit to 0")


# --- memguard's dropped buffers and source slices --------------------------------------------------------------------

def planted(verdict: dict) -> bool:
    """A full copy where the target said it keeps the key."""
    return any(h["full"] and h["in_intended_region"] for h in verdict["hits"])


def seen_nothing(verdict: dict) -> bool:
    """No hit, and the snapshot could show ordinary memory (its canary)."""
    return verdict["hits"] == [] and verdict["canary_seen"] is True


def each(doc: dict, scenario: str, checkpoint: str, method: str, holds) -> bool:
    """`holds` for the verdict of every repetition."""
    return all(holds(v) for v in verdicts(doc, scenario, checkpoint, method))


def run_notes(doc: dict, scenario: str) -> list[list[str]]:
    return [r["notes"] for r in doc["runs"] if r["scenario"] == scenario]


def test_a_dropped_locked_buffer_keeps_the_key_after_the_gc_freed_it(go_suite):
    """memguard v0.23.0 sets no finalizer: the GC never wipes a LockedBuffer dropped without Destroy."""
    _, doc = go_suite
    assert each(doc, "memguard.finalizer", "in_use", "procmem", planted)
    for method in ("procmem", "gcore-all"):
        assert each(doc, "memguard.finalizer", "collected", method, planted), method
    # A debugger's default dump leaves the forgotten MADV_DONTDUMP buffer out: it does not show the leak.
    assert each(doc, "memguard.finalizer", "collected", "gcore", seen_nothing)
    for [note] in run_notes(doc, "memguard.finalizer"):
        assert note.startswith("gc_cycles=") and note.endswith(" data_mapped=true")


def test_a_cleanup_of_the_programs_own_destroys_the_dropped_buffer(go_suite):
    _, doc = go_suite
    assert each(doc, "memguard.finalizer_cleanup", "in_use", "procmem", planted)
    for method in ("procmem", "gcore", "gcore-all"):
        assert each(doc, "memguard.finalizer_cleanup", "collected", method, seen_nothing), method
    for [note] in run_notes(doc, "memguard.finalizer_cleanup"):
        assert note.endswith(" data_mapped=false")


def test_new_buffer_from_bytes_and_wipe_bytes_leave_no_plain_copy(go_suite):
    _, doc = go_suite
    # gcore dumps the Go heap and leaves out the LockedBuffer: it sees the plain copies before, and none after.
    assert each(doc, "memguard.from_bytes", "read", "gcore", planted)
    assert each(doc, "memguard.from_bytes", "moved", "gcore", seen_nothing)
    assert each(doc, "memguard.from_bytes", "plain_copy", "gcore", planted)
    assert each(doc, "memguard.from_bytes", "wiped", "gcore", seen_nothing)
    # What procmem still sees after WipeBytes is the LockedBuffer, between its guard pages.
    assert each(doc, "memguard.from_bytes", "wiped", "procmem",
                lambda v: v["hits"] and all(not h["in_intended_region"] and h["guarded"] for h in v["hits"]))
    for method in ("procmem", "gcore", "gcore-all"):
        assert each(doc, "memguard.from_bytes", "destroyed", method, seen_nothing), method
    assert all(notes == ["src_wiped=true"] for notes in run_notes(doc, "memguard.from_bytes"))


def test_a_plain_copy_into_a_locked_buffer_leaves_the_source_behind(go_suite):
    _, doc = go_suite
    assert each(doc, "memguard.from_bytes_copy", "copied", "gcore",
                lambda v: v["hits"] and not any(h["in_intended_region"] for h in v["hits"]))
    for method in ("procmem", "gcore", "gcore-all"):
        assert each(doc, "memguard.from_bytes_copy", "destroyed", method, planted), method
