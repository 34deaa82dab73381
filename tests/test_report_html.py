"""The HTML report: a golden file, escaping of target-supplied text, masking, no network, and a real browser.

Update the golden file after a deliberate change with: REMANENCE_UPDATE_GOLDEN=1 pytest tests/test_report_html.py
"""
from __future__ import annotations

import copy
import html
import json
import os
import re
import signal
import struct
import subprocess
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import pytest

from remanence.report import write_report
from remanence.report.html_report import (DETAILED, DUMPS_SHOWN, HITS_SHOWN, MAPS_MAX, HtmlReporter, build_view,
                                          layout_map, overlay)
from suite_document import SUITE, shape, suite_sized_document

GOLDEN = Path(__file__).parent / "golden"
SAMPLE = GOLDEN / "sample-results.json"
SAMPLE_HTML = GOLDEN / "sample.html"
SAMPLE_DERIVED = GOLDEN / "sample-derived-results.json"
SAMPLE_DERIVED_HTML = GOLDEN / "sample-derived.html"
CHROMIUM = Path("/usr/bin/chromium")
BROWSER_TIMEOUT = 120
EVIL = "<script>alert(1)</script>"


@pytest.fixture(scope="module")
def doc() -> dict:
    return json.loads(SAMPLE.read_text())


@pytest.fixture(scope="module")
def page(doc) -> str:
    return HtmlReporter().render(doc)


@pytest.fixture(scope="module")
def derived_doc() -> dict:
    """Subjects: the secret, values the target derived from it, and a `remanence scan` run's labelled values."""
    return json.loads(SAMPLE_DERIVED.read_text())


def test_reporter_interface():
    reporter = HtmlReporter()
    assert (reporter.format, reporter.filename) == ("html", "report.html")
    with pytest.raises(Exception):
        reporter.format = "x"  # frozen


def _golden_check(golden: Path, page: str) -> None:
    if os.environ.get("REMANENCE_UPDATE_GOLDEN") == "1":
        golden.write_text(page, encoding="utf-8")
    assert golden.exists(), "no golden file: run REMANENCE_UPDATE_GOLDEN=1 pytest tests/test_report_html.py"
    assert page == golden.read_text(encoding="utf-8"), (
        f"report.html differs from tests/golden/{golden.name}; if the change is deliberate, "
        "run REMANENCE_UPDATE_GOLDEN=1 pytest tests/test_report_html.py and review the diff")


def test_golden(doc, page):
    assert HtmlReporter().render(copy.deepcopy(doc)) == page, "rendering is not deterministic"
    _golden_check(SAMPLE_HTML, page)


def test_golden_derived(derived_doc):
    page = HtmlReporter().render(derived_doc)
    assert HtmlReporter().render(copy.deepcopy(derived_doc)) == page, "rendering is not deterministic"
    _golden_check(SAMPLE_DERIVED_HTML, page)


# --- escaping ----------------------------------------------------------------------------------------------

def _poison(doc: dict) -> dict:
    """Every string a target (or a scenario file) can influence carries markup."""
    doc = copy.deepcopy(doc)
    doc["machine"]["kernel"] = EVIL
    for run in doc["runs"]:
        run["description"] = EVIL
        run["notes"] = [EVIL]
        run["target_output"] = EVIL
        run["error"] = run["error"] and EVIL
    for v in doc["verdicts"]:
        v["reason"] = EVIL
        v["why"] = EVIL
        v["gate"] = {"state": "suppressed", "suppression": {"reason": EVIL, "expires": None}}
        if v["snapshot"]:
            v["snapshot"]["notes"] = [EVIL]
            for r in v["snapshot"]["regions"]:
                r["name"] = EVIL
            for g in v["snapshot"]["gaps"]:
                g["name"], g["reason"] = EVIL, EVIL
        for h in v["hits"]:
            h["region"]["name"] = EVIL
            h["encoding"] = EVIL
    # a scenario name that tries to break out of an attribute
    doc["runs"][0]["scenario"] = doc["verdicts"][0]["scenario"] = '" onmouseover="alert(1)'
    return doc


