"""Markdown summary for a pull-request comment or $GITHUB_STEP_SUMMARY.

A headline with the counts and the exit code, where the secret survives (the findings, from the document's
aggregates, beside the gate), a table of what needs attention (non-passing verdicts, aggregated over
repetitions), repetition rates for repeated scenarios, then every verdict in a collapsed <details>. When some verdict is about something other than the planted secret (a derived
value, a `remanence scan` value), every table gets a subject column. Kept under GitHub's 64 KiB limit: whatever does not fit is left out with a
note (what needs attention is kept first, then the findings). No secret bytes and no hexdumps, whatever `secrets_shown` says.
"""
from __future__ import annotations

from dataclasses import dataclass

from .findings import LEGEND, findings, named_once
from .junit_report import Case, cases, gate_note, gate_state, gated_fail, has_subjects, redact, subject_of

EMOJI = {"PASS": "✅", "FAIL": "❌", "INCONCLUSIVE": "❔", "ERROR": "💥", "SKIP": "⏭️"}
GATE_EMOJI = {"suppressed": "🔕", "baseline": "📌"}
OUTCOMES = ("FAIL", "ERROR", "INCONCLUSIVE", "SKIP", "PASS")
MAX_BYTES = 64 * 1024       # GitHub's limit for a comment body (a step summary may hold 1 MiB); UTF-8 bytes
MAX_CELL = 600              # characters of one reason in a table cell

_MD_SPECIAL = str.maketrans({c: "\\" + c for c in "\\`*_[]<>|~#"} | {"&": "&amp;"})


def cell(text: object, limit: int = MAX_CELL) -> str:
    """Text safe inside one GitHub-flavoured Markdown table cell: redacted, escaped, one line, bounded."""
    value = redact(text)
    if len(value) > limit:
        value = value[: limit - 1] + "…"
    value = value.translate(_MD_SPECIAL)
    return value.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "<br>")


def _row(*cells: str) -> str:
    return "| " + " | ".join(cells) + " |"


def _header(*names: str) -> list[str]:
    return [_row(*names), _row(*("---" for _ in names))]


def _verdict_label(v: dict) -> str:
    outcome = v.get("outcome", "")
    if gated_fail(v):
        state = gate_state(v)
        return f"{GATE_EMOJI[state]} FAIL ({'suppressed' if state == 'suppressed' else 'known'})"
    return f"{EMOJI.get(outcome, '')} {outcome}"


def _with_gate(v: dict) -> str:
    note = gate_note(v) if gated_fail(v) else ""
    return f"{note}: {v.get('reason', '')}" if note else v.get("reason", "")


def _subject_cell(subject: str) -> list[str]:
    """The subject column's cell (present only when some verdict is not about the planted secret)."""
    return [cell(subject)]


def _findings(doc: dict, subjects: bool) -> list[str]:
    """One row per scenario x checkpoint x method (x subject); a scenario and checkpoint are named once for the rows
    below them."""
    return [_row(cell(scenario), cell(checkpoint), cell(f.method),
                 *(_subject_cell(f.subject) if subjects else []), f.mark + cell(f.text),
                 ", ".join(f"{EMOJI.get(o, '')} {words}" for o, words in f.gate_words()))
            for scenario, checkpoint, f in named_once(findings(doc))]


def _attention(all_cases: list[Case], subjects: bool) -> list[tuple[int, str]]:
    """(priority, row) for each scenario x checkpoint x method (x subject) x non-passing outcome (gated FAILs apart)."""
    rank = {"FAIL": 0, "ERROR": 1, "INCONCLUSIVE": 2, "baseline": 3, "suppressed": 4, "SKIP": 5}
    rows = []
    for case in all_cases:
        groups: dict[str, list[dict]] = {}
        for v in case.verdicts:
            if v.get("outcome") == "PASS":
                continue
            key = gate_state(v) if gated_fail(v) else v.get("outcome", "")
            groups.setdefault(key, []).append(v)
        n = len(case.verdicts)
        for key, verdicts in groups.items():
            first = verdicts[0]
            label = _verdict_label(first) + (f" {len(verdicts)}/{n}" if n > 1 else "")
            rows.append((rank.get(key, 6), _row(cell(case.scenario), cell(case.checkpoint), cell(case.method),
                                                *(_subject_cell(case.subject) if subjects else []),
                                                cell(case.expect), label, cell(_with_gate(first)))))
    return sorted(rows, key=lambda r: r[0])   # stable: document order within a rank


@dataclass(frozen=True)
class Section:
    opening: list[str]
    rows: list[str]
    closing: list[str]
    priority: int = 2      # lower: given room first when the text must be cut


