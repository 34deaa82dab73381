"""A synthetic results document as large as the built-in suite's: the size test of report.html and
tests/bench_report.py render it.

SUITE holds the shape of the document `make suite` wrote on the reference machine (/work/suite-ref/results.json,
counted with `python tests/suite_document.py --shape results.json`): how many scenarios, runs and verdicts, how many
regions and gaps a snapshot lists, how many hits a verdict holds. The document is built from the golden sample's
verdicts, with fresh addresses per run (so no two runs' maps are alike, as in a real suite) and its aggregates and
series computed by harness/document.py, as the harness writes them.
"""
from __future__ import annotations

import copy
import json
import sys
from collections import Counter
from pathlib import Path

from remanence.document import VerdictEntry, aggregates, series

SAMPLE = Path(__file__).parent / "golden" / "sample-results.json"

SUITE = {
    "scenarios": 83, "runs": 169, "verdicts": 1627, "hits": 2622, "regions_per_snapshot": 50, "gaps_per_snapshot": 19,
    # the reference run was all PASS; a few of every other outcome make the document harsher (detailed verdicts, maps)
    "outcomes": {"PASS": 1540, "INCONCLUSIVE": 40, "SKIP": 30, "FAIL": 10, "ERROR": 7},
    "methods": ["procmem", "gcore", "gcore-all", "kernel-core", "swap", "exit"],
    "stepped_scenarios": 9, "steps": 6,
}
LANGUAGES = ("c", "go", "js", "python")
NAMES = ("sodium.guarded.underflow.intact", "memguard.enclave.sealed", "secret.heap_nodo", "python.py.kx.xchacha",
         "node.buffer.fill.zero", "malloc.explicit_bzero")


def shape(doc: dict) -> dict:
    """The counts SUITE holds, of a real results document."""
    verdicts = doc["verdicts"]
    snapshots = [v["snapshot"] for v in verdicts if v.get("snapshot")]
    methods = list(dict.fromkeys(v["method"] for v in verdicts))
    stepped = {v["scenario"] for v in verdicts if v.get("step")}
    return {
        "scenarios": len({r["scenario"] for r in doc["runs"]}), "runs": len(doc["runs"]), "verdicts": len(verdicts),
        "hits": sum(len(v["hits"]) for v in verdicts),
        "regions_per_snapshot": round(sum(len(s.get("regions") or []) for s in snapshots) / max(1, len(snapshots))),
        "gaps_per_snapshot": round(sum(len(s.get("gaps") or []) for s in snapshots) / max(1, len(snapshots))),
        "outcomes": dict(Counter(v["outcome"] for v in verdicts).most_common()), "methods": methods,
        "stepped_scenarios": len(stepped),
        "steps": max((v["step"]["count"] for v in verdicts if v.get("step")), default=0),
    }


def _regions(base: dict, count: int, start: int) -> list[dict]:
    """`count` regions in address order from `start`, cycling through the sample snapshot's kinds and names."""
    made, address = [], start
    for i in range(count):
        r = dict(base["regions"][i % len(base["regions"])])
        size = int(r.get("size") or 4096)
        r["start"] = f"{address:#x}"
        made.append(r)
        address += size + (4096 if i % 3 == 0 else 0)
    return made


