"""SARIF 2.1.0 for GitHub code scanning.

One rule per leak kind (stable ids REM001...). FAIL verdicts become `error` results, INCONCLUSIVE and
ERROR ones `warning` results; PASS and SKIP produce none. A result aggregates the repetitions of one
scenario x checkpoint x method x subject with the same kind and fingerprint (a value the target derived from
the secret, `derived:<label>`, or a `remanence scan` value gets results of its own, its message naming it). A
built-in target's result is located at the scenario file (the line naming the checkpoint, when the file can be
read) and relates to the line where the target registers the scenario; a user's program's (`probe`, command
targets) is located at the program and relates to the scenario file. Either carries the hit's memory address in
physicalLocation.address. URIs are relative to %SRCROOT% (the repository root: --source-root, else the git top
level of the scenario files, else of the current folder); files outside it keep absolute file: URIs.
`partialFingerprints["remanence/v1"]` is the document's stable fingerprint (never an address, PID or
time), so GitHub tracks an alert across runs. Messages never hold secret bytes or hexdumps.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..results import fingerprint
from ..verdict import hit_process
from .junit_report import SECRET, cases, gate_state, leak_kind, rate, redact, run_info, suppression

SARIF_SCHEMA = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
FINGERPRINT_KEY = "remanence/v1"
SRCROOT = "%SRCROOT%"

_SECURITY = ["security", "memory"]

# Rule order is part of the format: ruleIndex points into it. Append new rules, never reorder.
RULES: list[dict] = [
    {
        "id": "REM001", "name": "secret-copy-remains",
        "shortDescription": {"text": "A copy of the secret remains in memory"},
        "fullDescription": {"text": "The scenario expects the secret to be gone at this checkpoint, but a snapshot of the "
                                    "target's memory still holds a copy of it (whole or a fragment, raw or encoded)."},
        "help": {
            "text": "A copy of the secret survived where the scenario says it must be gone. Wipe every copy with a wipe "
                    "the compiler cannot drop (explicit_bzero, sodium_memzero, memguard's Destroy), and look for "
                    "copies made behind your back: buffers, string conversions, reallocations, stack spills.",
            "markdown": "**A copy of the secret survived** where the scenario says it must be gone.\n\n"
                        "- Wipe every copy with a wipe the compiler cannot remove (`explicit_bzero`, `sodium_memzero`, "
                        "memguard's `Destroy`); a plain `memset` before `free` is a dead store the optimiser may drop.\n"
                        "- Look for copies made behind your back: I/O buffers, string conversions, reallocations, "
                        "stack spills, registers.\n- The result's memory address and region name say where the copy was "
                        "found; run remanence locally with `--keep-snapshots` to inspect the snapshot.",
        },
        "defaultConfiguration": {"level": "error"},
        "properties": {"tags": _SECURITY + ["external/cwe/cwe-226", "external/cwe/cwe-244"],
                       "precision": "very-high", "problem.severity": "error", "security-severity": "7.5"},
    },
    {
        "id": "REM002", "name": "expected-copy-missing",
        "shortDescription": {"text": "An expected copy of the secret is missing"},
        "fullDescription": {"text": "The scenario expects the secret to be present at this checkpoint (it documents a "
                                    "known copy or the live key), but the snapshot does not hold it."},
        "help": {
            "text": "The secret was expected in this snapshot and is not there: either the program changed (update the "
                    "scenario's expectation and its reason) or the snapshot method no longer sees that memory.",
            "markdown": "**The secret was expected in this snapshot and is not there.**\n\n"
                        "- If the program changed (the copy is really gone now), update the scenario's `expect` "
                        "and its `why`.\n- Otherwise the snapshot method no longer sees that memory: the other "
                        "verdicts of this snapshot prove less than they claim.",
        },
        "defaultConfiguration": {"level": "error"},
        "properties": {"tags": _SECURITY + ["correctness"], "precision": "high", "problem.severity": "error",
                       "security-severity": "4.0"},
    },
    {
        "id": "REM003", "name": "secret-copy-misplaced",
        "shortDescription": {"text": "The secret is found, but not where the scenario keeps it"},
        "fullDescription": {"text": "The scenario expects the secret in a particular place at this checkpoint (e.g. "
                                    "its guarded page or the heap), but the copies found lie elsewhere."},
        "help": {
            "text": "Copies of the secret lie outside the place the scenario keeps it: something copied the secret.",
            "markdown": "**Copies of the secret lie outside the place the scenario keeps it** (see the scenario's "
                        "`where`): something copied the secret, and that copy is not protected or wiped the way "
                        "the original is.",
        },
        "defaultConfiguration": {"level": "error"},
        "properties": {"tags": _SECURITY + ["external/cwe/cwe-316"], "precision": "high", "problem.severity": "error",
                       "security-severity": "6.5"},
    },
    {
        "id": "REM004", "name": "region-flags-wrong",
        "shortDescription": {"text": "The secret's memory lacks a required protection"},
        "fullDescription": {"text": "The region holding the secret does not have the flags the scenario requires, "
                                    "e.g. it is not locked in memory (mlock) or is not excluded from core dumps "
                                    "(MADV_DONTDUMP)."},
        "help": {
            "text": "The region holding the secret lacks a flag the scenario requires (locked: may be swapped to disk; "
                    "dont_dump: lands in core dumps).",
            "markdown": "**The region holding the secret lacks a flag the scenario requires.**\n\n"
                        "- `locked` (mlock): without it the page may be swapped out to disk.\n"
                        "- `dont_dump` (MADV_DONTDUMP): without it the secret lands in core dumps.",
        },
        "defaultConfiguration": {"level": "error"},
        "properties": {"tags": _SECURITY + ["external/cwe/cwe-591"], "precision": "high", "problem.severity": "error",
                       "security-severity": "5.5"},
    },
    {
        "id": "REM005", "name": "inconclusive",
        "shortDescription": {"text": "The leak check was inconclusive"},
        "fullDescription": {"text": "remanence could not decide this check: e.g. the snapshot did not show the canary, "
                                    "parts of memory could not be read, or the secret was never seen planted."},
        "help": {
            "text": "The check proves nothing either way; the message says why. Fix the environment (permissions, "
                    "ptrace scope, core_pattern) or the scenario so the positive controls hold.",
            "markdown": "**The check proves nothing either way**; the message says why.\n\n"
                        "Fix the environment (permissions, `ptrace_scope`, `core_pattern`) or the scenario so the "
                        "positive controls (canary seen, secret seen planted, memory readable) hold.",
        },
        "defaultConfiguration": {"level": "warning"},
        "properties": {"tags": ["memory", "reliability"], "precision": "high", "problem.severity": "warning"},
    },
    {
        "id": "REM006", "name": "harness-error",
        "shortDescription": {"text": "The leak check could not run"},
        "fullDescription": {"text": "The target or a snapshot method failed, so this checkpoint was never checked."},
        "help": {
            "text": "The checkpoint was never checked: the target crashed or a snapshot method failed; the message "
                    "says how.",
            "markdown": "**The checkpoint was never checked**: the target crashed or a snapshot method failed; the "
                        "message says how. Its secret may or may not leak.",
        },
        "defaultConfiguration": {"level": "warning"},
        "properties": {"tags": ["memory", "reliability"], "precision": "high", "problem.severity": "warning"},
    },
    {
        "id": "REM007", "name": "notes-missing",
        "shortDescription": {"text": "The target did not note what the checkpoint requires"},
        "fullDescription": {"text": "The checkpoint requires the target to note that it did something (e.g. that it "
                                    "wiped its buffer), and the target never noted it, so the checkpoint does not "
                                    "show what the scenario says it shows."},
        "help": {
            "text": "The target did not note what the checkpoint requires (the scenario's require_notes): it did not "
                    "do, or did not report, the step the expectation relies on.",
            "markdown": "**The target did not note what the checkpoint requires** (the scenario's `require_notes`): "
                        "it did not do, or did not report, the step the expectation relies on. The message lists "
                        "the notes it did send.",
        },
        "defaultConfiguration": {"level": "error"},
        "properties": {"tags": _SECURITY + ["correctness"], "precision": "high", "problem.severity": "error",
                       "security-severity": "4.0"},
    },
    {
        "id": "REM008", "name": "no-crash",
        "shortDescription": {"text": "The target did not crash as its protection promises"},
        "fullDescription": {"text": "The checkpoint expects the target to be killed by a given signal (a guard page, a "
                                    "read-only or no-access protection, a canary check), but it exited, kept running or "
                                    "died by another signal."},
        "help": {
            "text": "A protection that should kill the program at once (a guard page, sodium_mprotect_readonly or "
                    "_noaccess, a canary checked on free, memguard's Freeze) did not: the illegal access went through.",
            "markdown": "**The target did not crash as expected**: a protection that should kill the program at once (a "
                        "guard page, `sodium_mprotect_readonly`/`_noaccess`, a canary checked on free, memguard's "
                        "`Freeze`) let the illegal access through, or the program died by another signal. The message "
                        "says how it ended.",
        },
        "defaultConfiguration": {"level": "error"},
        "properties": {"tags": _SECURITY + ["correctness"], "precision": "high", "problem.severity": "error",
                       "security-severity": "6.0"},
    },
]
RULE_INDEX = {rule["name"]: i for i, rule in enumerate(RULES)}
_HIT_KINDS = ("secret-copy-remains", "secret-copy-misplaced")
_WHAT = {
    "secret-copy-remains": "a copy of {subject} remains",
    "expected-copy-missing": "the expected copy of {subject} is missing",
    "secret-copy-misplaced": "{subject} is found, but not where expected",
    "region-flags-wrong": "{subject}'s region lacks a required flag",
    "inconclusive": "the check{of} was inconclusive",
    "harness-error": "the check{of} could not run",
    "notes-missing": "the target did not note what the check{of} requires",
    "no-crash": "the target did not crash as the check{of} expects",
}


def _what(kind: str, subject: str) -> str:
    """What a result found, naming what was looked for when it is not the planted secret: "a copy of the secret
    remains", "a copy of derived:session_rx remains", "the check of api was inconclusive"."""
    if subject == SECRET:
        return _WHAT[kind].format(subject="the secret", of="")
    return _WHAT[kind].format(subject=_plain(subject), of=f" of {_plain(subject)}")