def test_target_text_is_escaped(doc):
    out = HtmlReporter().render(_poison(doc))
    assert EVIL not in out
    assert "<script" not in out.lower()
    assert html.escape(EVIL, quote=False) in out or html.escape(EVIL) in out
    assert 'onmouseover="alert' not in out
    # in the SVG tooltips, the hit tables, the suppression badges and the snapshot details alike
    assert out.count("&lt;script&gt;alert(1)&lt;/script&gt;") > 50


def test_gate_field_optional_and_shown(doc):
    gated = copy.deepcopy(doc)
    gated["verdicts"][0]["gate"] = {"state": "suppressed", "suppression": {"reason": "glibc keeps it", "expires": None}}
    gated["verdicts"][1]["gate"] = {"state": "baseline", "suppression": None}
    gated["verdicts"][2]["gate"] = {"state": "new", "suppression": None}
    gated["verdicts"][3]["gate"] = None
    out = HtmlReporter().render(gated)
    assert "suppressed: glibc keeps it" in out and "known (baseline)" in out
    assert out.count('class="badge gate"') == 2


# --- masking and network --------------------------------------------------------------------------------

class _Dumps(HTMLParser):
    """The text of every <pre class="hx"> hexdump."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.dumps: list[str] = []
        self.depth = 0

    def handle_starttag(self, tag, attrs):
        if tag == "pre" and ("class", "hx") in attrs:
            self.depth = 1
            self.dumps.append("")
        elif self.depth and tag == "pre":
            self.depth += 1

    def handle_endtag(self, tag):
        if self.depth and tag == "pre":
            self.depth -= 1

    def handle_data(self, data):
        if self.depth:
            self.dumps[-1] += data


def _dump_cells(text: str) -> tuple[tuple[str, ...], str]:
    """(hex cells, ascii column) of one rendered hexdump."""
    cells, ascii_col = [], ""
    for line in text.splitlines():
        address, rest = line.split("  ", 1)
        hex_part, ascii_part = rest.split("│", 1)
        assert re.fullmatch(r"[0-9a-f]{12}|[0-9a-f]{16}", address)
        cells += hex_part.split()
        ascii_col += ascii_part.rstrip("│").strip()
    return tuple(cells), ascii_col


def test_hexdumps_show_exactly_the_masked_context(doc, page):
    assert doc["secrets_shown"] is False
    expected = Counter(tuple(h["context"]["bytes"].split()) for v in doc["verdicts"] if v["outcome"] in DETAILED
                       for h in v["hits"] if h["context"])
    assert expected                                           # the FAIL's hit: its hexdump, masked
    parser = _Dumps()
    parser.feed(page)
    rendered = [_dump_cells(d) for d in parser.dumps]
    assert Counter(cells for cells, _ in rendered) == expected
    for cells, ascii_col in rendered:
        masked = cells.count("**")
        assert masked and ascii_col.count("•") == masked      # every masked byte stays masked in the ASCII column
    assert "secrets masked" in page and "Secrets shown" not in page


def test_secrets_shown_banner(doc):
    shown = copy.deepcopy(doc)
    shown["secrets_shown"] = True
    assert "Secrets shown" in HtmlReporter().render(shown)


def test_no_network_references(page):
    lowered = page.lower()
    assert not re.search(r"""(?:src|href|action|poster|srcset|data|xlink:href)\s*=\s*["']?\s*(?:https?:)?//""", lowered)
    assert not re.search(r"""url\(\s*["']?\s*(?:https?:)?//""", lowered)
    assert "@import" not in lowered and "<link" not in lowered and "<script" not in lowered
    assert "<img" not in lowered and "<iframe" not in lowered
    # any remaining http(s):// can only be escaped text, never markup
    for m in re.finditer(r"https?://", lowered):
        before = lowered[:m.start()]
        assert before.rfind("<") < before.rfind(">"), "a URL inside a tag"
    assert "default-src 'none'" in page                      # and the browser is told so as well


# --- the address-space picture --------------------------------------------------------------------------

def _verdict(view, scenario, checkpoint, method):
    return next(vd for sc in view["scenarios"] for run in sc["runs"] for vd in run["verdicts"]
                if (vd["scenario"], vd["checkpoint"], vd["method"]) == (scenario, checkpoint, method))


def _document_verdict(doc, scenario, checkpoint, method):
    return next(v for v in doc["verdicts"] if (v["scenario"], v["checkpoint"], v["method"]) == (scenario, checkpoint, method))


