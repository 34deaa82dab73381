"""--shard i/N and `remanence merge`: deterministic disjoint slices, and merged shards equal an unsharded run."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import jsonschema
import pytest

from remanence.cli import main
from remanence.document import Document, schema
from remanence.shard import ShardError, merge_documents, parse_shard, shard_slice
from remanence.targets import PROJECT_ROOT
from suite_run import require

SCENARIOS = PROJECT_ROOT / "scenarios"
SCHEMA = schema()


# --- slicing -----------------------------------------------------------------------------------------------

def ids(counts: dict[str, int]) -> list[str]:
    return [f"{name}#{r}" for name, n in counts.items() for r in range(1, n + 1)]


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 50])
def test_slices_are_disjoint_cover_the_plan_and_keep_plan_order(n):
    planned = ids({"a": 1, "b": 5, "c": 2, "d": 1, "e": 3})
    slices = [shard_slice(planned, i, n) for i in range(1, n + 1)]
    flat = [rid for s in slices for rid in s]
    assert sorted(flat) == sorted(planned) and len(flat) == len(set(flat))
    for s in slices:
        assert s == [rid for rid in planned if rid in s]
    sizes = [len(s) for s in slices]
    assert max(sizes) - min(sizes) <= 1


def test_slices_are_deterministic_and_follow_the_documented_rule():
    planned = ids({"gc.heavy": 6, "x": 1, "y": 1})
    assert shard_slice(planned, 1, 3) == shard_slice(list(planned), 1, 3)
    for i in (1, 2, 3):
        assert shard_slice(planned, i, 3) == [rid for k, rid in enumerate(planned) if k % 3 == i - 1]
    # repetitions of a repeated scenario are spread over the shards
    assert {i for i in (1, 2, 3) for rid in shard_slice(planned, i, 3) if rid.startswith("gc.heavy#")} == {1, 2, 3}


def test_more_shards_than_runs_leaves_some_empty():
    assert [shard_slice(["a#1", "b#1"], i, 3) for i in (1, 2, 3)] == [["a#1"], ["b#1"], []]


@pytest.mark.parametrize("value", ["0/2", "3/2", "1/0", "x", "1/", "-1/2", "1/2/3"])
def test_bad_shard_values(value):
    with pytest.raises(ShardError):
        parse_shard(value)


def test_shard_value():
    assert parse_shard("2/4") == (2, 4) and parse_shard(" 1 / 1 ") == (1, 1)


def shard_doc(shard: str, planned: list[str], runs: list[str]) -> Document:
    return Document.from_json({"schema": "remanence-results", "schema_version": 1, "secrets_shown": False, "tool": {"name": "remanence", "version": "t"},
            "started_at": "2026-01-01T00:00:0" + shard[0] + "Z", "finished_at": "2026-01-01T00:01:00Z", "interrupted": False,
            "exit_code": 0, "machine": {}, "summary": {}, "aggregates": [],
            "runs": [{"scenario": r.split("#")[0], "repetition": int(r.split("#")[1])} for r in runs],
            "verdicts": [{"scenario": r.split("#")[0], "repetition": int(r.split("#")[1]), "checkpoint": "c", "method": "procmem",
                          "expect": "present", "outcome": "FAIL" if r == "b#2" else "PASS", "hits": [],
                          "gate": {"state": "new", "suppression": None}} for r in runs],
            "shard": shard, "planned_runs": planned, "shard_runs": runs}, f"shard {shard}")


def test_merge_orders_by_plan_and_recomputes():
    planned = ids({"a": 1, "b": 3})
    docs = [(f"s{i}", shard_doc(f"{i}/2", planned, shard_slice(planned, i, 2))) for i in (2, 1)]
    merged = merge_documents(docs)
    assert [f"{r['scenario']}#{r['repetition']}" for r in merged["runs"]] == planned
    assert merged["summary"]["PASS"] == 3 and merged["summary"]["FAIL"] == 1 and merged["exit_code"] == 1
    assert merged["aggregates"][1]["outcomes"] == {"PASS": 2, "FAIL": 1} and merged["aggregates"][1]["runs"] == 3
    assert all("gate" not in v for v in merged["verdicts"])     # the shards' gates are dropped: merge gates anew
    assert [m["source"] for m in merged["merged_from"]] == ["s1", "s2"] and "shard" not in merged
    assert merged["started_at"] == "2026-01-01T00:00:01Z"


def test_merge_refuses_other_n_and_other_plans():
    planned = ids({"a": 2})
    with pytest.raises(ShardError, match="same N"):
        merge_documents([("x", shard_doc("1/2", planned, ["a#1"])), ("y", shard_doc("2/3", planned, ["a#2"]))])
    with pytest.raises(ShardError, match="planned different runs"):
        merge_documents([("x", shard_doc("1/2", planned, ["a#1"])), ("y", shard_doc("2/2", ["a#1"], ["a#2"]))])


# --- real runs ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """scenarios/c with procmem: shard 1/2, shard 2/2 and unsharded, each (exit code, results.json, folder)."""
    require("c", "procmem")
    tmp = tmp_path_factory.mktemp("shards")
    done = {}
    for name, extra in (("1", ["--shard", "1/2"]), ("2", ["--shard", "2/2"]), ("full", [])):
        out = tmp / name
        code = main(["run", "-q", "--scenarios", str(SCENARIOS / "c"), "--method", "procmem", "--out", str(out),
                     "--config", str(empty_config(tmp)), *extra])
        done[name] = (code, json.loads((out / "results.json").read_text()), out)
    return done


def empty_config(tmp: Path) -> Path:
    """An empty config, so a remanence.toml in the working folder cannot change these runs."""
    path = tmp / "empty.toml"
    path.write_text("")
    return path


def key(doc: dict) -> list[tuple]:
    return sorted((v["scenario"], v["repetition"], v["checkpoint"], v["method"], v["outcome"]) for v in doc["verdicts"])


def test_shard_documents_record_their_slice(runs):
    (_, one, _), (_, two, _), (_, full, _) = runs["1"], runs["2"], runs["full"]
    planned = [f"{r['scenario']}#{r['repetition']}" for r in full["runs"]]
    assert one["planned_runs"] == two["planned_runs"] == planned
    assert one["shard"] == "1/2" and two["shard"] == "2/2"
    assert one["shard_runs"] == shard_slice(planned, 1, 2) and two["shard_runs"] == shard_slice(planned, 2, 2)
    assert [f"{r['scenario']}#{r['repetition']}" for r in one["runs"]] == one["shard_runs"]
    assert not set(one["shard_runs"]) & set(two["shard_runs"])
    assert "shard" not in full and "planned_runs" not in full
    for doc in (one, two):
        jsonschema.validate(doc, SCHEMA)


def test_merged_shards_equal_the_unsharded_run(runs, tmp_path, capsys):
    (_, _, one), (_, _, two), (full_code, full, _) = runs["1"], runs["2"], runs["full"]
    code = main(["merge", str(tmp_path / "merged"), str(one / "results.json"), str(two), "--config", str(empty_config(tmp_path))])
    captured = capsys.readouterr()
    merged = json.loads((tmp_path / "merged" / "results.json").read_text())
    assert key(merged) == key(full) and len(key(merged)) > 0
    assert merged["summary"] == full["summary"]
    assert merged["aggregates"] == full["aggregates"]
    assert code == full_code == merged["exit_code"] == full["exit_code"]
    assert [(r["scenario"], r["repetition"]) for r in merged["runs"]] == [(r["scenario"], r["repetition"]) for r in full["runs"]]
    assert [m["shard"] for m in merged["merged_from"]] == ["1/2", "2/2"]
    assert "remanence verdicts" in captured.out and "merged 2 shard document(s)" in captured.err
    jsonschema.validate(merged, SCHEMA)


def test_merge_refuses_a_missing_shard(runs, tmp_path, capsys):
    (_, _, one), (_, two_doc, _) = runs["1"], runs["2"]
    code = main(["merge", str(tmp_path / "merged"), str(one)])
    err = capsys.readouterr().err
    assert code == 2 and not (tmp_path / "merged" / "results.json").exists()
    assert "planned run(s) are in no shard document" in err and "shards given: 1/2 of 2" in err
    for rid in two_doc["shard_runs"]:
        assert rid in err


def test_merge_refuses_a_duplicated_shard(runs, tmp_path, capsys):
    (_, one_doc, one), (_, _, two) = runs["1"], runs["2"]
    copy = tmp_path / "copy-of-1"
    shutil.copytree(one, copy)
    code = main(["merge", str(tmp_path / "merged"), str(one), str(two), str(copy / "results.json")])
    err = capsys.readouterr().err
    assert code == 2 and not (tmp_path / "merged" / "results.json").exists()
    assert "appear in more than one shard document" in err
    for rid in one_doc["shard_runs"]:
        assert f"{rid} (in " in err


def test_merge_refuses_what_is_not_a_shard(runs, tmp_path, capsys):
    (_, _, one), (_, _, full) = runs["1"], runs["full"]
    code = main(["merge", str(tmp_path / "merged"), str(one), str(full / "results.json")])
    assert code == 2 and "not a shard's document" in capsys.readouterr().err
    (tmp_path / "old.json").write_text(json.dumps({"schema": "remanence-results", "schema_version": 99, "verdicts": []}))
    code = main(["merge", str(tmp_path / "merged"), str(one), str(tmp_path / "old.json")])
    assert code == 2 and "schema_version 99" in capsys.readouterr().err
    code = main(["merge", str(tmp_path / "merged"), str(tmp_path / "nothing-here")])
    assert code == 2 and "no such file or folder" in capsys.readouterr().err


def test_merge_applies_the_gate(runs, tmp_path, capsys):
    (_, _, one), (_, _, two) = runs["1"], runs["2"]
    config = tmp_path / "gate.toml"
    config.write_text('[[suppress]]\nscenario = "nothing.here"\nreason = "r"\nexpires = 2020-01-01\n')
    code = main(["merge", "-q", str(tmp_path / "merged"), str(one), str(two), "--config", str(config)])
    merged = json.loads((tmp_path / "merged" / "results.json").read_text())
    assert code == 1 and merged["exit_code"] == 1 and merged["gate"]["config"] == str(config)
    assert "expired on 2020-01-01" in capsys.readouterr().err