_MAX_LOCATIONS = 10
_ISO_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")


def _plain(text: object) -> str:
    """Redacted text for a plain-text SARIF message: no accidental embedded links."""
    return redact(text).replace("](", "] (")


def git_top_level(path: Path) -> Path | None:
    """The work tree `path` lies in (the nearest folder holding .git, a folder or a worktree's file), or None."""
    path = Path(os.path.abspath(path))
    for folder in (path, *path.parents):
        if (folder / ".git").exists():
            return folder
    return None


@dataclass(frozen=True)
class _Locator:
    """Paths of the document (relative ones lie in `base`) as SARIF artifact locations under `srcroot`."""
    base: Path
    srcroot: Path | None

    def absolute(self, path: str) -> Path:
        return Path(os.path.abspath(self.base / path))   # an absolute `path` stays itself (symbolic links too)

    def artifact(self, path: str) -> dict:
        absolute = self.absolute(path)
        if self.srcroot is not None and absolute.is_relative_to(self.srcroot):
            return {"uri": absolute.relative_to(self.srcroot).as_posix(), "uriBaseId": SRCROOT}
        return {"uri": absolute.as_uri()}

    def base_ids(self) -> dict:
        described = {"description": {"text": "The root of the repository remanence ran in."}}
        if self.srcroot is not None:
            described["uri"] = self.srcroot.as_uri().rstrip("/") + "/"
        return {SRCROOT: described}