def _block_at(layout, x):
    return next(it for it in layout["items"] if it["x"] <= x <= it["x"] + it["w"])


def test_map_shows_heap_copy_and_clean_guarded_page(doc):
    view = build_view(doc)
    leak = _verdict(view, "malloc.memset", "freed", "procmem")
    layout, over = leak["snapshot"]["layout"], leak["snapshot"]["overlay"]
    (pin,) = over["pins"]
    assert pin["tone"] == "fail" and _block_at(layout, float(pin["x"]))["kind"] == "heap"
    assert over["outline"] is not None and not over["outline"]["gap"]

    # a PASS is one line in the page, without a map; the map is still what the same code would draw
    assert _verdict(view, "sodium.live", "in_use", "procmem")["snapshot"] is None
    live = _document_verdict(doc, "sodium.live", "in_use", "procmem")
    layout = layout_map(live["snapshot"])
    (pin,) = overlay(layout, live)["pins"]
    block = _block_at(layout, float(pin["x"]))
    assert pin["tone"] == "seen" and block["guarded"] and block["locked"] and block["dont_dump"]
    assert any(label["text"] == "guarded page" for label in layout["labels"])

    dumped = _document_verdict(doc, "sodium.live", "in_use", "gcore")
    layout = layout_map(dumped["snapshot"])
    over = overlay(layout, dumped)
    assert over["pins"] == [] and over["outline"]["gap"]          # the intended page was left out: hatched, clean
    assert {b["cls"] for b in layout["blocks"]} >= {"b g-excluded", "b k-heap", "b guard"}
    assert layout["strip"]["threads"] == 1 and any(c["text"] == "PRSTATUS" for c in layout["strip"]["cells"])


def _findings(view) -> dict:
    """(scenario, checkpoint, subject or None, method) -> the findings grid's cell."""
    return {(sc["name"], row["checkpoint"], row["subject"], cell["method"]): cell
            for group in view["findings"] for sc in group["scenarios"] for row in sc["rows"] for cell in row["cells"]}


def test_findings_say_what_survives_beside_the_outcome(doc):
    view = build_view(doc)
    cells = _findings(view)
    seen = {key: (c["outcome"], c.get("word"), c.get("tone"), c.get("regions")) for key, c in cells.items() if c["outcome"]}
    assert seen == {
        ("malloc.memset", "in_use", None, "procmem"): ("PASS", "full copy", "expected", "heap"),
        ("malloc.memset", "freed", None, "procmem"): ("FAIL", "full copy", "unexpected", "heap"),
        ("malloc.memzero", "in_use", None, "procmem"): ("PASS", "full 2/2", "expected", "heap"),
        ("malloc.memzero", "freed", None, "procmem"): ("PASS", "clean 2/2", "expected", ""),
        # the leak the scenario expects: a full copy, as expected, beside a PASS -- not the same cell as a clean PASS
        ("malloc.nowipe", "in_use", None, "procmem"): ("PASS", "full copy", "expected", "heap"),
        ("malloc.nowipe", "in_use", None, "gcore"): ("PASS", "full copy", "expected", "heap"),
        ("malloc.nowipe", "freed", None, "procmem"): ("PASS", "full copy", "expected", "heap"),
        ("malloc.nowipe", "freed", None, "gcore"): ("PASS", "full copy", "expected", "heap"),
        ("secret.return", "after", None, "procmem"): ("SKIP", "no evidence", "neutral", ""),
        ("selftest.crash", "in_use", None, "procmem"): ("PASS", "full copy", "expected", "file"),
        ("selftest.crash", "after", None, "procmem"): ("ERROR", "no evidence", "neutral", ""),
        ("sodium.live", "in_use", None, "procmem"): ("PASS", "full copy", "expected", "anonymous"),
        ("sodium.live", "in_use", None, "gcore"): ("PASS", "clean", "expected", "")}
    assert cells[("malloc.memset", "in_use", None, "gcore")]["outcome"] is None
    assert cells[("malloc.memset", "freed", None, "procmem")]["href"] == "#v-malloc.memset-1-freed-procmem"
    assert [g["language"] for g in view["findings"]] == ["C", "Go"]
    assert view["methods"] == ["procmem", "gcore"]


