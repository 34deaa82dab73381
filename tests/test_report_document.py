"""harness/document.py: results.json built from Results, written (version 2), read back (versions 1 and 2), merged,
and refused in one line when broken."""
from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from remanence.cli import main
from remanence.document import ABSENT, Document, DocumentError, dumps, merge, pack, read, schema
from remanence.model import Expect, Gap, GapKind, Hit, Outcome, Region, RegionKind, Snapshot
from remanence.report.json_report import JsonReporter
from remanence.results import Results, RunRecord
from remanence.scan.context import HitContext
from remanence.scenario import MethodExpectation, Scenario, SecretSpec
from remanence.shard import merge_documents
from remanence.verdict import ProcessView, Verdict, judge_processes

GOLDEN = Path(__file__).parent / "golden"
V1_SAMPLE = GOLDEN / "sample-results.json"            # version 1 documents, written before version 2 existed
V1_DERIVED = GOLDEN / "sample-derived-results.json"   # (with processes followed and `remanence scan` subjects)

HEAP = Region(0x5000_0000, 0x21000, "rw-p", RegionKind.HEAP, "[heap]", 4096, locked=False, dont_dump=False)
STACK = Region(0x7ffe_0000, 0x21000, "rw-p", RegionKind.STACK, "[stack]", 0x22000)


def snapshot(pid: int, command: str) -> Snapshot:
    return Snapshot("procmem", Path("/nonexistent"), [HEAP, STACK],
                    [Gap(0x6000_0000, 8192, "[vvar]", GapKind.KERNEL, "kernel-owned")], duration_s=0.01234,
                    notes=["a note"], pid=pid, command=command)


def judged(scenario: str, repetition: int, checkpoint: str, expect: Expect, hits: list[Hit], subject: str = "secret",
           processes: int = 1) -> Verdict:
    """A verdict as the runner makes one: the judge decides outcome, reason, findings and kind."""
    views = [ProcessView(snapshot(100 + i, f"prog {i}"), hits if i == 0 else [], True) for i in range(processes)]
    outcome, reason, findings, kind = judge_processes(
        expectation=MethodExpectation(expect, "because"), views=views, intended_address=HEAP.start + 16,
        control_established=True, control_note="planted copy seen", intended_flags={})
    findings = [f.__class__(f.hit, f.in_intended_region, f.guarded, HitContext(-4, bytes(range(40)), ((4, 36),)))
                for f in findings]
    return Verdict(scenario, repetition, checkpoint, "procmem", expect, "because", outcome, reason, findings,
                   canary_seen=True, snapshot=views[0].snapshot, scan_bytes=4096, scan_duration_s=0.5,
                   intended_address=HEAP.start + 16, subject=subject, processes=views if processes > 1 else [],
                   kind=kind)


def record(scenario: str, repetition: int) -> RunRecord:
    s = Scenario(scenario, "a demo", "c", scenario, ("procmem",), 2, 10, SecretSpec(), (), Path("scenarios/c/x.toml"))
    run = RunRecord(s, repetition, SecretSpec(), "0123456789ab", "ba9876543210", 4242, "exit status 0", ["wiped=true"])
    leak = Hit("secret", "raw", HEAP.start + 64, 4096 + 64, 32, HEAP, pid=100, command="prog 0")
    run.verdicts = [judged(scenario, repetition, "freed", Expect.ABSENT, [leak]),
                    judged(scenario, repetition, "freed", Expect.ABSENT, [], subject="derived:rx", processes=2),
                    Verdict(scenario, repetition, "exit", "procmem", Expect.ABSENT, "because", Outcome.ERROR,
                            "checkpoint never reached")]
    return run


def results(*runs: tuple[str, int]) -> Results:
    return Results([record(*r) for r in runs], "2026-01-01T00:00:00Z", "2026-01-01T00:00:09Z", machine={"cores": 2})


