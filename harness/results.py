"""What a run produced: records per planned run, their verdicts, and the exit code they imply."""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field

from .entry import EXIT_INTERRUPTED
from .model import Outcome
from .scenario import Scenario, SecretSpec
from .verdict import Verdict

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_USAGE = 2
EXIT_INCONCLUSIVE = 3


def fingerprint(scenario: str, method: str, checkpoint: str, region_kind: str, encoding: str,
                subject: str = "secret") -> str:
    """Stable identity of a finding across runs: never addresses, PIDs, times or the secret."""
    # The planted secret's fingerprints stay as they were before derived values had verdicts of their own.
    parts = (scenario, method, checkpoint, region_kind, encoding) + (() if subject == "secret" else (subject,))
    key = "\0".join(parts)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def verdict_fingerprints(v: Verdict) -> list[str]:
    """A verdict's findings' fingerprints; a verdict with no finding (e.g. a missing expected copy) gets one of its own."""
    if v.findings:
        return sorted({fingerprint(v.scenario, v.method, v.checkpoint, f.hit.region.kind.value,
                                   f.hit.encoding + ("" if f.hit.full else ":fragment"), v.subject) for f in v.findings})
    return [fingerprint(v.scenario, v.method, v.checkpoint, "-", "none", v.subject)]


@dataclass
class RunRecord:
    scenario: Scenario
    repetition: int
    secret_spec: SecretSpec
    secret_fingerprint: str | None = None
    canary_fingerprint: str | None = None
    pid: int | None = None
    exit: str | None = None               # "exit status 0", "killed by SIGKILL", ...
    notes: list[str] = field(default_factory=list)
    error: str | None = None              # why the run could not complete
    skip_reason: str | None = None
    target_output: str = ""
    verdicts: list[Verdict] = field(default_factory=list)
    duration_s: float = 0.0


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class Results:
    runs: list[RunRecord]
    started_at: str = field(default_factory=utc_now)
    finished_at: str = ""
    interrupted: bool = False
    machine: dict = field(default_factory=dict)

    @property
    def verdicts(self) -> list[Verdict]:
        return [v for run in self.runs for v in run.verdicts]

    def exit_code(self, allow_skip: bool = False) -> int:
        return outcomes_exit_code((v.outcome.value for v in self.verdicts), self.interrupted, allow_skip)


def outcomes_exit_code(outcomes, interrupted: bool, allow_skip: bool = False) -> int:
    """1 if anything FAILed (the gate's first concern), else 130 if interrupted, else 3 for missing evidence
    (ERROR, INCONCLUSIVE, or SKIP unless the user allowed skips), else 0."""
    outcomes = set(outcomes)
    if Outcome.FAIL.value in outcomes:
        return EXIT_FAIL
    if interrupted:
        return EXIT_INTERRUPTED
    if outcomes & missing_evidence(allow_skip):
        return EXIT_INCONCLUSIVE
    return EXIT_OK


def missing_evidence(allow_skip: bool = False) -> set[str]:
    """The outcomes that leave the question open: they never end in exit 0 (SKIP only when not allowed)."""
    return {Outcome.ERROR.value, Outcome.INCONCLUSIVE.value} | (set() if allow_skip else {Outcome.SKIP.value})
