"""JUnit XML: one testsuite per scenario, one testcase per scenario x method x checkpoint x subject.

Valid against the common JUnit schema (junit-10.xsd: Jenkins' xUnit plugin, pytest's tests), so that CI
dashboards group the results by language and scenario:

- testsuite `name`: the scenario; `file` and the `source` property: its scenario file.
- testcase `classname`: `remanence.<target>.<scenario>`, the scenario's dots written as `:` (a scenario name
  never holds one), because Jenkins splits a classname at its last dot: package `remanence.python`, class
  `py:kx:xchacha`. GitLab shows the suite, then classname and name.
- testcase `name`: `checkpoint[method]` (the pytest plugin's test id), a repeating checkpoint's step included
  (`after_gc [step 2/5][gcore]`); a verdict about something other than the planted secret (a value the target
  derived from it, `derived:<label>`, the `crash` of a target expected to crash, or a `remanence scan` value)
  adds its subject: `checkpoint[method] derived:session_rx`. Unique within a class.

A testcase aggregates the scenario's repetitions: it fails if any repetition FAILed, ERRORed or was INCONCLUSIVE
(the failure's `type` says which: the FAIL's kind, `ERROR` or `INCONCLUSIVE`; the schema has no `<error>`
element), is skipped only if every repetition was SKIPped. A FAIL the gate marked `baseline` or `suppressed`
counts as passing, with a <system-out> note, so CI dashboards show only new failures.

This module also holds the few helpers the other text reporters share (grouping, gate, redaction).
No format ever carries hexdump bytes: hit contexts are not rendered, whatever `secrets_shown` says.
"""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from ..document import kind_of
from ..scan.encodings import fragment_text
from ..verdict import Kind, hit_process

# --- shared helpers (also used by sarif_report and markdown_report) ---------------------------------

GATED = ("baseline", "suppressed")

# Eight or more space-separated hex bytes (or ** masks) in a row look like a hexdump: never pass them on.
_HEXDUMP = re.compile(r"(?:\b[0-9A-Fa-f]{2}|\*\*)(?:[ \t]+(?:[0-9A-Fa-f]{2}\b|\*\*)){7,}")


def redact(text: object) -> str:
    """Free text from the document, with anything that looks like a hexdump replaced."""
    return _HEXDUMP.sub("[bytes redacted]", "" if text is None else str(text))


def gate_state(verdict: dict) -> str | None:
    """The gate's view of a verdict: "new", "baseline", "suppressed", or None (no gate information)."""
    gate = verdict.get("gate")
    if not isinstance(gate, dict):
        return None
    state = gate.get("state")
    return state if state in ("new", "baseline", "suppressed") else None


def suppression(verdict: dict) -> dict | None:
    """The gate's suppression entry ({"reason", "expires"}) of a suppressed verdict, else None."""
    gate = verdict.get("gate")
    if isinstance(gate, dict) and gate.get("state") == "suppressed" and isinstance(gate.get("suppression"), dict):
        return gate["suppression"]
    return None


def gated_fail(verdict: dict) -> bool:
    """A FAIL the gate already knows about (baseline) or was told to accept (suppressed)."""
    return verdict.get("outcome") == "FAIL" and gate_state(verdict) in GATED


def gate_note(verdict: dict) -> str:
    """One line saying why a gated verdict does not count as a new failure."""
    state = gate_state(verdict)
    if state == "suppressed":
        s = suppression(verdict) or {}
        expires = f", expires {s['expires']}" if s.get("expires") else ""
        return f"suppressed ({redact(s.get('reason') or 'no reason given')}{expires})"
    if state == "baseline":
        return "known failure (in the baseline)"
    return ""


SECRET = "secret"


def subject_of(verdict: dict) -> str:
    """What a verdict looked for: "secret" (the planted secret; also when the document predates the field),
    "derived:<label>" for a value the target derived from it, or a `remanence scan` value's label."""
    subject = verdict.get("subject")
    return subject if isinstance(subject, str) and subject else SECRET


def has_subjects(doc: dict) -> bool:
    """Whether any verdict looked for something other than the planted secret: only then do reports name subjects."""
    return any(subject_of(v) != SECRET for v in doc.get("verdicts", []))


@dataclass
class Case:
    """One scenario x checkpoint x method x subject with its repetitions' verdicts, in document order."""

    scenario: str
    checkpoint: str
    method: str
    verdicts: list[dict] = field(default_factory=list)
    subject: str = SECRET

    @property
    def label(self) -> str:
        """The subject as reports name it: empty for the planted secret."""
        return "" if self.subject == SECRET else self.subject

    @property
    def expect(self) -> str:
        return self.verdicts[0].get("expect", "") if self.verdicts else ""

    def count(self, outcome: str) -> int:
        return sum(v.get("outcome") == outcome for v in self.verdicts)