def suite_sized_document(counts: dict = SUITE) -> dict:
    sample = json.loads(SAMPLE.read_text())
    verdict_of = {o: next(v for v in sample["verdicts"] if v["outcome"] == o) for o in ("FAIL", "ERROR", "SKIP")}
    present = next(v for v in sample["verdicts"] if v["outcome"] == "PASS" and v["hits"] and v["snapshot"])
    clean = next(v for v in sample["verdicts"] if v["outcome"] == "PASS" and not v["hits"] and v["snapshot"])
    inconclusive = {**copy.deepcopy(clean), "outcome": "INCONCLUSIVE", "kind": "unreadable",
                    "reason": "absent not proven: 3 regions could not be read"}
    templates = {"PASS": None, "FAIL": verdict_of["FAIL"], "ERROR": verdict_of["ERROR"], "SKIP": verdict_of["SKIP"],
                 "INCONCLUSIVE": inconclusive}
    base_snapshot = present["snapshot"]
    methods = counts["methods"]
    outcomes = [o for o, n in counts["outcomes"].items() for _ in range(n)]
    # the rarer outcomes spread over the suite, not bunched at its end
    outcomes = [outcomes[i] for i in sorted(range(len(outcomes)), key=lambda i: (i * 7919) % len(outcomes))]
    plan = [(s, rep) for s in range(counts["scenarios"])
            for rep in range(1, counts["runs"] // counts["scenarios"] + (s < counts["runs"] % counts["scenarios"]) + 1)]
    sizes = [counts["verdicts"] // len(plan) + (i < counts["verdicts"] % len(plan)) for i in range(len(plan))]
    # a copy is found where a verdict FAILs and at every other passing one (an expected copy); the hits spread over them
    found = [o == "FAIL" or (o == "PASS" and i % 2 == 0) for i, o in enumerate(outcomes)]
    finders = sum(found)
    hits_of = iter([counts["hits"] // finders + (i < counts["hits"] % finders) for i in range(finders)])
    doc = {k: copy.deepcopy(sample[k]) for k in sample if k not in ("runs", "verdicts", "aggregates")}
    doc["runs"], doc["verdicts"] = [], []
    run_base = sample["runs"][0]
    n = 0
    for (s, rep), size in zip(plan, sizes):
        name = f"{NAMES[s % len(NAMES)]}.{s}"
        stepped = s < counts["stepped_scenarios"]
        doc["runs"].append({**copy.deepcopy(run_base), "scenario": name, "repetition": rep,
                            "target": LANGUAGES[s % len(LANGUAGES)], "pid": 1000 + n})
        start = 0x550000000000 + (s * 97 + rep) * 0x10000000
        regions = _regions(base_snapshot, counts["regions_per_snapshot"], start)
        gaps = [{"start": r["start"], "size": r["size"], "name": r["name"], "kind": "excluded",
                 "reason": "MADV_DONTDUMP: left out of the core"}
                for r in (regions[i * len(regions) // counts["gaps_per_snapshot"]]
                          for i in range(counts["gaps_per_snapshot"]))]
        for k in range(size):
            outcome = outcomes[n % len(outcomes)]
            method = methods[k % len(methods)]
            index = k // len(methods)
            if stepped:
                checkpoint = f"after_gc [step {index % counts['steps'] + 1}/{counts['steps']}]"
                step = {"checkpoint": "after_gc", "index": index % counts["steps"] + 1, "count": counts["steps"],
                        "label": f"gc {index}", "seconds": float(index)}
            else:
                checkpoint, step = f"checkpoint_{index}", None
            template = templates[outcome] or (present if found[n] else clean)
            v = copy.deepcopy(template)
            v.update(scenario=name, repetition=rep, checkpoint=checkpoint, method=method, outcome=outcome,
                     expect="present" if outcome == "PASS" and found[n] else "absent")
            if step:
                v["step"] = step
            if v.get("snapshot"):
                v["snapshot"] = {**v["snapshot"], "method": method, "regions": regions, "gaps": gaps}
            v["hits"] = []
            if found[n]:
                hit = (present if outcome == "PASS" else template)["hits"][0]
                for h in range(next(hits_of)):
                    region = regions[(h * 11) % len(regions)]
                    address = int(region["start"], 16) + 64 * h
                    v["hits"].append({**copy.deepcopy(hit), "address": f"{address:#x}", "region": region,
                                      "fingerprint": f"{n:08x}{h:08x}"})
            doc["verdicts"].append(v)
            n += 1
    entries = [VerdictEntry.from_json(v, f"verdicts[{i}]") for i, v in enumerate(doc["verdicts"])]
    doc["summary"] = dict(Counter(v["outcome"] for v in doc["verdicts"]))
    doc["aggregates"] = [a.to_json() for a in aggregates(entries)]
    made = series(entries)
    if isinstance(made, list):
        doc["series"] = [s.to_json() for s in made]
    return doc


if __name__ == "__main__":
    if sys.argv[1:2] == ["--shape"] and len(sys.argv) == 3:
        print(json.dumps(shape(json.loads(Path(sys.argv[2]).read_text())), indent=1))
    else:
        sys.exit("usage: python tests/suite_document.py --shape results.json")