def test_findings_are_the_documents_aggregates(doc):
    """The grid renders what the document counted, it does not count again: an aggregate that says two runs had
    fragments and another had no evidence is shown so, whatever the verdicts hold."""
    changed = copy.deepcopy(doc)
    agg = next(a for a in changed["aggregates"] if (a["scenario"], a["checkpoint"]) == ("malloc.memzero", "freed"))
    agg.update(runs=3, found=2, full=0, fragments=2, clean=0, unknown=1, regions=["stack"],
               outcomes={"PASS": 1, "FAIL": 2})
    cell = _findings(build_view(changed))[("malloc.memzero", "freed", None, "procmem")]
    assert (cell["kind"], cell["word"], cell["regions"], cell["outcome"], cell["tone"]) == (
        "mixed", "fragments 2/3, no evidence 1/3", "stack", "FAIL", "unexpected")
    assert "FAIL 2, PASS 1" in cell["title"]


def test_a_crash_verdict_is_a_crash_check_never_clean(doc):
    """A crash verdict looks for no copy: its cell is a crash check, how the target died being its outcome beside."""
    for outcome in ("PASS", "FAIL"):
        changed = copy.deepcopy(doc)
        v = _document_verdict(changed, "selftest.crash", "after", "procmem")
        v.update(subject="crash", expect="crash", outcome=outcome, method="kernel-core")
        agg = next(a for a in changed["aggregates"] if (a["scenario"], a["checkpoint"]) == ("selftest.crash", "after"))
        agg.update(subject="crash", expect="crash", method="kernel-core", outcomes={outcome: 1}, clean=1, unknown=0)
        cell = _findings(build_view(changed))[("selftest.crash", "after", "crash", "kernel-core")]
        assert (cell["word"], cell["glyph"], cell["tone"], cell["outcome"]) == ("crash check", "✕", "neutral", outcome)


def test_passing_verdicts_are_one_line_each_and_failures_in_full(doc, page):
    articles = re.findall(r'<article class="verdict o-([A-Z]+)" id="([^"]+)"', page)
    lines = re.findall(r'<tr class="vl o-([A-Z]+)" id="([^"]+)"', page)
    assert sorted(o for o, _ in articles) == sorted(v["outcome"] for v in doc["verdicts"] if v["outcome"] in DETAILED)
    assert len(articles) + len(lines) == len(doc["verdicts"]) == len({i for _, i in articles + lines})
    assert len(re.findall(r'<svg class="amap"', page)) == 1       # the FAIL's map, none for the passes
    nowipe = re.search(r'<tr class="vl o-PASS" id="v-malloc.nowipe-1-freed-gcore".*?</tr>', page, re.S)[0]
    assert "found as expected: full copy (raw) in [heap] at 0x556e0bcb82e0 [intended region]" in nowipe


def test_an_inconclusive_verdict_lists_its_gaps_and_draws_no_map(doc):
    changed = copy.deepcopy(doc)
    v = _document_verdict(changed, "sodium.live", "in_use", "gcore")
    v.update(outcome="INCONCLUSIVE", kind="unreadable", reason="absent not proven")
    page = HtmlReporter().render(changed)
    article = re.search(r'<article class="verdict o-INCONCLUSIVE".*?</article>', page, re.S)[0]
    assert "<th>gap</th>" in article and 'class="amap"' not in article
    assert all(g["start"] in article for g in v["snapshot"]["gaps"])


# --- as large as the suite's -----------------------------------------------------------------------------------

MAX_BYTES = 3_000_000
MAX_ELEMENTS = 45_000      # the suite's report had 494,000 (666,000 at 83 scenarios) before findings came first


@pytest.fixture(scope="module")
def suite_doc() -> dict:
    return suite_sized_document()


@pytest.fixture(scope="module")
def suite_page(suite_doc) -> str:
    return HtmlReporter().render(suite_doc)


def _elements(page: str) -> int:
    return len(re.findall(r"<[a-zA-Z]", page))