def cases(doc: dict) -> list[Case]:
    """The document's verdicts grouped per scenario x checkpoint x method x subject, in order of first appearance:
    a derived value's verdict is not one more repetition of the secret's."""
    groups: dict[tuple[str, str, str, str], Case] = {}
    for v in doc.get("verdicts", []):
        key = (v["scenario"], v["checkpoint"], v["method"], subject_of(v))
        groups.setdefault(key, Case(*key[:3], subject=key[3])).verdicts.append(v)
    return list(groups.values())


def run_info(doc: dict) -> dict[str, dict]:
    """The first run record of each scenario (target, source, target_source, description)."""
    info: dict[str, dict] = {}
    for r in doc.get("runs", []):
        info.setdefault(r["scenario"], r)
    return info


def verdict_seconds(v: dict) -> float:
    """Time a verdict cost: taking its snapshot plus scanning it."""
    snapshot = v.get("snapshot") or {}
    return float(snapshot.get("duration_s") or 0.0) + float((v.get("scan") or {}).get("duration_s") or 0.0)


# The reports' name (the SARIF rule's) for each kind of FAIL the judge gives (verdict.Kind).
_FAIL_NAMES = {Kind.LEAK: "secret-copy-remains", Kind.NOT_FOUND: "expected-copy-missing",
               Kind.NO_IMAGE_BY_POLICY: "expected-copy-missing", Kind.MISPLACED: "secret-copy-misplaced",
               Kind.REGION_FLAGS: "region-flags-wrong", Kind.MISSING_NOTES: "notes-missing",
               Kind.NO_CRASH: "no-crash"}


def leak_kind(verdict: dict) -> str | None:
    """What a non-passing verdict found, as a stable kind name (the SARIF rules'); None for PASS/SKIP."""
    outcome = verdict.get("outcome")
    if outcome == "INCONCLUSIVE":
        return "inconclusive"
    if outcome == "ERROR":
        return "harness-error"
    if outcome != "FAIL":
        return None
    return _FAIL_NAMES.get(kind_of(verdict), "secret-copy-remains")


def rate(n: int, total: int) -> str:
    return f"{n} of {total} repetition" + ("" if total == 1 else "s")


# --- JUnit ------------------------------------------------------------------------------------------

# XML 1.0 cannot carry most control characters, escaped or not.
_XML_INVALID = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _xml_text(text: object) -> str:
    return _XML_INVALID.sub("\ufffd", redact(text))


def _seconds(value: float) -> str:
    return f"{value:.3f}"


def _hit_line(hit: dict) -> str:
    region = hit.get("region") or {}
    where = region.get("name") or region.get("kind") or "?"
    if region.get("register_set"):
        where = f"{region['register_set']} of thread {region.get('thread')}"
    what = "full copy" if hit.get("full", True) else fragment_text(hit.get("encoding") or "", hit["fragment"])
    at = f" at {hit['address']}" if hit.get("address") else ""
    process = f" of {hit_process(hit)}" if hit_process(hit) else ""
    return (f"    hit: {what} ({hit.get('encoding')}) in {where}{at}{process}, {hit.get('length')} bytes"
            f" [fingerprint {hit.get('fingerprint')}]")


def _repetition_lines(case: Case) -> list[str]:
    lines = []
    first = case.verdicts[0]
    of = f" ({case.subject})" if case.label else ""
    lines.append(f"expect {first.get('expect')}{of}: {first.get('why', '')}")
    for v in case.verdicts:
        note = gate_note(v)
        lines.append(f"repetition {v.get('repetition')}: {v.get('outcome')}"
                     + (f" [{note}]" if note else "") + f": {v.get('reason', '')}")
        lines.extend(_hit_line(h) for h in v.get("hits", []))
    return lines


def testcase_name(case: Case) -> str:
    """`checkpoint[method]`, then the subject when it is not the planted secret: unique within a scenario."""
    return f"{case.checkpoint}[{case.method}]" + (f" {case.subject}" if case.label else "")


def classname(scenario: str, target: str | None) -> str:
    """`remanence.<target>.<scenario>` with the scenario's dots as `:`, so that Jenkins, which splits a classname at
    its last dot, files the whole scenario as the class under the package `remanence.<target>`."""
    return ".".join(("remanence", *([target] if target else []), scenario.replace(".", ":")))


