"""Judging one snapshot's scan against a checkpoint's expectation, honestly.

`absent` is only worth something when the same run showed the secret really planted where the
scenario put it (the positive control), the snapshot saw the canary (the method could see ordinary
memory), and nothing the method failed to read could hide the secret. Otherwise: INCONCLUSIVE.
"""
from __future__ import annotations

import enum
import os
from dataclasses import dataclass, field
from typing import NamedTuple

from .model import Expect, Gap, GapKind, Hit, NoImageCause, Outcome, Region, RegionKind, Snapshot
from .process import describe_status, signal_name
from .scan.context import HitContext
from .scan.encodings import fragment_text
from .scenario import MethodExpectation


class Kind(str, enum.Enum):
    """What kind of outcome a verdict is, for reporters (the reason is prose for people; reporters never parse it)."""

    # FAIL
    LEAK = "leak"                          # expected absent, a copy was found
    MISPLACED = "misplaced"                # expected present somewhere, found only elsewhere
    REGION_FLAGS = "region-flags"          # the intended region's locked / dont_dump differ from the scenario's
    NOT_FOUND = "not-found"                # expected present, not found although the snapshot saw the canary
    MISSING_NOTES = "missing-notes"        # the target did not note what the checkpoint requires
    NO_CRASH = "no-crash"                  # expected a crash by given signals: it exited, hung or died otherwise
    # FAIL for `present`, PASS otherwise: the method produced no image by the program's own policy (a finding)
    NO_IMAGE_BY_POLICY = "no-image-by-policy"
    # PASS
    FOUND = "found"                        # present where expected
    ABSENT = "absent"                      # absent, with canary, positive control and full coverage
    OBSERVED = "observed"                  # `observe`: whatever was found is recorded
    CRASHED = "crashed"                    # `crash`: killed by one of the accepted signals
    # INCONCLUSIVE
    NO_IMAGE = "no-image"                  # no image, the environment's doing or of unknown cause
    NO_CANARY = "no-canary"                # the snapshot did not show the canary: it could not see ordinary memory
    NO_CONTROL = "no-control"              # the secret was never seen planted (or no control value): absence proves nothing
    UNREADABLE = "unreadable"              # memory the method could not read could hide the secret
    NOT_FOLLOWED = "not-followed"          # the target's other processes were not snapshotted
    # the outcomes that are their own kind
    ERROR = "error"
    SKIP = "skip"


def outcome_kind(outcome: Outcome, kind: Kind | None) -> Kind | None:
    """A verdict's kind: ERROR and SKIP are their own kind whatever was judged before; None for one never judged."""
    return {Outcome.ERROR: Kind.ERROR, Outcome.SKIP: Kind.SKIP}.get(outcome, kind)


@dataclass(frozen=True)
class Finding:
    """A hit of the secret, attributed: is it in the region where the scenario keeps the secret?"""

    hit: Hit
    in_intended_region: bool
    guarded: bool          # the hit's region sits between two inaccessible (PROT_NONE) guard mappings
    context: HitContext | None = None   # the memory around the hit, read before the snapshot is deleted

    def describe(self) -> str:
        h = self.hit
        what = "full copy" if h.full else fragment_text(h.encoding, h.fragment)
        where = f"{h.region.register_set} of thread {h.region.thread}" if h.region.kind == RegionKind.REGISTERS \
            else f"{h.region.name or h.region.kind.value} at {h.address:#x}" if h.address is not None else h.region.name
        marks = [m for m, on in (("intended region", self.in_intended_region), ("guarded", self.guarded)) if on]
        return f"{what} ({h.encoding}) in {where}" + (f" [{', '.join(marks)}]" if marks else "")


@dataclass(frozen=True)
class Step:
    """Where a verdict of a repeating checkpoint lies in its series."""

    checkpoint: str        # the checkpoint's name in the scenario file
    index: int             # 1-based
    count: int
    label: str             # "after 3 collections", "at 4 s"
    seconds: float         # since the series' first snapshots

    @property
    def shown(self) -> str:
        """The checkpoint as verdicts and every reporter name it: unique per step."""
        return f"{self.checkpoint} [step {self.index}/{self.count}]"