def _checkpoint_line(source: str | None, checkpoint: str, locator: _Locator, cache: dict) -> int:
    """The line of the scenario file's `name = "<checkpoint>"` in a [[checkpoints]] table; 1 when unknown."""
    if not source:
        return 1
    if source not in cache:
        path = locator.absolute(source)
        try:
            cache[source] = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError):
            cache[source] = []
    in_checkpoints = False
    pattern = re.compile(r"""^\s*name\s*=\s*(["'])""" + re.escape(checkpoint) + r"""\1\s*(#.*)?$""")
    for number, line in enumerate(cache[source], 1):
        stripped = line.strip()
        if stripped.startswith("["):
            in_checkpoints = stripped.replace(" ", "").startswith("[[checkpoints]]")
        elif in_checkpoints and pattern.match(line):
            return number
    return 1


def _address(hit: dict) -> dict:
    region = hit.get("region") or {}
    if region.get("register_set"):
        name = f"{region['register_set']} of thread {region.get('thread')}"
    else:
        name = region.get("name") or f"[{region.get('kind') or 'anonymous'}]"
    address: dict = {}
    if hit.get("address"):
        absolute = int(hit["address"], 16)
        if absolute < 1 << 63:   # consumers read it as a signed 64-bit integer
            address["absoluteAddress"] = absolute
        if region.get("start") and region.get("kind") not in ("registers", "note"):
            address["fullyQualifiedName"] = f"{name}+{absolute - int(region['start'], 16):#x}"
        else:
            address["fullyQualifiedName"] = hit["address"]
    address["length"] = hit.get("length")
    address["kind"] = "stack" if region.get("kind") == "stack" else "data"
    address["name"] = name
    return {k: v for k, v in address.items() if v is not None}


