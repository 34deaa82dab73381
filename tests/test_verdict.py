from pathlib import Path

import pytest

from remanence.model import Expect, Gap, GapKind, Hit, NoImageCause, Outcome, Region, RegionKind, Snapshot
from remanence.results import Results, RunRecord
from remanence.scenario import MethodExpectation, SecretSpec
from remanence.verdict import Kind, ProcessView, Verdict, judge, judge_processes, outcome_kind

GUARD_BELOW = Region(0x7000_0000 - 4096, 4096, "---p", RegionKind.ANONYMOUS, "", 0)
GUARDED = Region(0x7000_0000, 4096, "rw-p", RegionKind.ANONYMOUS, "", 0, locked=True, dont_dump=True)
GUARD_ABOVE = Region(0x7000_1000, 4096, "---p", RegionKind.ANONYMOUS, "", 0)
HEAP = Region(0x5000_0000, 0x21000, "rw-p", RegionKind.HEAP, "[heap]", 4096, locked=False, dont_dump=False)
SNAP = Snapshot("procmem", Path("/nonexistent"), [HEAP, GUARD_BELOW, GUARDED, GUARD_ABOVE])


def hit(region: Region, offset: int = 16, fragment=None) -> Hit:
    return Hit("secret", "raw", region.start + offset, region.file_offset + offset, 32, region, fragment)


def decide(expect, hits=(), canary=True, control=True, snapshot=SNAP, where="any", flags=None):
    return judge(expectation=MethodExpectation(expect, "because", where), snapshot=snapshot, secret_hits=list(hits),
                 canary_seen=canary, intended_address=GUARDED.start + 16, control_established=control,
                 control_note="planted copy seen by procmem at in_use", intended_flags=flags or {})


def test_absent_passes_only_with_canary_control_and_full_coverage():
    outcome, reason, *_ = decide(Expect.ABSENT)
    assert outcome == Outcome.PASS and "canary seen" in reason and "procmem at in_use" in reason
    assert decide(Expect.ABSENT, canary=False)[0] == Outcome.INCONCLUSIVE
    assert decide(Expect.ABSENT, control=False)[0] == Outcome.INCONCLUSIVE
    gappy = Snapshot("procmem", Path("/x"), [HEAP], [Gap(0x6000_0000, 8192, "", GapKind.UNREADABLE, "EIO")])
    outcome, reason, *_ = decide(Expect.ABSENT, snapshot=gappy)
    assert outcome == Outcome.INCONCLUSIVE and "8192 bytes" in reason


def test_kernel_and_excluded_gaps_do_not_block_absent_but_are_explained():
    dumped = Snapshot("gcore", Path("/x"), [HEAP], [
        Gap(GUARDED.start, 4096, "", GapKind.EXCLUDED, "MADV_DONTDUMP"),
        Gap(0xffff_0000, 8192, "[vvar]", GapKind.KERNEL, "kernel-owned")])
    outcome, reason, *_ = decide(Expect.ABSENT, snapshot=dumped)
    assert outcome == Outcome.PASS and "left out of the snapshot (MADV_DONTDUMP)" in reason


def test_absent_fails_on_any_copy_even_a_fragment():
    outcome, reason, findings, _ = decide(Expect.ABSENT, [hit(HEAP, fragment=(16, 32))])
    assert outcome == Outcome.FAIL and "fragment [16:32)" in reason and "[heap]" in reason
    assert findings[0].in_intended_region is False and findings[0].guarded is False


def test_present_where_intended():
    outcome, reason, findings, _ = decide(Expect.PRESENT, [hit(GUARDED)], where="intended")
    assert outcome == Outcome.PASS and findings[0].in_intended_region and findings[0].guarded
    assert "[intended region, guarded]" in reason
    half_guarded = Snapshot("procmem", Path("/x"), [HEAP, GUARD_BELOW, GUARDED])
    assert decide(Expect.PRESENT, [hit(GUARDED)], snapshot=half_guarded)[2][0].guarded is False
    outcome, reason, *_ = decide(Expect.PRESENT, [hit(HEAP)], where="intended")
    assert outcome == Outcome.FAIL and "not where expected" in reason
    assert decide(Expect.PRESENT, [hit(HEAP)], where="heap")[0] == Outcome.PASS


def test_present_missing_is_fail_unless_the_snapshot_was_blind():
    assert decide(Expect.PRESENT)[0] == Outcome.FAIL
    assert decide(Expect.PRESENT, canary=False)[0] == Outcome.INCONCLUSIVE