def test_a_suite_sized_report_stays_light(suite_doc, suite_page):
    assert {k: v for k, v in shape(suite_doc).items() if k != "outcomes"} == \
        {k: v for k, v in SUITE.items() if k != "outcomes"}
    assert len(suite_page.encode()) <= MAX_BYTES and _elements(suite_page) <= MAX_ELEMENTS
    # every verdict is on the page, in full or as a line, and every aggregate in the findings grid
    assert len(re.findall(r'<(?:article class="verdict|tr class="vl) ', suite_page)) == len(suite_doc["verdicts"])
    cells = sum(len(sc["rows"]) for group in build_view(suite_doc)["findings"] for sc in group["scenarios"])
    assert cells and suite_page.count('<tr class="fr"') == cells


def test_a_report_where_everything_fails_draws_a_bounded_number_of_maps(suite_doc):
    failing = copy.deepcopy(suite_doc)
    for v in failing["verdicts"]:
        if v["hits"]:
            v["outcome"] = "FAIL"
    many = next(v for v in failing["verdicts"] if v["hits"])
    many["hits"] = [dict(many["hits"][0], fingerprint=f"{i:016x}") for i in range(HITS_SHOWN + 12)]
    page = HtmlReporter().render(failing)
    assert len(re.findall(r'<g id="map-', page)) == MAPS_MAX
    assert f"The first {MAPS_MAX} failing snapshots' address spaces are drawn" in page
    article = re.search(rf'<article [^>]*data-scenario="{re.escape(many["scenario"])}" data-checkpoint='
                        rf'"{re.escape(many["checkpoint"])}" data-method="{many["method"]}".*?</article>', page, re.S)[0]
    assert article.count('<tr class="hit">') == HITS_SHOWN and article.count('<pre class="hx">') == DUMPS_SHOWN
    assert "12 more hit(s)</i>not listed here: results.json lists every hit" in article


# --- a real browser -------------------------------------------------------------------------------------

def _chromium(*args: str, tmp: Path) -> str:
    command = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={tmp / 'profile'}", *args]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                            start_new_session=True, text=True)
    try:
        out, _ = proc.communicate(timeout=BROWSER_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"chromium did not finish within {BROWSER_TIMEOUT}s: {' '.join(args)}")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)       # helpers the browser may have left behind
        except ProcessLookupError:
            pass
    return out


class _Dom(HTMLParser):
    """A small element tree of a serialized DOM: enough to look things up by attribute."""

    VOID = {"meta", "link", "br", "hr", "img", "input", "source", "wbr", "col", "area", "base", "embed", "track"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = {"tag": "#root", "attrs": {}, "children": [], "text": []}
        self.stack = [self.root]

    def handle_starttag(self, tag, attrs):
        node = {"tag": tag, "attrs": dict(attrs), "children": [], "text": []}
        self.stack[-1]["children"].append(node)
        if tag not in self.VOID:
            self.stack.append(node)

    def handle_startendtag(self, tag, attrs):
        self.stack[-1]["children"].append({"tag": tag, "attrs": dict(attrs), "children": [], "text": []})

    def handle_endtag(self, tag):
        for i in range(len(self.stack) - 1, 0, -1):
            if self.stack[i]["tag"] == tag:
                del self.stack[i:]
                break

    def handle_data(self, data):
        self.stack[-1]["children"].append(data)


def _find(node, tag: str, **attrs) -> list[dict]:
    """Descendants with this tag and attributes (data_x means data-x; class_ matches one of the classes)."""
    found = []
    for child in node["children"]:
        if not isinstance(child, dict):
            continue
        a = child["attrs"]
        if child["tag"] == tag and all(
                v in (a.get("class") or "").split() if k == "class_" else a.get(k.replace("_", "-")) == v
                for k, v in attrs.items()):
            found.append(child)
        found += _find(child, tag, **attrs)
    return found


def _text(node) -> str:
    return "".join(c if isinstance(c, str) else _text(c) for c in node["children"])


@pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is absent: install Debian's chromium "
                                                  "(make test does) to check the page in a real browser")