def _group_gate(verdicts: list[dict]) -> tuple[str | None, dict | None]:
    """One gate state for a result aggregating repetitions: new wins, then unknown, suppressed only if all are."""
    states = [gate_state(v) for v in verdicts]
    if "new" in states:
        return "new", None
    if None in states:
        return None, None
    if all(s == "suppressed" for s in states):
        return "suppressed", suppression(verdicts[0])
    return "baseline", None


def _notifications(doc: dict) -> list[dict]:
    """One notification per scenario x checkpoint x method x subject that SKIPped or ERRORed (the evidence
    missing from the results): level error, or warning for a SKIP the user allowed (--allow-skip)."""
    allow_skip = bool((doc.get("gate") or {}).get("allow_skip"))
    found: dict[tuple, dict] = {}
    for v in doc.get("verdicts", []):
        outcome = v.get("outcome")
        if outcome not in ("SKIP", "ERROR"):
            continue
        subject = v.get("subject", "secret")
        key = (v.get("scenario"), v.get("checkpoint"), v.get("method"), subject, outcome)
        if key in found:
            found[key]["properties"]["repetitions"] += 1
            continue
        what = f" ({subject})" if subject != "secret" else ""
        found[key] = {
            "level": "warning" if outcome == "SKIP" and allow_skip else "error",
            "message": {"text": f"{_plain(v.get('scenario'))} at checkpoint {_plain(v.get('checkpoint'))} "
                                f"({_plain(v.get('method'))}){_plain(what)}: {outcome}: {_plain(v.get('reason'))}"},
            "properties": {"scenario": v.get("scenario"), "checkpoint": v.get("checkpoint"), "method": v.get("method"),
                           "outcome": outcome, "repetitions": 1},
        }
    return list(found.values())