def test_intended_region_flags_are_checked():
    outcome, reason, *_ = decide(Expect.PRESENT, [hit(GUARDED)], flags={"locked": False})
    assert outcome == Outcome.FAIL and "locked=True" in reason
    assert decide(Expect.PRESENT, [hit(GUARDED)], flags={"locked": True, "dont_dump": True})[0] == Outcome.PASS


def test_observe_reports_without_judging():
    outcome, reason, *_ = decide(Expect.OBSERVE, [hit(HEAP)])
    assert outcome == Outcome.PASS and reason.startswith("observed 1 hit")


def _results(*outcomes, interrupted=False) -> Results:
    from remanence.scenario import Scenario
    scenario = Scenario("x", "", "c", "x", ("procmem",), 1, 10, SecretSpec(), (), Path("x.toml"))
    run = RunRecord(scenario, 1, SecretSpec())
    run.verdicts = [Verdict("x", 1, "c", "procmem", Expect.ABSENT, "", o, "") for o in outcomes]
    return Results([run], "now", interrupted=interrupted)


@pytest.mark.parametrize("outcomes, code", [
    ((Outcome.PASS,), 0),
    ((Outcome.PASS, Outcome.SKIP), 3),        # a SKIP is missing evidence, not a green gate
    ((Outcome.PASS, Outcome.FAIL, Outcome.ERROR), 1),
    ((Outcome.PASS, Outcome.INCONCLUSIVE), 3),
    ((Outcome.ERROR,), 3),
])
def test_exit_codes(outcomes, code):
    assert _results(*outcomes).exit_code() == code


def test_skips_pass_the_gate_only_when_allowed():
    assert _results(Outcome.PASS, Outcome.SKIP).exit_code(allow_skip=True) == 0
    assert _results(Outcome.ERROR, Outcome.SKIP).exit_code(allow_skip=True) == 3


def test_interrupted_run_exits_130_unless_something_failed():
    assert _results(Outcome.PASS, interrupted=True).exit_code() == 130
    assert _results(Outcome.FAIL, interrupted=True).exit_code() == 1


def test_no_image_by_the_programs_policy_is_a_finding_not_an_error():
    none = Snapshot("kernel-core", Path("/x"), [], not_produced="no core produced: RLIMIT_CORE hard limit is 0",
                    not_produced_cause=NoImageCause.POLICY)
    outcome, reason, findings, _ = decide(Expect.ABSENT, snapshot=none, canary=False)
    assert outcome == Outcome.PASS and reason.startswith("no core produced") and findings == []
    assert "the program's own policy" in reason
    assert decide(Expect.ABSENT, snapshot=none, canary=False, control=False)[0] == Outcome.INCONCLUSIVE
    assert decide(Expect.PRESENT, snapshot=none, canary=False)[0] == Outcome.FAIL


@pytest.mark.parametrize("cause", [NoImageCause.BLOCKED, NoImageCause.UNKNOWN, None])
def test_no_image_the_program_did_not_choose_proves_nothing(cause):
    none = Snapshot("kernel-core", Path("/x"), [], not_produced="no core produced: /w is on a read-only mount",
                    not_produced_cause=cause)
    for expect in Expect:
        outcome, reason, *_ = decide(expect, snapshot=none, canary=False)
        assert outcome == Outcome.INCONCLUSIVE and "read-only mount" in reason and "proves nothing" in reason


# --- the kind of each outcome: what reporters use instead of the reason's words ------------------------------------

POLICY = Snapshot("kernel-core", Path("/x"), [], not_produced="no core produced: RLIMIT_CORE hard limit is 0",
                  not_produced_cause=NoImageCause.POLICY)
BLOCKED = Snapshot("kernel-core", Path("/x"), [], not_produced="no core produced: read-only mount",
                   not_produced_cause=NoImageCause.BLOCKED)
GAPPY = Snapshot("procmem", Path("/x"), [HEAP], [Gap(0x6000_0000, 8192, "", GapKind.UNREADABLE, "EIO")])