def test_results_to_json_and_back_is_the_same_document():
    doc = Document.from_results(results(("demo.leak", 1), ("demo.leak", 2)))
    data = doc.to_json()
    file = json.loads(JsonReporter().render(data))
    jsonschema.validate(file, schema())
    again = Document.from_json(file, "results.json")
    assert again == doc and again.to_json() == data
    assert Document.from_json(json.loads(json.dumps(data)), "plain data") == doc    # what xdist workers send
    assert [v["kind"] for v in data["verdicts"][:3]] == ["leak", "absent", "error"]
    assert list(data)[-1] == "verdicts" and list(data["verdicts"][0]["hits"][0])[-1] == "fingerprint"
    assert "processes" not in data["verdicts"][0] and len(data["verdicts"][1]["processes"]) == 2
    assert data["verdicts"][0]["hits"][0]["context"]["bytes"].split()[4] == "**"    # masked unless --show-secrets
    assert data["summary"] == {"PASS": 2, "FAIL": 2, "INCONCLUSIVE": 0, "ERROR": 2, "SKIP": 0} and data["exit_code"] == 1


def test_a_document_without_kinds_reads_and_stays_without_them():
    data = Document.from_results(results(("demo.leak", 1))).to_json()
    for v in data["verdicts"]:
        del v["kind"]
    doc = Document.from_json(data, "old.json")
    assert all(v.kind is ABSENT for v in doc.verdicts) and "kind" not in doc.to_json()["verdicts"][0]
    assert [v.effective_kind() and v.effective_kind().value for v in doc.verdicts] == ["leak", None, "error"]


def shard(index: int, planned: list[str], runs: list[tuple[str, int]]) -> Document:
    doc = Document.from_results(results(*runs))
    doc.shard, doc.planned_runs, doc.shard_runs = f"{index}/2", planned, [f"{s}#{r}" for s, r in runs]
    return doc


def test_two_shards_merge_into_the_unsharded_document():
    plan = [("a", 1), ("a", 2), ("b", 1)]
    planned = [f"{s}#{r}" for s, r in plan]
    whole = Document.from_results(results(*plan)).to_json()
    merged = merge_documents([("two", shard(2, planned, [plan[1]])), ("one", shard(1, planned, [plan[0], plan[2]]))])
    jsonschema.validate(pack(merged), schema())
    assert merged["verdicts"] == whole["verdicts"] and merged["runs"] == whole["runs"]
    assert (merged["summary"], merged["aggregates"], merged["exit_code"]) == (whole["summary"], whole["aggregates"], 1)
    assert [m["shard"] for m in merged["merged_from"]] == ["1/2", "2/2"] and merged["planned_runs"] == planned
    # The pytest plugin's merge (scenarios and workers, no plan) is the same function.
    plain = merge([Document.from_results(results(plan[0])), Document.from_results(results(*plan[1:]))]).to_json()
    assert plain["verdicts"] == whole["verdicts"] and plain["aggregates"] == whole["aggregates"]


def test_the_file_holds_each_snapshot_once_and_verdicts_refer_to_it():
    data = Document.from_results(results(("demo.leak", 1))).to_json()
    file = json.loads(dumps(data))
    verdicts = file["verdicts"]
    # secret and derived:rx were judged on one snapshot (the target's, pid 100); the derived verdict follows two
    # processes: the target's image again, and pid 101's.
    assert [s["pid"] for s in file["snapshots"]] == [100, 101]
    assert verdicts[0]["snapshot"] == verdicts[1]["snapshot"] == verdicts[1]["processes"][0]["snapshot"] == 0
    assert verdicts[1]["processes"][1]["snapshot"] == 1 and verdicts[2]["snapshot"] is None
    assert len(file["regions"]) == 2 and file["snapshots"][1]["regions"] == [0, 1] and len(file["gaps"]) == 1
    [hit] = verdicts[0]["hits"]
    assert file["regions"][file["snapshots"][0]["regions"][hit["region"]]]["name"] == "[heap]"
    assert "thread" not in file["regions"][0] and "command" not in hit     # null keys, and the snapshot's command
    assert read_back(file).verdicts[0].hits[0].command == "prog 0"
    assert file["contexts"][hit["context"]]["bytes"].split()[4] == "**"
    assert all(line.startswith(("{", "}", "  ")) for line in dumps(data).splitlines())    # one line per entry
    assert len(dumps(data).splitlines()) < 60


def read_back(file: dict) -> Document:
    return Document.from_json(json.loads(json.dumps(file)), "results.json")