@dataclass
class Verdict:
    scenario: str
    repetition: int
    checkpoint: str
    method: str
    expect: Expect
    why: str                               # the scenario's stated reason for the expectation
    outcome: Outcome
    reason: str                            # the harness's reason for the outcome
    findings: list[Finding] = field(default_factory=list)
    canary_seen: bool | None = None
    snapshot: Snapshot | None = None
    scan_bytes: int = 0
    scan_duration_s: float = 0.0
    intended_address: int | None = None
    # What was looked for: "secret" (the planted secret) or the label of a value the target derived from it
    # (a session key), or of a value given to an ad-hoc scan.
    subject: str = "secret"
    # When following the target's process tree: what each process's snapshot showed, the target first
    # (`snapshot` is the target's own); empty otherwise.
    processes: list[ProcessView] = field(default_factory=list)
    kind: Kind | None = None               # the judge's; see outcome_kind for ERROR and SKIP
    step: Step | None = None               # a repeating checkpoint's step (`checkpoint` is then step.shown)


@dataclass(frozen=True)
class ProcessView:
    """One process's snapshot by one method, and what it showed of the subject and of the canary."""

    snapshot: Snapshot
    hits: list[Hit]
    canary_seen: bool

    @property
    def name(self) -> str:
        return process_name(self.snapshot.pid, self.snapshot.command)


def process_name(pid: int | None, command: str) -> str:
    """How reasons and reports name a process: "pid 123 (sh -c prog)"."""
    return f"pid {pid}" + (f" ({command})" if command else "")


class Judgement(NamedTuple):
    outcome: Outcome
    reason: str
    findings: list[Finding]
    kind: Kind


def hit_process(hit: dict) -> str:
    """The process a results document's hit lies in, named as process_name does; "" when unknown (a core file,
    a document written before hits named it)."""
    return "" if hit.get("pid") is None else process_name(hit["pid"], hit.get("command") or "")


def _guarded(region: Region, snapshot: Snapshot) -> bool:
    """Both neighbours in the address space are PROT_NONE, as sodium_malloc's guard pages are."""
    def inaccessible_at(address: int) -> bool:
        neighbour = snapshot.region_at(address) or next((g for g in snapshot.gaps if g.contains(address)), None)
        return neighbour is not None and neighbour.perms.startswith("---")
    return region.kind not in (RegionKind.REGISTERS, RegionKind.NOTE) and region.start > 0 \
        and inaccessible_at(region.start - 1) and inaccessible_at(region.end)


def attribute(hits: list[Hit], intended_address: int | None, snapshot: Snapshot) -> list[Finding]:
    intended = snapshot.region_at(intended_address) if intended_address is not None else None
    return [Finding(h, intended is not None and h.region == intended, _guarded(h.region, snapshot)) for h in hits]


def _matches_where(finding: Finding, where: str) -> bool:
    kind = finding.hit.region.kind
    return {
        "any": True,
        "intended": finding.in_intended_region,
        "elsewhere": not finding.in_intended_region,
        "heap": kind == RegionKind.HEAP,
        "stack": kind == RegionKind.STACK,
        "anonymous": kind == RegionKind.ANONYMOUS,
        "registers": kind == RegionKind.REGISTERS,
    }[where]


def mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def coverage(snapshot: Snapshot) -> str:
    """What a snapshot covered, for reasons: "12.3 MiB in 45 regions"."""
    return f"{mib(snapshot.captured_bytes)} in {len(snapshot.regions)} regions"


def _summarise(findings: list[Finding], limit: int = 3) -> str:
    shown = "; ".join(f.describe() for f in findings[:limit])
    return shown + (f"; and {len(findings) - limit} more" if len(findings) > limit else "")


def _region_flag_mismatch(region: Region | None, wanted: dict[str, bool]) -> str | None:
    if region is None:
        return None
    for flag, value in wanted.items():
        actual = getattr(region, flag)
        if actual is not None and actual != value:
            return f"the intended region {region.name or region.kind.value} has {flag}={actual}, the scenario requires {flag}={value}"
    return None


def _exclusion_note(gaps: list[Gap], intended_address: int | None) -> str:
    for gap in gaps:
        if gap.kind == GapKind.EXCLUDED and intended_address is not None and gap.contains(intended_address):
            return f"; the secret's region was left out of the snapshot ({gap.reason})"
    return ""