JUDGED_KINDS = [
    (Kind.LEAK, Outcome.FAIL, dict(expect=Expect.ABSENT, hits=[hit(HEAP)])),
    (Kind.MISPLACED, Outcome.FAIL, dict(expect=Expect.PRESENT, hits=[hit(HEAP)], where="intended")),
    (Kind.REGION_FLAGS, Outcome.FAIL, dict(expect=Expect.ABSENT, flags={"locked": False})),
    (Kind.NOT_FOUND, Outcome.FAIL, dict(expect=Expect.PRESENT)),
    (Kind.NO_IMAGE_BY_POLICY, Outcome.FAIL, dict(expect=Expect.PRESENT, snapshot=POLICY, canary=False)),
    (Kind.NO_IMAGE_BY_POLICY, Outcome.PASS, dict(expect=Expect.ABSENT, snapshot=POLICY, canary=False)),
    (Kind.FOUND, Outcome.PASS, dict(expect=Expect.PRESENT, hits=[hit(GUARDED)], where="intended")),
    (Kind.ABSENT, Outcome.PASS, dict(expect=Expect.ABSENT)),
    (Kind.OBSERVED, Outcome.PASS, dict(expect=Expect.OBSERVE, hits=[hit(HEAP)])),
    (Kind.NO_IMAGE, Outcome.INCONCLUSIVE, dict(expect=Expect.ABSENT, snapshot=BLOCKED, canary=False)),
    (Kind.NO_CANARY, Outcome.INCONCLUSIVE, dict(expect=Expect.ABSENT, canary=False)),
    (Kind.NO_CANARY, Outcome.INCONCLUSIVE, dict(expect=Expect.OBSERVE, canary=False)),
    (Kind.NO_CONTROL, Outcome.INCONCLUSIVE, dict(expect=Expect.ABSENT, control=False)),
    (Kind.NO_CONTROL, Outcome.INCONCLUSIVE, dict(expect=Expect.ABSENT, snapshot=POLICY, canary=False, control=False)),
    (Kind.UNREADABLE, Outcome.INCONCLUSIVE, dict(expect=Expect.ABSENT, snapshot=GAPPY)),
]


@pytest.mark.parametrize("kind, outcome, case", JUDGED_KINDS, ids=lambda x: getattr(x, "value", None))
def test_the_judge_names_the_kind_of_its_outcome(kind, outcome, case):
    case = dict(case)
    judged = decide(case.pop("expect"), case.pop("hits", ()), **case)
    assert (judged.outcome, judged.kind) == (outcome, kind), judged.reason


def view(hits=(), canary=True, pid=1) -> ProcessView:
    return ProcessView(Snapshot("procmem", Path("/x"), [HEAP, GUARD_BELOW, GUARDED, GUARD_ABOVE], pid=pid, command="p"),
                       list(hits), canary)


@pytest.mark.parametrize("expect, views, flags, outcome, kind", [
    (Expect.ABSENT, [view(), view(pid=2)], {}, Outcome.PASS, Kind.ABSENT),
    (Expect.ABSENT, [view(), view([hit(HEAP)], pid=2)], {}, Outcome.FAIL, Kind.LEAK),
    (Expect.ABSENT, [view(), view(canary=False, pid=2)], {}, Outcome.INCONCLUSIVE, Kind.NO_CANARY),
    (Expect.PRESENT, [view(), view([hit(HEAP)], pid=2)], {}, Outcome.PASS, Kind.FOUND),
    (Expect.PRESENT, [view(), view(pid=2)], {}, Outcome.FAIL, Kind.NOT_FOUND),
    (Expect.OBSERVE, [view(), view([hit(HEAP)], pid=2)], {}, Outcome.PASS, Kind.OBSERVED),
    (Expect.ABSENT, [view([hit(HEAP)]), view(pid=2)], {"dont_dump": False}, Outcome.FAIL, Kind.REGION_FLAGS),
    (Expect.ABSENT, [view([hit(HEAP)])], {}, Outcome.FAIL, Kind.LEAK),
])
def test_the_tree_judge_takes_the_deciding_process_kind(expect, views, flags, outcome, kind):
    judged = judge_processes(expectation=MethodExpectation(expect, "because"), views=views,
                             intended_address=GUARDED.start + 16, control_established=True, control_note="seen",
                             intended_flags=flags)
    assert (judged.outcome, judged.kind) == (outcome, kind), judged.reason


def test_error_and_skip_are_their_own_kind_and_every_kind_has_a_producer():
    assert outcome_kind(Outcome.ERROR, Kind.ABSENT) == Kind.ERROR and outcome_kind(Outcome.SKIP, None) == Kind.SKIP
    assert outcome_kind(Outcome.FAIL, Kind.LEAK) == Kind.LEAK and outcome_kind(Outcome.ERROR, None) == Kind.ERROR
    # The runner's own: missing notes (FAIL) and processes not followed (INCONCLUSIVE) override the judge's.
    produced = {k for k, *_ in JUDGED_KINDS} | {Kind.ERROR, Kind.SKIP, Kind.MISSING_NOTES, Kind.NOT_FOLLOWED}
    produced |= {Kind.CRASHED, Kind.NO_CRASH}    # judge_death's: tests/test_crash.py runs real deaths through it
    assert produced == set(Kind)
