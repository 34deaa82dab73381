"""memguard's promises about dropped buffers and source slices, end to end through the command line on the Go target:
memguard.finalizer (v0.23.0 sets no finalizer: the GC never wipes a dropped LockedBuffer) and its twin with the
program's own cleanup; memguard.from_bytes (NewBufferFromBytes wipes the source, WipeBytes a plain copy) and its twin
that copies without wiping."""
from __future__ import annotations

import contextlib
import io
import json

import jsonschema
import pytest

from remanence.cli import main
from suite_run import SCHEMA, require, verdicts

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("e2e_memguard_promises")]   # one worker runs them once

SCENARIOS = ["memguard.finalizer", "memguard.finalizer_cleanup", "memguard.from_bytes", "memguard.from_bytes_copy"]


@pytest.fixture(scope="module")
def promises(tmp_path_factory):
    """(exit code, results document) of one repetition of each scenario (the suite runs them twice)."""
    require("go", "procmem", "gcore", "gcore-all")
    out = tmp_path_factory.mktemp("memguard-promises")
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        code = main(["run", *SCENARIOS, "--repeat", "1", "--out", str(out), "--format", "json"])
    return code, json.loads((out / "results.json").read_text())


def only(doc: dict, scenario: str, checkpoint: str, method: str) -> dict:
    [verdict] = verdicts(doc, scenario, checkpoint, method)
    return verdict


def notes(doc: dict, scenario: str) -> list[str]:
    [run] = [r for r in doc["runs"] if r["scenario"] == scenario]
    return run["notes"]


def planted(verdict: dict) -> bool:
    """A full copy where the target said it keeps the key."""
    return any(h["full"] and h["in_intended_region"] for h in verdict["hits"])


def seen_nothing(verdict: dict) -> bool:
    """No hit, and the snapshot could show ordinary memory (its canary)."""
    return verdict["hits"] == [] and verdict["canary_seen"] is True


def test_every_verdict_passes(promises):
    code, doc = promises
    failing = [(v["scenario"], v["checkpoint"], v["method"], v["outcome"], v["reason"])
               for v in doc["verdicts"] if v["outcome"] != "PASS"]
    assert failing == [] and code == 0
    jsonschema.validate(doc, SCHEMA)
    assert sorted(r["scenario"] for r in doc["runs"]) == SCENARIOS


def test_a_dropped_locked_buffer_keeps_the_key_after_the_gc_freed_it(promises):
    _, doc = promises
    assert planted(only(doc, "memguard.finalizer", "in_use", "procmem"))
    for method in ("procmem", "gcore-all"):
        assert planted(only(doc, "memguard.finalizer", "collected", method)), method
    # A debugger's default dump leaves the forgotten MADV_DONTDUMP buffer out: it does not show the leak.
    assert seen_nothing(only(doc, "memguard.finalizer", "collected", "gcore"))
    [note] = notes(doc, "memguard.finalizer")
    assert note.startswith("gc_cycles=") and note.endswith(" data_mapped=true")


def test_a_cleanup_of_the_programs_own_destroys_the_dropped_buffer(promises):
    _, doc = promises
    assert planted(only(doc, "memguard.finalizer_cleanup", "in_use", "procmem"))
    for method in ("procmem", "gcore", "gcore-all"):
        assert seen_nothing(only(doc, "memguard.finalizer_cleanup", "collected", method)), method
    [note] = notes(doc, "memguard.finalizer_cleanup")
    assert note.endswith(" data_mapped=false")


def test_new_buffer_from_bytes_and_wipe_bytes_leave_no_plain_copy(promises):
    _, doc = promises
    # gcore dumps the Go heap and leaves out the LockedBuffer: it sees the plain copies before, and none after.
    assert planted(only(doc, "memguard.from_bytes", "read", "gcore"))
    assert seen_nothing(only(doc, "memguard.from_bytes", "moved", "gcore"))
    assert planted(only(doc, "memguard.from_bytes", "plain_copy", "gcore"))
    assert seen_nothing(only(doc, "memguard.from_bytes", "wiped", "gcore"))
    # What procmem still sees after WipeBytes is the LockedBuffer, between its guard pages.
    wiped = only(doc, "memguard.from_bytes", "wiped", "procmem")
    assert wiped["hits"] and all(not h["in_intended_region"] and h["guarded"] for h in wiped["hits"])
    for method in ("procmem", "gcore", "gcore-all"):
        assert seen_nothing(only(doc, "memguard.from_bytes", "destroyed", method)), method
    assert notes(doc, "memguard.from_bytes") == ["src_wiped=true"]


def test_a_plain_copy_into_a_locked_buffer_leaves_the_source_behind(promises):
    _, doc = promises
    copied = only(doc, "memguard.from_bytes_copy", "copied", "gcore")
    assert copied["hits"] and not any(h["in_intended_region"] for h in copied["hits"])
    for method in ("procmem", "gcore", "gcore-all"):
        assert planted(only(doc, "memguard.from_bytes_copy", "destroyed", method)), method