def test_in_headless_chromium(doc, tmp_path):
    report = write_report(HtmlReporter(), doc, tmp_path / "out")
    dom = _Dom()
    dom.feed(_chromium("--dump-dom", report.as_uri(), tmp=tmp_path))
    assert _find(dom.root, "body"), "chromium rendered no DOM"

    (grid,) = _find(dom.root, "table", class_="findings")
    (memset,) = _find(grid, "tbody", data_scenario="malloc.memset")
    (freed,) = _find(memset, "tr", data_checkpoint="freed")
    (cell,) = _find(freed, "td", data_method="procmem")
    assert (cell["attrs"]["data-outcome"], cell["attrs"]["data-finding"]) == ("FAIL", "full-copy")
    assert "full copy" in _text(cell) and "FAIL" in _text(cell) and "heap" in _text(cell)
    (memzero,) = _find(grid, "tbody", data_scenario="malloc.memzero")
    (wiped,) = _find(_find(memzero, "tr", data_checkpoint="freed")[0], "td", data_method="procmem")
    assert (wiped["attrs"]["data-outcome"], wiped["attrs"]["data-finding"]) == ("PASS", "clean")
    assert "clean 2/2" in _text(wiped)

    (leak,) = _find(dom.root, "article", data_scenario="malloc.memset", data_checkpoint="freed")
    (hit,) = _find(leak, "tr", class_="hit")
    assert "[heap]" in _text(hit) and "intended" in _text(hit)
    assert _find(leak, "svg", class_="amap"), "no address map"
    freed = _find(dom.root, "tr", class_="vl", data_scenario="malloc.nowipe", data_checkpoint="freed")
    assert {a["attrs"]["data-method"] for a in freed} == {"procmem", "gcore"}
    for line in freed:
        assert "0x556e0bcb82e0" in _text(line) and "[heap]" in _text(line) and "PASS" in _text(line)

    # a findings cell links to its verdict; a passing one's line is collapsed, and the browser opens it
    def holding(root, verdict_id):
        return next(d for d in _find(root, "details", class_="lines") if _find(d, "tr", id=verdict_id))
    assert "open" not in holding(dom.root, "v-malloc.nowipe-1-freed-gcore")["attrs"]
    linked = _Dom()
    linked.feed(_chromium("--dump-dom", report.as_uri() + "#v-malloc.nowipe-1-freed-gcore", tmp=tmp_path))
    assert "open" in holding(linked.root, "v-malloc.nowipe-1-freed-gcore")["attrs"]

    shot = tmp_path / "report.png"
    _chromium(f"--screenshot={shot}", "--window-size=1400,2000", "--hide-scrollbars", report.as_uri(), tmp=tmp_path)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", data[16:24]) == (1400, 2000)
    assert len(data) > 50_000, "a nearly blank screenshot"


@pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is absent: install Debian's chromium "
                                                  "(make test does) to check the page in a real browser")
def test_subjects_in_headless_chromium(derived_doc, tmp_path):
    """Derived values and scan labels: their own verdict cards, chips and matrix chips, as a browser builds the DOM."""
    report = write_report(HtmlReporter(), derived_doc, tmp_path / "out")
    dom = _Dom()
    dom.feed(_chromium("--dump-dom", report.as_uri(), tmp=tmp_path))
    assert _find(dom.root, "body"), "chromium rendered no DOM"

    (grid,) = _find(dom.root, "table", class_="findings")
    (kx,) = _find(grid, "tbody", data_scenario="proto.kx")
    rows = [(r["attrs"]["data-checkpoint"], r["attrs"].get("data-subject"),
             _find(r, "td", data_method="procmem")[0]["attrs"]["data-outcome"],
             _find(r, "td", data_method="procmem")[0]["attrs"]["data-finding"]) for r in _find(kx, "tr", class_="fr")]
    assert rows == [("exchanged", None, "PASS", "full-copy"), ("exchanged", "derived:session_rx", "PASS", "full-copy"),
                    ("wiped", None, "PASS", "clean"), ("wiped", "derived:session_rx", "FAIL", "mixed"),
                    ("wiped", "derived:session_tx", "ERROR", "no-evidence")]

    failed = _find(dom.root, "article", data_scenario="proto.kx", data_checkpoint="wiped",
                   data_subject="derived:session_rx", data_outcome="FAIL")
    assert len(failed) == 1
    (chip,) = _find(failed[0], "span", class_="subj")
    assert _text(chip) == "derived:session_rx"
    (hit,) = _find(failed[0], "tr", class_="hit")
    intended = [td for td in hit["children"] if isinstance(td, dict) and td["tag"] == "td"][6]
    assert _text(intended) == "—"
    assert len(_find(dom.root, "tr", class_="vl", data_subject="secret")) == 4

    (scan,) = _find(dom.root, "section", data_scenario="core.4242")
    keys = [_text(i) for i in _find(scan, "i")]
    assert "control" in keys and "canary" not in keys