_NOT_A_FINDING = {NoImageCause.BLOCKED: "the environment stopped it, not the program",
                  NoImageCause.UNKNOWN: "no cause was established"}


def _judge_not_produced(expectation: MethodExpectation, snapshot: Snapshot, control_established: bool) -> Judgement:
    """No image at all (e.g. no kernel core was dumped). Only the program's own policy is a finding: nothing can
    leak through it. An image the environment stopped, or whose cause is unknown, proves nothing either way."""
    why_not = snapshot.not_produced
    if snapshot.not_produced_cause != NoImageCause.POLICY:
        cause = _NOT_A_FINDING.get(snapshot.not_produced_cause, _NOT_A_FINDING[NoImageCause.UNKNOWN])
        return Judgement(Outcome.INCONCLUSIVE, f"{why_not} ({cause}): this proves nothing about the program", [], Kind.NO_IMAGE)
    if expectation.expect == Expect.PRESENT:
        return Judgement(Outcome.FAIL, f"expected present, but {why_not} (the program's own policy)", [], Kind.NO_IMAGE_BY_POLICY)
    if expectation.expect == Expect.ABSENT and not control_established:
        return Judgement(Outcome.INCONCLUSIVE, f"{why_not}; and the secret was never seen planted in this run", [], Kind.NO_CONTROL)
    if expectation.expect == Expect.ABSENT:
        return Judgement(Outcome.PASS, f"{why_not}: the program's own policy, nothing to leak through", [], Kind.NO_IMAGE_BY_POLICY)
    return Judgement(Outcome.PASS, f"{why_not} (the program's own policy)", [], Kind.NO_IMAGE_BY_POLICY)


_NO_CANARY = "the canary was not seen either: this snapshot could not show ordinary memory"


def judge(
    *,
    expectation: MethodExpectation,
    snapshot: Snapshot,
    secret_hits: list[Hit],
    canary_seen: bool,
    intended_address: int | None,
    control_established: bool,
    control_note: str,
    intended_flags: dict[str, bool],
) -> Judgement:
    if snapshot.not_produced is not None:
        return _judge_not_produced(expectation, snapshot, control_established)
    findings = attribute(secret_hits, intended_address, snapshot)
    covered = coverage(snapshot)
    unreadable = [g for g in snapshot.gaps if g.kind == GapKind.UNREADABLE]
    intended_region = snapshot.region_at(intended_address) if intended_address is not None else None
    if mismatch := _region_flag_mismatch(intended_region, intended_flags):
        return Judgement(Outcome.FAIL, mismatch, findings, Kind.REGION_FLAGS)

    def judged(outcome: Outcome, reason: str, kind: Kind) -> Judgement:
        return Judgement(outcome, reason, findings, kind)

    if expectation.expect == Expect.OBSERVE:
        if not findings and not canary_seen:
            return judged(Outcome.INCONCLUSIVE, _NO_CANARY, Kind.NO_CANARY)
        return judged(Outcome.PASS, (f"observed {len(findings)} hit(s): {_summarise(findings)}" if findings
                                     else f"observed: not found in {covered}"), Kind.OBSERVED)

    if expectation.expect == Expect.PRESENT:
        wanted = [f for f in findings if _matches_where(f, expectation.where)]
        if wanted:
            return judged(Outcome.PASS, f"found as expected: {_summarise(wanted)}", Kind.FOUND)
        if findings:
            return judged(Outcome.FAIL, f"found, but not where expected ({expectation.where}): {_summarise(findings)}",
                          Kind.MISPLACED)
        if not canary_seen:
            return judged(Outcome.INCONCLUSIVE, f"not found, but {_NO_CANARY}", Kind.NO_CANARY)
        return judged(Outcome.FAIL, f"expected present, not found in {covered}{_exclusion_note(snapshot.gaps, intended_address)}",
                      Kind.NOT_FOUND)

    # ABSENT
    if findings:
        return judged(Outcome.FAIL, f"expected absent, found {len(findings)}: {_summarise(findings)}", Kind.LEAK)
    if not canary_seen:
        return judged(Outcome.INCONCLUSIVE, f"not found, but {_NO_CANARY}", Kind.NO_CANARY)
    if not control_established:
        return judged(Outcome.INCONCLUSIVE, "not found, but the secret was never seen where the scenario put it in this run: "
                      "absence proves nothing", Kind.NO_CONTROL)
    if unreadable:
        size = sum(g.size for g in unreadable)
        return judged(Outcome.INCONCLUSIVE, f"not found, but {size} bytes in {len(unreadable)} range(s) could not be read "
                      "and could hide it", Kind.UNREADABLE)
    return judged(Outcome.PASS, f"absent from {covered}; canary seen; {control_note}{_exclusion_note(snapshot.gaps, intended_address)}",
                  Kind.ABSENT)


