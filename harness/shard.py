"""Sharding a plan across CI jobs, and merging the shards' results documents back into one.

The slicing rule: the plan's run ids (`scenario#repetition`) in plan order (scenarios sorted by name, then
repetitions 1..R) are dealt out round-robin: run k (0-based) goes to shard (k mod N) + 1. It depends only
on the plan (scenario files, names, --method, --repeat), never on the machine or on timing, so every shard
computes the same slices. Repetitions of a repeated (GC-dependent) scenario are spread over the shards on
purpose: they are the expensive runs, each repetition is an independent process judged on its own, and
the rates (`aggregates`) are computed over all of them after the merge, so spreading them balances the
shards and costs nothing.

A shard's document records "shard": "i/N", "planned_runs" (every run id of the full plan, in order) and
"shard_runs" (its own). `merge_documents` checks them and builds the document an unsharded run would have
produced: runs and verdicts in plan order, summary, aggregates and exit code recomputed.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from .gate import check_fields, check_document, doc_exit_code
from .results import document_aggregates, document_counts

_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


class ShardError(Exception):
    """A --shard value, or a set of shard documents that cannot be merged (exit code 2)."""


def parse_shard(value: str) -> tuple[int, int]:
    """'2/4' -> (2, 4); 1 <= i <= N."""
    match = _SHARD.match(value or "")
    if not match:
        raise ShardError(f"--shard {value!r}: expected i/N, e.g. 1/4")
    i, n = int(match[1]), int(match[2])
    if n < 1 or not 1 <= i <= n:
        raise ShardError(f"--shard {value!r}: i must be between 1 and N (and N at least 1)")
    return i, n


def shard_slice(run_ids: list[str], index: int, count: int) -> list[str]:
    """The run ids shard `index`/`count` (1-based) takes: every count-th, starting at position index-1."""
    if count < 1 or not 1 <= index <= count:
        raise ShardError(f"shard {index}/{count}: i must be between 1 and N")
    return list(run_ids[index - 1::count])


def run_id(run: dict) -> str:
    return f"{run['scenario']}#{run['repetition']}"


def shard_inputs(paths: list[Path]) -> list[Path]:
    """Files as given; a folder stands for every results.json under it (as download-artifact lays them out)."""
    files: list[Path] = []
    for path in paths:
        path = Path(path)
        if path.is_dir():
            found = sorted(path.rglob("results.json"))
            if not found:
                raise ShardError(f"{path}: no results.json under this folder")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise ShardError(f"{path}: no such file or folder")
    seen: set[Path] = set()
    unique = []
    for f in files:
        if f.resolve() not in seen:
            seen.add(f.resolve())
            unique.append(f)
    return unique


def load_shard(path: Path) -> dict:
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ShardError(f"{path}: cannot read it as JSON: {e}") from None
    try:
        check_document(doc, str(path), "shard results document")
    except ValueError as e:
        raise ShardError(str(e)) from None
    if not isinstance(doc.get("shard"), str) or not isinstance(doc.get("planned_runs"), list):
        raise ShardError(f"{path}: not a shard's document (no \"shard\" and \"planned_runs\": "
                         f"was it written by `remanence run --shard i/N`?)")
    parse_shard(doc["shard"])
    try:
        check_fields(doc, str(path), {"runs": list, "started_at": str, "finished_at": str, "tool": dict})
        for i, run in enumerate(doc["runs"]):
            check_fields(run, f"{path}: runs[{i}]", {"scenario": str, "repetition": int})
        for i, rid in enumerate(doc["planned_runs"]):
            if not isinstance(rid, str):
                raise ValueError(f"{path}: planned_runs[{i}]: expected a run id string, got {type(rid).__name__}")
    except ValueError as e:
        raise ShardError(str(e)) from None
    return doc


def _listing(ids: list[str], limit: int = 50) -> str:
    return ", ".join(ids[:limit]) + (f", ... ({len(ids) - limit} more)" if len(ids) > limit else "")


def merge_documents(shards: list[tuple[str, dict]]) -> dict:
    """One document from the shards' documents: [(source name, document), ...]. Raises ShardError when the
    shards do not add up to their plan: another N or plan, a run missing, a run present twice."""
    if not shards:
        raise ShardError("no shard documents given")
    first_source, first = shards[0]
    n = parse_shard(first["shard"])[1]
    planned = list(first["planned_runs"])
    for source, doc in shards[1:]:
        if doc["schema_version"] != first["schema_version"]:
            raise ShardError(f"{source} has schema_version {doc['schema_version']}, {first_source} has {first['schema_version']}")
        if parse_shard(doc["shard"])[1] != n:
            raise ShardError(f"{source} is shard {doc['shard']}, {first_source} is shard {first['shard']}: "
                             "all shards must split the plan the same way (same N)")
        if list(doc["planned_runs"]) != planned:
            raise ShardError(f"{source} and {first_source} planned different runs (different scenarios, --method "
                             "or --repeat?): the shards must come from the same plan")
    where: dict[str, list[str]] = {}
    for source, doc in shards:
        for run in doc["runs"]:
            where.setdefault(run_id(run), []).append(f"{source} [{doc['shard']}]")
    unplanned = [rid for rid in where if rid not in planned]
    duplicated = [rid for rid in planned if len(where.get(rid, [])) > 1]
    missing = [rid for rid in planned if rid not in where]
    problems = []
    if duplicated:
        problems.append(f"{len(duplicated)} run(s) appear in more than one shard document: "
                        + _listing([f"{rid} (in {', '.join(where[rid])})" for rid in duplicated]))
    if missing:
        got = sorted({doc["shard"] for _, doc in shards}, key=lambda s: parse_shard(s)[0])
        problems.append(f"{len(missing)} planned run(s) are in no shard document (shards given: {', '.join(got)} of {n}; "
                        f"a shard missing or interrupted?): {_listing(missing)}")
    if unplanned:
        problems.append(f"run(s) not in the plan: {_listing(unplanned)}")
    if problems:
        raise ShardError("cannot merge: " + "; ".join(problems))

    order = {rid: i for i, rid in enumerate(planned)}
    runs: list[tuple[int, dict]] = []
    verdicts: list[tuple[int, int, dict]] = []
    for _, doc in shards:
        runs += [(order[run_id(r)], r) for r in doc["runs"]]
        for j, v in enumerate(doc["verdicts"]):
            v = {k: val for k, val in v.items() if k != "gate"}
            verdicts.append((order[f"{v['scenario']}#{v['repetition']}"], j, v))
    merged_runs = [r for _, r in sorted(runs, key=lambda t: t[0])]
    merged_verdicts = [v for *_, v in sorted(verdicts, key=lambda t: (t[0], t[1]))]
    by_index = sorted(shards, key=lambda s: parse_shard(s[1]["shard"])[0])
    doc = {
        "schema": first["schema"], "schema_version": first["schema_version"],
        "secrets_shown": any(d.get("secrets_shown") for _, d in shards),
        "tool": first["tool"],
        "started_at": min(d["started_at"] for _, d in shards),
        "finished_at": max(d["finished_at"] for _, d in shards),
        "interrupted": any(d.get("interrupted") for _, d in shards),
        "exit_code": 0,
        "machine": by_index[0][1].get("machine", {}),
        "summary": document_counts(merged_verdicts),
        "aggregates": document_aggregates(merged_verdicts),
        "runs": merged_runs,
        "verdicts": merged_verdicts,
        "planned_runs": planned,
        "merged_from": [{"source": source, "shard": d["shard"], "runs": len(d["runs"]), "tool": d.get("tool"),
                         "started_at": d["started_at"], "finished_at": d["finished_at"], "exit_code": d.get("exit_code"),
                         "machine": d.get("machine", {})} for source, d in by_index],
    }
    doc["exit_code"] = doc_exit_code(doc)
    return doc