def _testcase(case: Case, class_name: str) -> tuple[ET.Element, str | None]:
    """The testcase element and its status: "failure", "skipped" or None (passed)."""
    n = len(case.verdicts)
    elem = ET.Element("testcase", {"name": testcase_name(case), "classname": class_name})
    elem.set("time", _seconds(sum(verdict_seconds(v) for v in case.verdicts)))

    new_fails = [v for v in case.verdicts if v.get("outcome") == "FAIL" and not gated_fail(v)]
    known_fails = [v for v in case.verdicts if gated_fail(v)]
    troubles = [v for v in case.verdicts if v.get("outcome") in ("ERROR", "INCONCLUSIVE")]
    skips = [v for v in case.verdicts if v.get("outcome") == "SKIP"]
    details = "\n".join(_repetition_lines(case))

    status: str | None = None
    if new_fails or troubles:
        # ERROR and INCONCLUSIVE are failures too, not <error>s: junit-10.xsd declares no <error> element (only an
        # <errors> no dashboard reads), and missing evidence must never look green.
        status = "failure"
        if new_fails:
            first, count = new_fails[0], len(new_fails)
            outcome, kind = "FAIL", leak_kind(new_fails[0]) or "FAIL"
        else:
            first, count = troubles[0], len(troubles)
            outcomes = sorted({v["outcome"] for v in troubles}, key=("ERROR", "INCONCLUSIVE").index)
            outcome, kind = "/".join(outcomes), outcomes[0]
        message = f"{outcome} in {rate(count, n)}: {first.get('reason', '')}"
        ET.SubElement(elem, "failure", {"message": _xml_text(message), "type": kind}).text = _xml_text(details)
    elif len(skips) == n:
        status = "skipped"
        ET.SubElement(elem, "skipped", {"message": _xml_text(skips[0].get("reason", ""))})

    out = []
    if known_fails and not new_fails:
        first = known_fails[0]
        out.append(f"FAIL in {rate(len(known_fails), n)}, not counted as a failure: {gate_note(first)}: {first.get('reason', '')}")
    if skips and status != "skipped":
        out.append(f"SKIP in {rate(len(skips), n)}: {skips[0].get('reason', '')}")
    if status != "failure":   # a failure carries the details in its element already
        out.append(details)
    if out:
        ET.SubElement(elem, "system-out").text = _xml_text("\n".join(out))
    return elem, status


@dataclass(frozen=True)
class JunitReporter:
    format: str = "junit"
    filename: str = "junit.xml"

    def render(self, doc: dict) -> str:
        runs = run_info(doc)
        by_scenario: dict[str, list[Case]] = {}
        for case in cases(doc):
            by_scenario.setdefault(case.scenario, []).append(case)

        root = ET.Element("testsuites", {"name": "remanence"})
        totals = {"tests": 0, "failures": 0, "errors": 0}
        total_time = 0.0
        for scenario, scenario_cases in by_scenario.items():
            run = runs.get(scenario, {})
            target, source = run.get("target"), run.get("source")
            suite = ET.SubElement(root, "testsuite", {"name": scenario})
            if source:
                suite.set("file", _xml_text(source))
            properties = ET.SubElement(suite, "properties")
            for name, value in (("target", target), ("source", source),
                                ("target_source", f"{run['target_source']['path']}:{run['target_source']['line']}"
                                 if run.get("target_source") else None),
                                ("description", run.get("description"))):
                if value:
                    ET.SubElement(properties, "property", {"name": name, "value": _xml_text(value)})
            if not len(properties):
                suite.remove(properties)
            # errors stays 0: ERROR and INCONCLUSIVE testcases are failures (see _testcase); the schema requires it.
            counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
            cases_time = 0.0
            for case in scenario_cases:
                elem, status = _testcase(case, classname(scenario, target))
                suite.append(elem)
                counts["tests"] += 1
                if status:
                    counts["failures" if status == "failure" else "skipped"] += 1
                cases_time += sum(verdict_seconds(v) for v in case.verdicts)
            # The suite took as long as its runs (target start-up included), never less than its testcases.
            runs_time = sum(float(r.get("duration_s") or 0.0) for r in doc.get("runs", []) if r.get("scenario") == scenario)
            suite_time = max(runs_time, cases_time)
            for key, value in counts.items():
                suite.set(key, str(value))
            for key in totals:     # the schema's testsuites has no skipped count
                totals[key] += counts[key]
            suite.set("time", _seconds(suite_time))
            total_time += suite_time
        for key, value in totals.items():
            root.set(key, str(value))
        root.set("time", _seconds(total_time))
        ET.indent(root, space="  ")
        return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