@dataclass(frozen=True)
class SarifReporter:
    format: str = "sarif"
    filename: str = "results.sarif"
    root: Path | None = None          # where the document's relative paths lie; default: the project
    source_root: Path | None = None   # %SRCROOT%; default: the git top level of the scenario files, else of the cwd

    def _locator(self, runs: dict[str, dict]) -> _Locator:
        if self.root is not None:
            base = Path(os.path.abspath(self.root))
        else:
            from ..targets import PROJECT_ROOT
            base = PROJECT_ROOT
        if self.source_root is not None:
            return _Locator(base, Path(os.path.abspath(self.source_root)))
        folders = [(base / r["source"]).parent for r in runs.values() if r.get("source")] + [Path.cwd()]
        tops = (git_top_level(folder) for folder in folders)
        return _Locator(base, next((top for top in tops if top is not None), None))

    def render(self, doc: dict) -> str:
        return json.dumps(self.log(doc), indent=2, ensure_ascii=False) + "\n"

    def log(self, doc: dict) -> dict:
        """The SARIF log as plain data."""
        runs = run_info(doc)
        locator, lines_cache = self._locator(runs), {}
        gated = any("gate" in v for v in doc.get("verdicts", []))
        results = []
        for case in cases(doc):
            groups: dict[tuple[str, str], list[dict]] = {}
            for v in case.verdicts:
                kind = leak_kind(v)
                if kind is None:
                    continue
                if kind in _HIT_KINDS and v.get("hits"):
                    fps = sorted({h["fingerprint"] for h in v["hits"]})
                else:
                    fps = [fingerprint(case.scenario, case.method, case.checkpoint, "-", "none", case.subject)]
                for fp in fps:
                    groups.setdefault((kind, fp), []).append(v)
            for (kind, fp), verdicts in groups.items():
                results.append(self._result(case, kind, fp, verdicts, runs.get(case.scenario, {}), locator, lines_cache, gated))

        tool = doc.get("tool") or {}
        driver = {"name": "remanence", "fullName": "remanence forensic leak-testing harness"}
        if tool.get("version"):
            driver["version"] = str(tool["version"])
            if re.match(r"^\d+\.\d+\.\d+", str(tool["version"])):
                driver["semanticVersion"] = str(tool["version"])
        driver["rules"] = RULES
        notifications = _notifications(doc)
        invocation: dict = {"executionSuccessful": not doc.get("interrupted", False) and not any(
            n["level"] == "error" for n in notifications)}
        if notifications:
            invocation["toolExecutionNotifications"] = notifications
        if isinstance(doc.get("exit_code"), int):
            invocation["exitCode"] = doc["exit_code"]
        for key, name in (("started_at", "startTimeUtc"), ("finished_at", "endTimeUtc")):
            if isinstance(doc.get(key), str) and _ISO_TIME.match(doc[key]):
                invocation[name] = doc[key]
        run = {
            "tool": {"driver": driver},
            "invocations": [invocation],
            "originalUriBaseIds": locator.base_ids(),
            "results": results,
            "properties": {"remanence": {"exit_code": doc.get("exit_code"), "summary": doc.get("summary", {}),
                                         "interrupted": doc.get("interrupted", False)}},
        }
        return {"$schema": SARIF_SCHEMA, "version": "2.1.0", "runs": [run]}

    def _result(self, case, kind: str, fp: str, verdicts: list[dict], run: dict, locator: _Locator, cache: dict,
                gated: bool) -> dict:
        first = verdicts[0]
        n = len(case.verdicts)
        source = run.get("source")
        target_source = run.get("target_source")
        program = run.get("program")

        message = (f"{case.scenario} at checkpoint {case.checkpoint} ({case.method}): {_what(kind, case.subject)}. "
                   f"{first.get('outcome')} in {rate(len(verdicts), n)}: {_plain(first.get('reason'))}. "
                   f"Expected {case.expect}: {_plain(first.get('why')).rstrip('.')}.")
        scenario_at = None
        if source:
            scenario_at = {"artifactLocation": locator.artifact(source),
                           "region": {"startLine": _checkpoint_line(source, (first.get("step") or {}).get(
                               "checkpoint", case.checkpoint), locator, cache)}}   # a repeating one's own name
        # Where a developer fixes it: the user's own program (the scenario only says how it was driven), else the
        # scenario file, with the line where the built-in target registers the scenario related.
        related = None
        if program:
            physical = {"artifactLocation": locator.artifact(program), "region": {"startLine": 1}}
            if scenario_at:
                message += f" Its scenario: [{_plain(source)}:{scenario_at['region']['startLine']}](1)."
                related = (scenario_at, f"the scenario that drove the program to checkpoint {case.checkpoint}")
        else:
            physical = dict(scenario_at or {})
            if target_source:
                message += (f" The {run.get('target') or 'target'} program registers it at "
                            f"[{target_source['path']}:{target_source['line']}](1).")
                related = ({"artifactLocation": locator.artifact(target_source["path"]),
                            "region": {"startLine": int(target_source["line"])}},
                           f"where the {run.get('target') or 'target'} program registers {case.scenario}")
        hits = [h for h in first.get("hits", []) if h.get("fingerprint") == fp] if kind in _HIT_KINDS else []
        locations = []
        for hit in hits[:_MAX_LOCATIONS] or [None]:
            location = dict(physical)
            if hit is not None:
                location["address"] = _address(hit)
            if location:
                locations.append({"physicalLocation": location}
                                 | ({"message": {"text": f"in {hit_process(hit)}"}} if hit and hit_process(hit) else {}))

        result: dict = {
            "ruleId": RULES[RULE_INDEX[kind]]["id"],
            "ruleIndex": RULE_INDEX[kind],
            "level": "error" if first.get("outcome") == "FAIL" else "warning",
            "message": {"text": message},
            "locations": locations,
            "partialFingerprints": {FINGERPRINT_KEY: fp},
        }
        if related:
            result["relatedLocations"] = [{"id": 1, "physicalLocation": related[0], "message": {"text": _plain(related[1])}}]
        state, suppressed_by = _group_gate(verdicts)
        if gated:
            # SARIF: either every result of a run carries suppressions or none does.
            result["suppressions"] = []
        if state == "suppressed":
            entry = {"kind": "external", "status": "accepted",
                     "justification": redact((suppressed_by or {}).get("reason") or "suppressed")}
            if (suppressed_by or {}).get("expires"):
                entry["properties"] = {"expires": str(suppressed_by["expires"])}
            result["suppressions"] = [entry]
        elif state == "baseline":
            result["baselineState"] = "unchanged"
        elif state == "new":
            result["baselineState"] = "new"
        result["properties"] = {
            "scenario": case.scenario, "checkpoint": case.checkpoint, "method": case.method,
            **({"subject": case.subject} if case.label else {}), "expect": case.expect, "kind": kind, "repetitions": n, "affected_repetitions": len(verdicts),
            "outcomes": {o: case.count(o) for o in ("PASS", "FAIL", "INCONCLUSIVE", "ERROR", "SKIP") if case.count(o)},
        }
        return result
