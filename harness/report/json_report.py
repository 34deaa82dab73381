"""results.json: the versioned, documented record of a run (schema: harness/schema/results-v1.schema.json)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .. import __version__
from ..command import program_file
from ..model import Gap, Region, Snapshot
from ..snapshot import scratch
from ..results import Results, RunRecord, document_aggregates, document_counts, fingerprint, verdict_fingerprints
from ..targets import PROJECT_ROOT, registration_site
from ..verdict import Finding, Verdict

SCHEMA_VERSION = 1


def _address(value: int | None) -> str | None:
    return None if value is None else f"{value:#x}"


def _region(r: Region) -> dict:
    return {"start": _address(r.start), "size": r.size, "perms": r.perms, "kind": r.kind.value, "name": r.name,
            "locked": r.locked, "dont_dump": r.dont_dump, "thread": r.thread, "register_set": r.register_set}


def _gap(g: Gap) -> dict:
    return {"start": _address(g.start), "size": g.size, "name": g.name, "kind": g.kind.value, "reason": g.reason,
            "perms": g.perms}


def _finding(v: Verdict, f: Finding, show_secrets: bool) -> dict:
    h = f.hit
    context = None
    if f.context is not None:
        context = {"offset": f.context.start, "bytes": " ".join(f.context.masked_hex(reveal=show_secrets)),
                   "secret_ranges": [list(r) for r in f.context.secret_ranges]}
    return {"encoding": h.encoding, "full": h.full, "fragment": list(h.fragment) if h.fragment else None,
            "address": _address(h.address), "length": h.length, "in_intended_region": f.in_intended_region,
            "guarded": f.guarded, "region": _region(h.region), "context": context, "pid": h.pid, "command": h.command,
            "fingerprint": fingerprint(v.scenario, v.method, v.checkpoint, h.region.kind.value,
                                       h.encoding + ("" if h.full else ":fragment"), v.subject)}


def _snapshot(s: Snapshot) -> dict:
    return {"method": s.method, "captured_bytes": s.captured_bytes, "duration_s": round(s.duration_s, 4),
            "regions": [_region(r) for r in s.regions], "gaps": [_gap(g) for g in s.gaps], "notes": s.notes,
            "kept_path": None if scratch.is_scratch(s.path) or not s.path.exists() else str(s.path),
            "not_produced": s.not_produced,
            "not_produced_cause": s.not_produced_cause.value if s.not_produced_cause else None,
            "pid": s.pid, "command": s.command}


def _verdict(v: Verdict, show_secrets: bool) -> dict:
    verdict = {"scenario": v.scenario, "repetition": v.repetition, "checkpoint": v.checkpoint, "method": v.method,
               "subject": v.subject, "expect": v.expect.value, "why": v.why, "outcome": v.outcome.value, "reason": v.reason,
               "canary_seen": v.canary_seen, "intended_address": _address(v.intended_address),
               "scan": {"bytes": v.scan_bytes, "duration_s": round(v.scan_duration_s, 4)},
               "snapshot": None if v.snapshot is None else _snapshot(v.snapshot),
               "hits": [_finding(v, f, show_secrets) for f in v.findings],
               "fingerprints": verdict_fingerprints(v)}
    if v.processes:     # following the target's process tree: what each process showed, the target first
        verdict["processes"] = [{"pid": p.snapshot.pid, "command": p.snapshot.command, "canary_seen": p.canary_seen,
                                 "hits": len(p.hits), "snapshot": _snapshot(p.snapshot)} for p in v.processes]
    return verdict


def _project_path(path: Path) -> str:
    """Paths inside the project are given relative to it, so reports match across checkouts; others absolute."""
    try:
        absolute = path.resolve()
    except (RuntimeError, OSError):    # a symbolic link loop
        return str(path)
    return str(absolute.relative_to(PROJECT_ROOT) if absolute.is_relative_to(PROJECT_ROOT) else absolute)


def _run(r: RunRecord) -> dict:
    s = r.scenario
    site = registration_site(s.target, s.entry)
    return {"scenario": s.name, "repetition": r.repetition, "target": s.target, "entry": s.entry,
            "source": _project_path(s.source), "description": s.description,
            "target_source": {"path": site[0], "line": site[1]} if site else None,
            "program": _project_path(program) if s.command and (program := program_file(s.command)) else None,
            "secret": {"form": r.secret_spec.form, "length": r.secret_spec.length, "sha256_prefix": r.secret_fingerprint},
            "canary_sha256_prefix": r.canary_fingerprint, "pid": r.pid, "exit": r.exit, "notes": r.notes,
            "error": r.error, "skip_reason": r.skip_reason, "target_output": r.target_output,
            "duration_s": round(r.duration_s, 3)}


def results_document(results: Results, show_secrets: bool = False) -> dict:
    """The whole run as plain data: what results.json holds and what every reporter renders.
    Secret bytes in hit contexts are masked unless `show_secrets`."""
    verdicts = [_verdict(v, show_secrets) for v in results.verdicts]
    return {
        "schema": "remanence-results", "schema_version": SCHEMA_VERSION, "secrets_shown": show_secrets,
        "tool": {"name": "remanence", "version": __version__},
        "started_at": results.started_at, "finished_at": results.finished_at,
        "interrupted": results.interrupted, "exit_code": results.exit_code(), "machine": results.machine,
        "summary": document_counts(verdicts),
        "aggregates": document_aggregates(verdicts),
        "runs": [_run(r) for r in results.runs],
        "verdicts": verdicts,
    }


@dataclass(frozen=True)
class JsonReporter:
    format: str = "json"
    filename: str = "results.json"

    def render(self, doc: dict) -> str:
        return json.dumps(doc, indent=2) + "\n"
