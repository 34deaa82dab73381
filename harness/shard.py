"""Sharding a plan across CI jobs, and merging the shards' results documents back into one.

The slicing rule: the plan's run ids (`scenario#repetition`) in plan order (scenarios sorted by name, then
repetitions 1..R) are dealt out round-robin: run k (0-based) goes to shard (k mod N) + 1. It depends only
on the plan (scenario files, names, --method, --repeat), never on the machine or on timing, so every shard
computes the same slices. Repetitions of a repeated (GC-dependent) scenario are spread over the shards on
purpose: they are the expensive runs, each repetition is an independent process judged on its own, and
the rates (`aggregates`) are computed over all of them after the merge, so spreading them balances the
shards and costs nothing.

A shard's document records "shard": "i/N", "planned_runs" (every run id of the full plan, in order) and
"shard_runs" (its own). `merge_documents` checks them and builds, with document.merge, the document an unsharded
run would have produced: runs and verdicts in plan order, summary, aggregates and exit code recomputed.
"""
from __future__ import annotations

import re
from pathlib import Path

from .document import ABSENT, Document, DocumentError, MergedFrom, merge, read

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


def load_shard(path: Path) -> Document:
    try:
        doc = read(path, "shard results document", needs=("runs", "started_at", "finished_at", "tool"))
    except DocumentError as e:
        raise ShardError(str(e)) from None
    if doc.shard is ABSENT or doc.planned_runs is ABSENT:
        raise ShardError(f"{path}: not a shard's document (no \"shard\" and \"planned_runs\": "
                         f"was it written by `remanence run --shard i/N`?)")
    parse_shard(doc.shard)
    return doc


def _listing(ids: list[str], limit: int = 50) -> str:
    return ", ".join(ids[:limit]) + (f", ... ({len(ids) - limit} more)" if len(ids) > limit else "")


def merge_documents(shards: list[tuple[str, Document]]) -> dict:
    """One document from the shards' documents: [(source name, document), ...]. Raises ShardError when the
    shards do not add up to their plan: another N or plan, a run missing, a run present twice."""
    if not shards:
        raise ShardError("no shard documents given")
    first_source, first = shards[0]
    n = parse_shard(first.shard)[1]
    planned = list(first.planned_runs)
    for source, doc in shards[1:]:
        if parse_shard(doc.shard)[1] != n:
            raise ShardError(f"{source} is shard {doc.shard}, {first_source} is shard {first.shard}: "
                             "all shards must split the plan the same way (same N)")
        if list(doc.planned_runs) != planned:
            raise ShardError(f"{source} and {first_source} planned different runs (different scenarios, --method "
                             "or --repeat?): the shards must come from the same plan")
    where: dict[str, list[str]] = {}
    for source, doc in shards:
        for run in doc.runs:
            where.setdefault(run.run_id, []).append(f"{source} [{doc.shard}]")
    unplanned = [rid for rid in where if rid not in planned]
    unplanned += [v.run_id for _, doc in shards for v in doc.verdicts if v.run_id not in planned and v.run_id not in where]
    duplicated = [rid for rid in planned if len(where.get(rid, [])) > 1]
    missing = [rid for rid in planned if rid not in where]
    problems = []
    if duplicated:
        problems.append(f"{len(duplicated)} run(s) appear in more than one shard document: "
                        + _listing([f"{rid} (in {', '.join(where[rid])})" for rid in duplicated]))
    if missing:
        got = sorted({doc.shard for _, doc in shards}, key=lambda s: parse_shard(s)[0])
        problems.append(f"{len(missing)} planned run(s) are in no shard document (shards given: {', '.join(got)} of {n}; "
                        f"a shard missing or interrupted?): {_listing(missing)}")
    if unplanned:
        problems.append(f"run(s) not in the plan: {_listing(list(dict.fromkeys(unplanned)))}")
    if problems:
        raise ShardError("cannot merge: " + "; ".join(problems))

    by_index = sorted(shards, key=lambda s: parse_shard(s[1].shard)[0])
    doc = merge([d for _, d in by_index], run_order=planned)
    doc.planned_runs = planned
    doc.merged_from = [MergedFrom(source, d.shard, len(d.runs), d.tool.to_json(), d.started_at, d.finished_at, d.exit_code,
                                  d.machine) for source, d in by_index]
    return doc.to_json()