@dataclass(frozen=True)
class MarkdownReporter:
    format: str = "md"
    filename: str = "summary.md"
    max_bytes: int = MAX_BYTES

    def render(self, doc: dict) -> str:
        verdicts = doc.get("verdicts", [])
        all_cases = cases(doc)
        subjects = has_subjects(doc)
        subject_col = ["subject"] if subjects else []
        counts = {o: 0 for o in OUTCOMES}
        for v in verdicts:
            counts[v.get("outcome", "")] = counts.get(v.get("outcome", ""), 0) + 1
        known = sum(gate_state(v) == "baseline" for v in verdicts if gated_fail(v))
        suppressed = sum(gate_state(v) == "suppressed" for v in verdicts if gated_fail(v))
        new_fails = counts["FAIL"] - known - suppressed

        if new_fails:
            icon = "❌"
        elif doc.get("interrupted"):
            icon = "⏹️"
        elif counts["ERROR"] or counts["INCONCLUSIVE"]:
            icon = "⚠️"
        else:
            icon = "✅"
        parts = []
        for outcome in OUTCOMES:
            if counts[outcome]:
                text = f"{EMOJI[outcome]} {counts[outcome]} {outcome}"
                if outcome == "FAIL" and (known or suppressed):
                    gated = [f"{new_fails} new"] + ([f"{known} known"] if known else []) \
                        + ([f"{suppressed} suppressed"] if suppressed else [])
                    text += f" ({', '.join(gated)})"
                parts.append(text)
        tool = doc.get("tool") or {}
        scenarios = len({r.get("scenario") for r in doc.get("runs", [])})
        head = [f"## {icon} remanence: {' · '.join(parts) or 'no verdicts'}", ""]
        facts = [f"**exit code {doc.get('exit_code')}**"]
        if doc.get("interrupted"):
            facts.append("**interrupted**")
        facts.append(f"{len(verdicts)} verdict(s) from {len(doc.get('runs', []))} run(s) of {scenarios} scenario(s)")
        facts.append(f"remanence {cell(tool.get('version', '?'))}")
        if doc.get("started_at"):
            facts.append(f"{cell(doc['started_at'])} → {cell(doc.get('finished_at') or '?')}")
        head += [" · ".join(facts), ""]

        sections: list[Section] = []
        found = _findings(doc, subjects)
        if found:
            sections.append(Section(["### Where the secret survives", "", LEGEND, ""]
                                    + _header("scenario", "checkpoint", "method", *subject_col, "found", "gate"),
                                    found, [""], priority=1))
        attention = [row for _, row in _attention(all_cases, subjects)]
        if attention:
            sections.append(Section([f"### Needs attention ({len(attention)})", ""]
                                    + _header("scenario", "checkpoint", "method", *subject_col, "expected", "verdict",
                                              "reason"),
                                    attention, [""], priority=0))
        else:
            sections.append(Section(["All verdicts passed.", ""], [], [], priority=0))
        repeated = [c for c in all_cases if len(c.verdicts) > 1]
        if repeated:
            rows = []
            for c in repeated:
                found = sum(bool(v.get("hits")) for v in c.verdicts)
                outcomes = ", ".join(f"{EMOJI[o]} {c.count(o)}/{len(c.verdicts)} {o}" for o in OUTCOMES if c.count(o))
                rows.append(_row(cell(c.scenario), cell(c.checkpoint), cell(c.method),
                                 *(_subject_cell(c.subject) if subjects else []), cell(c.expect),
                                 f"{found}/{len(c.verdicts)}", outcomes))
            sections.append(Section(["### Repetition rates", ""]
                                    + _header("scenario", "checkpoint", "method", *subject_col, "expected",
                                              "found" if subjects else "secret found", "outcomes"),
                                    rows, [""]))
        if verdicts:
            rows = [_row(cell(v.get("scenario")), str(v.get("repetition", "")), cell(v.get("checkpoint")),
                         cell(v.get("method")), *(_subject_cell(subject_of(v)) if subjects else []),
                         cell(v.get("expect")), _verdict_label(v), cell(_with_gate(v)))
                    for v in verdicts]
            sections.append(Section([f"<details><summary>All verdicts ({len(verdicts)})</summary>", ""]
                                    + _header("scenario", "#", "checkpoint", "method", *subject_col, "expected",
                                              "verdict", "reason"),
                                    rows, ["", "</details>", ""]))
        return self._fit(head, sections)

    def _fit(self, head: list[str], sections: list[Section]) -> str:
        """Join the sections in their order, leaving rows out once the next would push the text past max_bytes; room
        goes to the sections by priority (what needs attention first), and once a section is cut the ones after it
        in priority get nothing."""
        def size(lines: list[str]) -> int:
            return sum(len(line.encode("utf-8")) + 1 for line in lines)

        note_room = 400
        used = size(head)
        budget = self.max_bytes - note_room
        kept: dict[int, int | None] = {}     # section index -> rows kept (None: the section is left out)
        omitted = 0
        for i in sorted(range(len(sections)), key=lambda i: sections[i].priority):
            section = sections[i]
            frame = size(section.opening) + size(section.closing)
            if omitted or used + frame > budget:
                kept[i] = None
                omitted += len(section.rows) or 1
                continue
            used += frame
            count = 0
            for row in section.rows:
                if used + size([row]) > budget:
                    break
                used += size([row])
                count += 1
            kept[i] = count
            omitted += len(section.rows) - count
        out = list(head)
        for i, section in enumerate(sections):
            if kept[i] is not None:
                out += section.opening + section.rows[:kept[i]] + section.closing
        if omitted:
            out += ["", f"> ⚠️ **Truncated** to stay under {self.max_bytes // 1024} KiB: {omitted} row(s) left out. "
                        "Every verdict is in results.json (and the JUnit and SARIF reports).", ""]
        return "\n".join(out).rstrip("\n") + "\n"