def judge_processes(*, expectation: MethodExpectation, views: list[ProcessView], intended_address: int | None,
                    control_established: bool, control_note: str, intended_flags: dict[str, bool]) -> Judgement:
    """`judge` over every process of a tree, the target first (only it has an intended region). `absent` fails on
    a hit in any process and passes only if every process passes (its canary seen, nothing unreadable);
    `present` passes on a hit where expected in any process; each reason names the processes that decided it,
    and the kind is the first deciding process's."""
    target = views[0]
    if mismatch := _region_flag_mismatch(target.snapshot.region_at(intended_address) if intended_address is not None
                                         else None, intended_flags):
        return Judgement(Outcome.FAIL, f"{target.name}: {mismatch}", attribute(target.hits, intended_address, target.snapshot),
                         Kind.REGION_FLAGS)
    judged = [(view, judge(expectation=expectation, snapshot=view.snapshot, secret_hits=view.hits,
                           canary_seen=view.canary_seen, intended_address=intended_address if view is target else None,
                           control_established=control_established, control_note=control_note, intended_flags={}))
              for view in views]
    findings = [f for _, j in judged for f in j.findings]
    if len(views) == 1:
        return judged[0][1]._replace(findings=findings)
    # The first of these (outcome, with findings?) that any process reached decides; PASS last means "all passed".
    order = {Expect.ABSENT: [(Outcome.FAIL, None), (Outcome.INCONCLUSIVE, None), (Outcome.PASS, None)],
             Expect.PRESENT: [(Outcome.PASS, None), (Outcome.FAIL, True), (Outcome.INCONCLUSIVE, None), (Outcome.FAIL, None)],
             Expect.OBSERVE: [(Outcome.PASS, True), (Outcome.INCONCLUSIVE, None), (Outcome.PASS, None)]}[expectation.expect]
    for outcome, with_findings in order:
        deciding = [(view, j) for view, j in judged
                    if j.outcome == outcome and (with_findings is None or bool(j.findings) == with_findings)]
        if deciding:
            break
    reasons = "; ".join(f"{view.name}: {j.reason}" for view, j in deciding)
    every = len(deciding) == len(views) and outcome != Outcome.FAIL
    return Judgement(outcome, (f"all {len(views)} processes of the tree: " if every else "") + reasons, findings,
                     deciding[0][1].kind)


# The subject of the verdict on how a target expected to crash died (the core it left is judged as the secret's).
CRASH_SUBJECT = "crash"


def judge_death(status: int | None, accepted: tuple[int, ...], waited_s: float) -> Judgement:
    """An expected crash: PASS when the target was killed by one of the `accepted` signals; FAIL when it exited (any
    status), was killed by another signal, or was still running `waited_s` seconds after it was let go (status None)."""
    wanted = " or ".join(signal_name(s) for s in accepted)
    if status is None:
        return Judgement(Outcome.FAIL, f"still running {waited_s:.0f} s after continue (expected {wanted}): killed",
                         [], Kind.NO_CRASH)
    if os.WIFSIGNALED(status) and os.WTERMSIG(status) in accepted:
        return Judgement(Outcome.PASS, f"{describe_status(status)}, as expected", [], Kind.CRASHED)
    if os.WIFSIGNALED(status):
        return Judgement(Outcome.FAIL, f"{describe_status(status)}, not by {wanted}", [], Kind.NO_CRASH)
    return Judgement(Outcome.FAIL, f"{describe_status(status)} instead of crashing (expected {wanted})", [], Kind.NO_CRASH)