def test_an_image_served_to_a_second_method_is_one_entry():
    data = Document.from_results(results(("demo.leak", 1))).to_json()
    own = data["verdicts"][0] = {**data["verdicts"][0], "method": "gcore",
                                 "snapshot": {**data["verdicts"][0]["snapshot"], "method": "gcore"}}
    served = {**own, "method": "gcore-all", "snapshot": {**own["snapshot"], "method": "gcore-all", "duration_s": 0.0,
                                                         "notes": ["served by the gcore dump", *own["snapshot"]["notes"]],
                                                         "served_by": {"method": "gcore", "why": "same dump"}}}
    data["verdicts"] = [served, own]
    file = json.loads(dumps(data))
    jsonschema.validate(file, schema())
    assert len(file["snapshots"]) == 1 and "served_by" not in file["snapshots"][0]
    assert file["verdicts"][0]["snapshot"] == {"image": 0, **{k: served["snapshot"][k] for k in
                                                              ("method", "duration_s", "notes", "served_by")}}
    assert file["verdicts"][1]["snapshot"] == 0
    assert Document.from_json(file, "results.json").to_json()["verdicts"] == data["verdicts"]


@pytest.mark.parametrize("sample", [V1_SAMPLE, V1_DERIVED], ids=["sample", "derived"])
def test_a_version_1_file_reads_into_the_same_document_as_its_version_2(sample):
    old = read(sample)
    jsonschema.validate(json.loads(sample.read_text()), schema(1))
    file = json.loads(dumps(old.to_json()))
    jsonschema.validate(file, schema())
    again = Document.from_json(file, "results.json")
    assert again.verdicts == old.verdicts and again.runs == old.runs and again.schema_version == 2
    assert len(dumps(old.to_json())) < len(sample.read_text()) / 2


BROKEN = {
    "not JSON": ("{\"schema\": ", "cannot read it as JSON"),
    "foreign": (json.dumps({"schema": "something-else"}), 'not a remanence results document (no "schema": "remanence-results")'),
    "version": (json.dumps({"schema": "remanence-results", "schema_version": 3, "verdicts": []}),
                "schema_version 3: this remanence reads 1 and 2"),
    "verdict": ({"verdicts": [1]}, "verdicts[0]: expected an object, got int"),
    "outcome": ({"verdicts": [{"scenario": "s", "repetition": 1, "checkpoint": "c", "method": "m", "outcome": "MAYBE"}]},
                "verdicts[0].outcome: 'MAYBE' is not one of PASS, FAIL, INCONCLUSIVE, ERROR, SKIP"),
    "kind": ({"verdicts": [{"scenario": "s", "repetition": 1, "checkpoint": "c", "method": "m", "outcome": "PASS",
                            "kind": 3}]}, "verdicts[0].kind: 3 is not one of leak"),
    "hit": ({"verdicts": [{"scenario": "s", "repetition": 1, "checkpoint": "c", "method": "m", "outcome": "FAIL",
                           "hits": [{"fingerprint": 7}]}]}, "verdicts[0].hits[0].fingerprint: expected str, got int"),
    "missing": ({"verdicts": [{"scenario": "s", "repetition": 1, "checkpoint": "c", "outcome": "FAIL"}]},
                "verdicts[0]: method is missing"),
    "run": ({"verdicts": [], "runs": [{"scenario": "s", "repetition": "1"}]}, "runs[0].repetition: expected int, got str"),
}


def v2_file(change) -> str:
    """The version 2 file of a small run, changed by `change` (a function of its parsed JSON)."""
    file = json.loads(dumps(Document.from_results(results(("demo.leak", 1))).to_json()))
    change(file)
    return json.dumps(file)


BROKEN_V2 = {
    "table": (lambda f: f.pop("contexts"), "contexts: expected a list, got null"),
    "snapshot": (lambda f: f["verdicts"][0].update(snapshot=7), "verdicts[0].snapshot: 7 is not an index in snapshots (it has 2)"),
    "image": (lambda f: f["verdicts"][1].update(snapshot={"method": "gcore"}),
              "verdicts[1].snapshot.image: expected an index in snapshots, got null"),
    "process": (lambda f: f["verdicts"][1]["processes"][1].update(snapshot="1"),
                "verdicts[1].processes[1].snapshot: expected an index in snapshots, got str"),
    "region": (lambda f: f["snapshots"][0]["regions"].append(9), "snapshots[0].regions[2]: 9 is not an index in regions"),
    "hit": (lambda f: f["verdicts"][0]["hits"][0].update(region=5),
            "verdicts[0].hits[0].region: 5 is not an index in its snapshot's regions (it has 2)"),
    "context": (lambda f: f["verdicts"][0]["hits"][0].update(context=-1), "verdicts[0].hits[0].context: -1 is not an index in contexts"),
}
BROKEN.update({f"v2 {name}": (v2_file(change), message) for name, (change, message) in BROKEN_V2.items()})