# The report, unchanged, in an iframe as wide as the screen to test (a headless window is at least 500 px wide), and a
# script in the page around it that writes what the browser laid out into that page's DOM, where --dump-dom shows it.
LAYOUT_PROBE = """<!DOCTYPE html>
<html><body style="margin: 0; overflow: hidden">
<iframe id="report" style="border: 0; width: %(width)dpx; height: 900px" srcdoc="%(page)s"></iframe>
<script>
document.getElementById("report").addEventListener("load", function () {
  var doc = this.contentDocument;
  function box(e) { var r = e.getBoundingClientRect(); return {left: r.left, right: r.right, width: r.width, height: r.height}; }
  var facts = {viewport: doc.documentElement.clientWidth, page: doc.documentElement.scrollWidth, heads: [], cells: [],
               spilling: []};
  doc.querySelectorAll(".tile, td.f, .findings th").forEach(function (e) {
    if (e.scrollWidth > e.clientWidth + 1) facts.spilling.push(e.className + ": " + e.textContent); });
  doc.querySelectorAll("table.findings thead th.m").forEach(function (th) {
    facts.heads.push(Object.assign(box(th), {method: th.textContent})); });
  doc.querySelectorAll("table.findings td.f:not(.none)").forEach(function (td) {
    facts.cells.push(Object.assign(box(td), {outcome: box(td.querySelector(".vo")), finding: box(td.querySelector(".fw"))})); });
  document.body.setAttribute("data-layout", JSON.stringify(facts));
});
</script>
</body></html>
"""


def _layout(page: str, width: int, tmp: Path) -> dict:
    """What Chromium laid out for the report at this width (the facts LAYOUT_PROBE writes), and a screenshot of it."""
    probe = tmp / f"probe-{width}.html"
    probe.write_text(LAYOUT_PROBE % {"width": width, "page": html.escape(page)}, encoding="utf-8")
    window = f"--window-size={max(width, 500)},900"
    dom = _Dom()
    dom.feed(_chromium(window, "--hide-scrollbars", "--dump-dom", probe.as_uri(), tmp=tmp))
    (body,) = _find(dom.root, "body")
    assert "data-layout" in body["attrs"], "the probe did not run: no layout facts in the DOM"
    shot = tmp / f"report-{width}.png"
    _chromium(f"--screenshot={shot}", window, "--hide-scrollbars", probe.as_uri(), tmp=tmp)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return json.loads(body["attrs"]["data-layout"])


def _inside(box: dict, width: float) -> bool:
    return box["width"] > 0 and box["height"] > 0 and box["left"] >= 0 and box["right"] <= width


@pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is absent: install Debian's chromium "
                                                  "(make test does) to check the page in a real browser")
def test_every_method_column_shows_at_1280_px(suite_doc, suite_page, tmp_path):
    facts = _layout(suite_page, 1280, tmp_path)
    assert facts["viewport"] == 1280 and facts["page"] <= 1280, "the page scrolls sideways"
    assert facts["spilling"] == [], "text wider than its box"
    assert sorted(h["method"] for h in facts["heads"]) == sorted(SUITE["methods"])
    assert all(_inside(h, 1280) for h in facts["heads"]), facts["heads"]
    assert len(facts["cells"]) == len({(v["scenario"], v["step"]["checkpoint"] if v.get("step") else v["checkpoint"],
                                        v["method"]) for v in suite_doc["verdicts"]})
    assert all(_inside(c, 1280) and _inside(c["outcome"], 1280) and _inside(c["finding"], 1280)
               for c in facts["cells"])


@pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is absent: install Debian's chromium "
                                                  "(make test does) to check the page in a real browser")
def test_every_verdict_shows_at_390_px(suite_page, tmp_path):
    facts = _layout(suite_page, 390, tmp_path)
    assert facts["viewport"] == 390 and facts["page"] <= 390, "the page scrolls sideways"
    assert facts["spilling"] == [], "text wider than its box"
    assert facts["cells"] and all(_inside(c, 390) and _inside(c["outcome"], 390) and _inside(c["finding"], 390)
                                  for c in facts["cells"])
