"""Where the secret survives: the findings-first view every report opens with, read off the document's `aggregates`
(one per scenario x checkpoint x method x subject), never recomputed from the verdicts.

A finding says what the snapshots held, over the repetitions: a full copy, fragments only, clean (judged on
evidence), or no evidence (INCONCLUSIVE, ERROR, SKIP); the kinds of region the copies were in; whether that is what
the scenario expected; and, beside it, the gate's outcomes. Aggregates written before findings were recorded (no
`full`, `fragments`, `clean` or `unknown`, or all of them 0 as a reader fills them in) give the runs with any copy
only, and no expected mark: they cannot tell a clean snapshot from one that proves nothing."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

OUTCOME_ORDER = ("FAIL", "ERROR", "INCONCLUSIVE", "SKIP", "PASS")


@dataclass(frozen=True)
class Finding:
    scenario: str
    checkpoint: str
    method: str
    subject: str
    expect: str
    state: str            # "full copy", "fragments", "clean", "no evidence", "mixed", "found" (old documents), "crash check"
    counts: str           # "" for one run, else e.g. "full 3/5, clean 2/5"
    regions: tuple[str, ...]
    expected: bool | None  # None: nothing was expected of the memory (observe, a crash check) or no evidence
    gate: tuple[tuple[str, int], ...]   # (outcome, count), worst first
    runs: int

    @property
    def text(self) -> str:
        """The finding in words, e.g. "full copy in heap, stack" or "full 3/5, clean 2/5 in heap"."""
        where = f" in {', '.join(self.regions)}" if self.regions else ""
        return (self.counts or self.state) + where

    @property
    def mark(self) -> str:
        return MARKS[self.expected]

    def gate_words(self) -> list[tuple[str, str]]:
        """The gate's outcomes beside the finding: (outcome, "PASS" for one run, "2/5 PASS" over several)."""
        return [(o, o if self.runs == 1 else f"{n}/{self.runs} {o}") for o, n in self.gate]


# The findings tables' marks (by Finding.expected) and what they mean.
MARKS = {True: "✓ ", False: "✗ ", None: ""}
LEGEND = (f"{MARKS[True]}as the scenario expects, {MARKS[False]}not as it expects (copies where none should be, or "
          "none where one should be); the gate judges placement and evidence too.")


def named_once(rows: list[Finding]) -> Iterator[tuple[str, str, Finding]]:
    """(scenario, checkpoint, finding) for a table's rows, the scenario and checkpoint named only where they change,
    so a table stays narrow."""
    previous = ("", "")
    for f in rows:
        yield ("" if f.scenario == previous[0] else f.scenario,
               "" if (f.scenario, f.checkpoint) == previous else f.checkpoint, f)
        previous = (f.scenario, f.checkpoint)


FINDING_KEYS = ("full", "fragments", "clean", "unknown")


def _recorded(a: dict) -> bool:
    """Every repetition counts in one of the finding keys (none of them when the document predates them)."""
    return sum(a.get(key, 0) for key in FINDING_KEYS) > 0


def _state(a: dict) -> tuple[str, str]:
    runs = a.get("runs", 0)
    if not _recorded(a):
        found = a.get("found", 0)
        return ("found" if found else "no copy found"), (f"found {found}/{runs}" if runs > 1 and found else "")
    parts = [(name, a.get(key, 0)) for name, key in
             (("full", "full"), ("fragments", "fragments"), ("clean", "clean"), ("no evidence", "unknown"))]
    present = [(name, n) for name, n in parts if n]
    if len(present) == 1:
        state = {"full": "full copy"}.get(present[0][0], present[0][0])
    else:
        state = "mixed" if present else "no evidence"
    counts = ", ".join(f"{name} {n}/{runs}" for name, n in present) if runs > 1 else ""
    return state, counts


def _expected(expect: str, a: dict) -> bool | None:
    """Copies where none should be, or none where one should be, are unexpected."""
    found, judged = a.get("found", 0), a.get("found", 0) + a.get("clean", 0)
    if expect not in ("present", "absent") or not judged or not _recorded(a):
        return None
    if expect == "absent":
        return not found
    return found == judged


def findings(doc: dict) -> list[Finding]:
    made = []
    for a in doc.get("aggregates", []):
        expect = a.get("expect", "")
        state, counts = _state(a) if expect != "crash" else ("crash check", "")
        gate = tuple(sorted(a.get("outcomes", {}).items(), key=lambda kv: OUTCOME_ORDER.index(kv[0])
                            if kv[0] in OUTCOME_ORDER else len(OUTCOME_ORDER)))
        made.append(Finding(a["scenario"], a["checkpoint"], a["method"], a.get("subject") or "secret", expect, state,
                            counts, tuple(a.get("regions", ())), _expected(expect, a) if expect != "crash" else None,
                            gate, a.get("runs", 0)))
    return made