@pytest.mark.parametrize("name", BROKEN)
def test_a_broken_document_is_one_line_naming_file_and_key(tmp_path, name):
    content, message = BROKEN[name]
    if isinstance(content, dict):
        content = json.dumps({"schema": "remanence-results", "schema_version": 1, **content})
    path = tmp_path / "results.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DocumentError) as e:
        read(path)
    assert str(e.value).startswith(f"{path}: ") and message in str(e.value) and "\n" not in str(e.value)


def test_merge_of_a_broken_document_is_one_line_on_the_command_line(tmp_path, capsys):
    path = tmp_path / "results.json"
    shard_doc = {**json.loads(dumps(shard(1, ["a#1"], [("a", 1)]).to_json())), "verdicts": [{}]}
    path.write_text(json.dumps(shard_doc), encoding="utf-8")
    capsys.readouterr()
    assert main(["merge", "-q", str(tmp_path / "merged"), str(path)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"remanence: {path}: verdicts[0]: scenario is missing"
    assert not (tmp_path / "merged").exists()


def test_merge_of_a_version_1_and_a_version_2_shard_gated_by_a_version_1_baseline(tmp_path, capsys):
    old = json.loads(V1_SAMPLE.read_text())
    planned = [f"{r['scenario']}#{r['repetition']}" for r in old["runs"]] + ["demo.leak#1"]
    one, two, config = tmp_path / "one.json", tmp_path / "two.json", tmp_path / "empty.toml"
    one.write_text(json.dumps({**old, "shard": "1/2", "planned_runs": planned, "shard_runs": planned[:-1]}))
    two.write_text(dumps(shard(2, planned, [("demo.leak", 1)]).to_json()))
    config.write_text("")
    capsys.readouterr()
    code = main(["merge", "-q", str(tmp_path / "merged"), str(one), str(two), "--baseline", str(V1_SAMPLE),
                 "--config", str(config), "--format", "json"])
    assert capsys.readouterr().err == ""
    file = json.loads((tmp_path / "merged" / "results.json").read_text())
    jsonschema.validate(file, schema())
    merged = read(tmp_path / "merged" / "results.json")
    assert [v.run_id for v in merged.verdicts][:15] == [v.run_id for v in read(V1_SAMPLE).verdicts]
    assert [dict(v.to_json(), gate=None) for v in merged.verdicts[:15]] == \
           [dict(v.to_json(), gate=None) for v in read(V1_SAMPLE).verdicts]
    states = {(v.scenario, v.outcome.value): v.gate["state"] for v in merged.verdicts if v.gate}
    assert states == {("malloc.memset", "FAIL"): "baseline", ("secret.return", "SKIP"): "baseline",
                      ("selftest.crash", "ERROR"): "baseline", ("demo.leak", "FAIL"): "new", ("demo.leak", "ERROR"): "new"}
    assert code == 1 and merged.exit_code == 1


def test_aggregates_say_where_the_secret_survives_beside_the_gate():
    from remanence.document import HitEntry, RegionEntry, VerdictEntry, aggregates

    def verdict(repetition: int, outcome: Outcome, *hits: tuple[bool, str]) -> VerdictEntry:
        return VerdictEntry("s", repetition, "after", "procmem", expect="absent", outcome=outcome,
                            hits=[HitEntry("f", full=full, region=RegionEntry(kind=kind)) for full, kind in hits])

    [agg] = aggregates([verdict(1, Outcome.FAIL, (True, "heap"), (False, "stack")),
                        verdict(2, Outcome.FAIL, (False, "registers")),
                        verdict(3, Outcome.PASS), verdict(4, Outcome.INCONCLUSIVE), verdict(5, Outcome.ERROR)])
    assert (agg.runs, agg.found, agg.full, agg.fragments, agg.clean, agg.unknown) == (5, 2, 1, 1, 1, 2)
    assert agg.regions == ["heap", "registers", "stack"]
    assert agg.outcomes == {"FAIL": 2, "PASS": 1, "INCONCLUSIVE": 1, "ERROR": 1}
    jsonschema.validate({"aggregates": [agg.to_json()]}, {**schema(), "required": []})
