"""The CI gate: which non-PASS verdicts are new, which were already failing in a baseline, which are suppressed.

It works on the results document (results.json's plain data; the baseline read by document.read), so a run and a
merge of shards gate alike.

Every verdict gets `gate`: null for PASS (and for SKIP when skips are allowed: --allow-skip, [run] allow_skip), else
    {"state": "new" | "baseline" | "suppressed", "suppression": {"id", "reason", "expires"} | null}
- suppressed: a live (unexpired) [[suppress]] entry of the config matches it (checked first: it says why);
- baseline:   every one of its fingerprints belonged to a non-PASS verdict of the baseline document whose
              outcome was at least as severe (FAIL covers everything; ERROR, INCONCLUSIVE and SKIP cover
              each other), so a known INCONCLUSIVE never hides a new FAIL, and a check this machine could
              not do in the baseline either (SKIP) is not new;
- new:        anything else.
The document gets a top-level `gate` and its `exit_code` becomes the gate's: 1 if a new verdict FAILed or a
suppression has expired, else 130 if the run was interrupted, else 3 if a new verdict is ERROR,
INCONCLUSIVE or SKIP (missing evidence), else 0. Baseline and suppressed verdicts stay in the document with their real outcome.
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path

from .config import Config
from .document import Document, DocumentError, VerdictEntry, read
from .results import EXIT_FAIL, EXIT_USAGE, missing_evidence, outcomes_exit_code

SEVERITY = {"FAIL": 2, "ERROR": 1, "INCONCLUSIVE": 1, "SKIP": 1}


class BaselineError(Exception):
    """The baseline file is not a usable results document (exit code 2)."""

    exit_code = EXIT_USAGE


def doc_exit_code(doc: dict, allow_skip: bool = False) -> int:
    """The ungated exit code of a results document."""
    return outcomes_exit_code((v["outcome"] for v in doc["verdicts"]), bool(doc.get("interrupted")), allow_skip)


def load_baseline(path: Path) -> Document:
    try:
        return read(path, name=f"baseline {path}")
    except DocumentError as e:
        raise BaselineError(str(e)) from None


def _baseline_index(baseline: Document | None) -> dict[str, int]:
    """fingerprint -> the most severe outcome it had in the baseline (as a SEVERITY number)."""
    index: dict[str, int] = {}
    for v in baseline.verdicts if baseline else []:
        severity = SEVERITY.get(v.outcome.value)
        if severity is None:
            continue
        for fp in v.prints():
            index[fp] = max(index.get(fp, 0), severity)
    return index


def apply_gate(doc: dict, baseline: Document | None, config: Config | None, *, baseline_path: Path | str | None = None,
               today: dt.date | None = None, allow_skip: bool = False) -> dict:
    """A copy of `doc` with per-verdict `gate`, a top-level `gate` and the gate's `exit_code` (see the module doc).
    Skips are allowed by `allow_skip` (the command line) or the config's [run] allow_skip."""
    config = config or Config()
    allow_skip = allow_skip or bool(config.run.allow_skip)
    judged = missing_evidence(allow_skip) | {"FAIL"}
    today = today or dt.date.today()
    live = [s for s in config.suppressions if not s.expired(today)]
    expired = [s for s in config.suppressions if s.expired(today)]
    used: set[int] = set()
    known = _baseline_index(baseline)
    verdicts = []
    for i, v in enumerate(doc["verdicts"]):
        prints = VerdictEntry.from_json(v, f"verdicts[{i}]").prints()
        v = {k: val for k, val in v.items() if k != "gate"}
        gate = None
        if v["outcome"] in judged:
            match = next((s for s in live if s.matches(v)), None)
            if match is not None:
                used.add(match.index)
                gate = {"state": "suppressed", "suppression": match.as_dict()}
            elif all(known.get(fp, 0) >= SEVERITY.get(v["outcome"], 3) for fp in prints):
                gate = {"state": "baseline", "suppression": None}
            else:
                gate = {"state": "new", "suppression": None}
        v["gate"] = gate
        verdicts.append(v)
    new = [v for v in verdicts if v["gate"] and v["gate"]["state"] == "new"]
    interrupted = bool(doc.get("interrupted"))
    exit_code = outcomes_exit_code((v["outcome"] for v in new), interrupted, allow_skip)
    messages = []
    if expired:
        exit_code = EXIT_FAIL
        where = f" in {config.path}" if config.path else ""
        messages += [f"error: suppression {s.label}{where} expired on {s.expires.isoformat()} "
                     f"(reason was: {s.reason}); renew it with a new date or remove it" for s in expired]
    unused = [s for s in live if s.index not in used]
    messages += [f"warning: suppression {s.label} matched no verdict" for s in unused]
    count = lambda state: sum(1 for v in verdicts if v["gate"] and v["gate"]["state"] == state)  # noqa: E731
    gated = dict(doc)
    gated["verdicts"] = verdicts
    gated["exit_code"] = exit_code
    gated["gate"] = {
        "config": str(config.path) if config.path else None,
        "baseline": str(baseline_path) if baseline_path is not None else None,
        "exit_code": exit_code,
        "ungated_exit_code": doc_exit_code(doc, allow_skip),
        "allow_skip": allow_skip,
        "new_failures": len(new),
        "baseline_failures": count("baseline"),
        "suppressed": count("suppressed"),
        "expired_suppressions": [s.describe() for s in expired],
        "unused_suppressions": [s.describe() for s in unused],
        "messages": messages,
    }
    return gated
