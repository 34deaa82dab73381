"""Every reporter tells subjects apart: the planted secret, values a target derived from it (`derived:<label>`),
and the labelled values of a `remanence scan`. A document written before verdicts had a subject reads as all-secret,
and renders exactly as before.

The golden files themselves are checked in test_report_formats.py and test_report_html.py; these tests pin what
the subject-aware output must say.
"""
from __future__ import annotations

import copy
import re
import xml.etree.ElementTree as ET
from collections import Counter

from rich.console import Console

from remanence.report.html_report import HtmlReporter, build_view
from remanence.report.junit_report import JunitReporter
from remanence.report.markdown_report import MarkdownReporter
from remanence.report.sarif_report import SarifReporter
from remanence.report.terminal import print_verdicts
from remanence.document import Document
from remanence.results import fingerprint
from test_report_formats import assert_valid_sarif, document, hit, sample, verdict

RX, TX = "derived:session_rx", "derived:session_tx"


def derived() -> dict:
    return sample("sample-derived")


def with_subject(v: dict, subject: str) -> dict:
    """A verdict about `subject`, its fingerprints (hits' and its own) as the document writes them."""
    v = copy.deepcopy(v)
    v["subject"] = subject
    for h in v["hits"]:
        kind = h["region"]["kind"]
        h["fingerprint"] = fingerprint(v["scenario"], v["method"], v["checkpoint"], kind, h["encoding"], subject)
    v["fingerprints"] = sorted({h["fingerprint"] for h in v["hits"]}) or [
        fingerprint(v["scenario"], v["method"], v["checkpoint"], "-", "none", subject)]
    return v


def terminal(doc: dict) -> str:
    console = Console(record=True, width=400, no_color=True, force_terminal=False)
    print_verdicts(doc, console)
    return console.export_text()


def header_cells(text: str, title: str) -> list[str]:
    """The column names of the rich table under `title`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == title)
    row = next(line for line in lines[start + 1:] if line.startswith("┃"))
    return [c.strip() for c in row.strip("┃").split("┃")]


# --- documents before the field -----------------------------------------------------------------------------

def test_missing_subject_renders_like_secret(tmp_path):
    old = sample()
    assert all("subject" not in v for v in old["verdicts"])   # the golden sample predates the field
    new = Document.from_json(copy.deepcopy(old), "sample").to_json()   # read back: every field of today's documents
    assert all(v["subject"] == "secret" for v in new["verdicts"]) and new["aggregates"][0]["subject"] == "secret"
    assert JunitReporter().render(old) == JunitReporter().render(new)
    assert SarifReporter(root=tmp_path).render(old) == SarifReporter(root=tmp_path).render(new)
    assert MarkdownReporter().render(old) == MarkdownReporter().render(new)
    assert HtmlReporter().render(old) == HtmlReporter().render(new)
    assert terminal(old) == terminal(new)


def test_all_secret_documents_name_no_subject():
    doc = sample()
    assert "subject" not in MarkdownReporter().render(doc)
    assert "data-subject" not in HtmlReporter().render(doc) and 'class="subj"' not in HtmlReporter().render(doc)
    assert all("subject" not in r["properties"] for r in SarifReporter().log(doc)["runs"][0]["results"])
    assert all(re.fullmatch(r"[^ ]+\[[^ ]+\]", tc.get("name"))
               for tc in ET.fromstring(JunitReporter().render(doc)).iter("testcase"))


# --- terminal -----------------------------------------------------------------------------------------------

def test_terminal_subject_column_only_when_needed():
    plain = terminal(sample())
    assert header_cells(plain, "remanence verdicts") == ["scenario", "#", "checkpoint", "method", "expect", "verdict",
                                                         "reason"]
    assert header_cells(plain, "repetition rates") == ["scenario", "checkpoint", "method", "expect", "secret found",
                                                       "outcomes"]

    text = terminal(derived())
    assert header_cells(text, "remanence verdicts") == ["scenario", "#", "checkpoint", "method", "subject", "expect",
                                                        "verdict", "reason"]
    assert header_cells(text, "repetition rates") == ["scenario", "checkpoint", "method", "subject", "expect", "found",
                                                      "outcomes"]
    rates = text.split("repetition rates", 1)[1]
    rx_wiped = next(line for line in rates.splitlines() if "wiped" in line and RX in line)
    assert "1/2" in rx_wiped and "1/2 FAIL, 1/2 PASS" in rx_wiped
    secret_wiped = next(line for line in rates.splitlines() if "wiped" in line and "│ secret " in line)
    assert "2/2 PASS" in secret_wiped and "FAIL" not in secret_wiped
    for subject in ("api", "secret-2", TX):
        assert re.search(rf"│ {re.escape(subject)} +│", text), subject


def test_terminal_reads_aggregates_without_subject():
    """A document whose aggregates predate the field: the rates table still renders."""
    doc = derived()
    for a in doc["aggregates"]:
        a.pop("subject")
    assert "repetition rates" in terminal(doc)


# --- JUnit --------------------------------------------------------------------------------------------------

def test_junit_one_testcase_per_subject_with_unique_names():
    doc = derived()
    root = ET.fromstring(JunitReporter().render(doc))
    suites = {s.get("name"): s for s in root.findall("testsuite")}
    for suite in suites.values():
        names = [tc.get("name") for tc in suite.findall("testcase")]
        assert len(names) == len(set(names)), names
    assert [tc.get("name") for tc in suites["proto.kx"].findall("testcase")] == [
        "exchanged[procmem]", f"exchanged[procmem] {RX}", "wiped[procmem]", f"wiped[procmem] {RX}",
        f"wiped[procmem] {TX}"]
    assert [tc.get("name") for tc in suites["core.4242"].findall("testcase")] == [
        "image[core-file] api", "image[core-file] secret-2"]
    keys = {(v["scenario"], v["checkpoint"], v["method"], v["subject"]) for v in doc["verdicts"]}
    assert int(root.get("tests")) == len(keys) == 7
    assert (root.get("failures"), root.get("errors")) == ("3", "0")

    cases = {tc.get("name"): tc for tc in suites["proto.kx"].findall("testcase")}
    # The secret passed both repetitions; the derived value failed one of its two, not one of four.
    assert cases["wiped[procmem]"].find("failure") is None
    failure = cases[f"wiped[procmem] {RX}"].find("failure")
    assert failure.get("message").startswith(
        "FAIL in 1 of 2 repetitions: pid 20415 (remanence-target-c: kx worker): expected absent, found 1")   # followed
    assert failure.text.startswith(f"expect absent ({RX}): ")
    assert cases[f"wiped[procmem] {TX}"].find("failure").get("message").startswith("ERROR in 2 of 2 repetitions")


def test_junit_secret_and_derived_are_not_repetitions():
    s, c, m = "demo.kx", "freed", "procmem"
    verdicts = [verdict(s, c, m, "PASS", repetition=1), with_subject(verdict(s, c, m, "FAIL", repetition=1,
                                                                              hits=[hit(s, c, m)]), RX)]
    root = ET.fromstring(JunitReporter().render(document(verdicts)))
    secret_case, rx_case = root.findall("testsuite/testcase")
    assert (secret_case.get("name"), rx_case.get("name")) == ("freed[procmem]", f"freed[procmem] {RX}")
    assert secret_case.find("failure") is None
    assert rx_case.find("failure").get("message").startswith("FAIL in 1 of 1 repetition:")


# --- SARIF --------------------------------------------------------------------------------------------------

def test_sarif_results_per_subject(tmp_path):
    doc = derived()
    log = SarifReporter(root=tmp_path).log(doc)
    assert_valid_sarif(log)
    results = log["runs"][0]["results"]
    assert Counter(r["properties"].get("subject", "secret") for r in results) == {RX: 1, TX: 1, "api": 1}
    by_subject = {r["properties"]["subject"]: r for r in results}
    rx = by_subject[RX]
    assert rx["ruleId"] == "REM001" and rx["level"] == "error"
    assert rx["properties"]["repetitions"] == 2 and rx["properties"]["affected_repetitions"] == 1
    assert rx["properties"]["outcomes"] == {"PASS": 1, "FAIL": 1}
    assert f"a copy of {RX} remains. FAIL in 1 of 2 repetitions" in rx["message"]["text"]
    assert "the check of derived:session_tx could not run" in by_subject[TX]["message"]["text"]
    assert "a copy of api remains" in by_subject["api"]["message"]["text"]
    for subject, result in by_subject.items():
        mine = [v for v in doc["verdicts"] if v["subject"] == subject and v["outcome"] in ("FAIL", "ERROR")]
        assert result["partialFingerprints"]["remanence/v1"] in {fp for v in mine for fp in v["fingerprints"]}
    # a verdict without hits: its own fingerprint, which names the subject
    assert by_subject[TX]["partialFingerprints"]["remanence/v1"] == fingerprint("proto.kx", "procmem", "wiped", "-",
                                                                                 "none", TX)
    assert by_subject[TX]["partialFingerprints"]["remanence/v1"] != fingerprint("proto.kx", "procmem", "wiped", "-",
                                                                                 "none")


def test_sarif_same_leak_of_secret_and_derived_value_are_two_alerts():
    s, c, m = "demo.kx", "freed", "procmem"
    secret_fail = verdict(s, c, m, "FAIL", reason="expected absent, found 1", hits=[hit(s, c, m)])
    verdicts = [secret_fail, with_subject(secret_fail, RX), with_subject(verdict(s, c, m, "ERROR", reason="never sent"), TX),
                verdict(s, "other", m, "ERROR", reason="snapshot failed")]
    log = SarifReporter().log(document(verdicts))
    assert_valid_sarif(log)
    results = log["runs"][0]["results"]
    assert [(r["ruleId"], r["properties"].get("subject")) for r in results] == [
        ("REM001", None), ("REM001", RX), ("REM006", TX), ("REM006", None)]
    prints = [r["partialFingerprints"]["remanence/v1"] for r in results]
    assert len(set(prints)) == 4
    assert results[0]["message"]["text"].startswith(f"{s} at checkpoint {c} ({m}): a copy of the secret remains.")
    assert "1 of 1 repetition" in results[1]["message"]["text"]          # not "1 of 2"


# --- Markdown -----------------------------------------------------------------------------------------------

def _table(text: str, heading: str) -> list[list[str]]:
    """The rows (cells) of the first markdown table after `heading`, header row included, separator left out."""
    rows, started = [], False
    for line in text.split(heading, 1)[1].splitlines()[1:]:
        if line.startswith("| "):
            started = True
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
            if set("".join(cells)) - set("- "):
                rows.append(cells)
        elif started:
            break
    return rows


def test_markdown_shows_subjects_and_counts_them_apart():
    text = MarkdownReporter().render(derived())
    attention = _table(text, "### Needs attention")
    assert attention[0] == ["scenario", "checkpoint", "method", "subject", "expected", "verdict", "reason"]
    assert [(r[0], r[1], r[3], r[5]) for r in attention[1:]] == [
        ("proto.kx", "wiped", "derived:session\\_rx", "❌ FAIL 1/2"), ("core.4242", "image", "api", "❌ FAIL"),
        ("proto.kx", "wiped", "derived:session\\_tx", "💥 ERROR 2/2")]
    rates = _table(text, "### Repetition rates")
    assert rates[0][3:6] == ["subject", "expected", "found"]
    assert [(r[1], r[3], r[5]) for r in rates[1:]] == [
        ("exchanged", "secret", "2/2"), ("exchanged", "derived:session\\_rx", "2/2"), ("wiped", "secret", "0/2"),
        ("wiped", "derived:session\\_rx", "1/2"), ("wiped", "derived:session\\_tx", "0/2")]
    every = text.split("<details>", 1)[1]
    subjects = Counter(row[4] for row in _table(every, "All verdicts")[1:])
    assert subjects == {"secret": 4, "derived:session\\_rx": 4, "derived:session\\_tx": 2, "api": 1, "secret-2": 1}


def test_markdown_no_subject_column_for_secret_only():
    text = MarkdownReporter().render(sample())
    assert "| scenario | checkpoint | method | expected | verdict | reason |" in text
    assert "| scenario | checkpoint | method | expected | secret found | outcomes |" in text


# --- HTML ---------------------------------------------------------------------------------------------------

def test_html_findings_per_subject():
    view = build_view(derived())
    rows = {sc["name"]: sc["rows"] for group in view["findings"] for sc in group["scenarios"]}

    def procmem(row):
        return next(c for c in row["cells"] if c["method"] == "procmem")
    assert [(r["checkpoint"], r["subject"], procmem(r)["outcome"], procmem(r)["word"], procmem(r)["tone"])
            for r in rows["proto.kx"]] == [
        ("exchanged", None, "PASS", "full 2/2", "expected"), ("exchanged", RX, "PASS", "full 2/2", "expected"),
        ("wiped", None, "PASS", "clean 2/2", "expected"), ("wiped", RX, "FAIL", "full 1/2, clean 1/2", "unexpected"),
        ("wiped", TX, "ERROR", "no evidence 2/2", "neutral")]
    assert procmem(rows["proto.kx"][3])["regions"] == "heap"
    scan = [(r["subject"], next(c for c in r["cells"] if c["method"] == "core-file")["outcome"])
            for r in rows["core.4242"]]
    assert scan == [("api", "FAIL"), ("secret-2", "PASS")]


def test_html_verdicts_show_subject():
    doc = derived()
    page = HtmlReporter().render(doc)
    ids = re.findall(r'<(?:article class="verdict|tr class="vl) [^"]*" id="([^"]+)"', page)
    assert len(ids) == len(doc["verdicts"]) == len(set(ids)) and not any("~" in i for i in ids)
    shown = re.findall(r'<(?:article class="verdict|tr class="vl) [^>]*data-subject="([^"]+)"', page)
    assert Counter(shown) == Counter(v["subject"] for v in doc["verdicts"])
    chips = re.findall(r'(?:<span class="name">[^\n]*?</span>|<td class="name">[^\n]*?) <span class="subj" title="[^"]*">'
                       r'([^<]+)</span>', page)
    assert Counter(chips) == Counter(v["subject"] for v in doc["verdicts"] if v["subject"] != "secret")


def test_html_run_header_names_the_control_of_a_scan():
    page = HtmlReporter().render(derived())
    runs = {m.group(1): m.group(0) for m in re.finditer(r'<section class="card scenario" [^>]*data-scenario="([^"]+)".*?</section>',
                                                        page, re.S)}
    assert "<i>control</i><code>5e2b7a1c9d04…</code>" in runs["core.4242"] and "<i>canary</i>" not in runs["core.4242"]
    assert runs["proto.kx"].count("<i>canary</i>") == 2 and "<i>control</i>" not in runs["proto.kx"]
    assert re.search(r"<span title=\"a control value[^\"]*\">control <span class=\"ok\">seen", runs["core.4242"])


def test_html_intended_column_without_intended_address():
    doc = derived()
    for v in doc["verdicts"]:        # hit tables are drawn for failures: make every verdict with hits one
        if v["hits"]:
            v["outcome"] = "FAIL"
    page = HtmlReporter().render(doc)
    articles = re.findall(r'(<article [^>]*data-subject="([^"]+)".*?</article>)', page, re.S)
    assert len(articles) == sum(1 for v in doc["verdicts"] if v["outcome"] == "FAIL")
    checked = Counter()
    for article, subject in articles:
        cells = re.findall(r'<tr class="hit">(?:.*?<td.*?</td>){6}\s*<td>(.*?)</td>', article, re.S)
        for cell in cells:
            if subject == "secret":                     # the secret has an intended address: in it, here
                assert ">intended<" in cell
            else:                                       # derived and scanned values have none
                assert ">—<" in cell and "elsewhere" not in cell
            checked[subject == "secret"] += 1
    assert checked == {True: 2, False: 4}
    # a hit outside an intended region that does exist still says so
    elsewhere = copy.deepcopy(doc)
    v = next(v for v in elsewhere["verdicts"] if v["subject"] == "secret" and v["hits"])
    v["hits"][0]["in_intended_region"] = False
    assert ">elsewhere<" in HtmlReporter().render(elsewhere)
