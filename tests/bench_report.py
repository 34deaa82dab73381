"""Benchmark how fast headless Chromium paints report.html of a suite-sized document (not a pytest module).

usage: python tests/bench_report.py [results.json] [--peer report.html] [--repeats 3]

Without results.json the document is tests/suite_document.py's synthetic one, as large as the built-in suite's.
The report is rendered by this checkout; beside it, in the same run, Chromium opens a plain page of the same bytes (the
report's text escaped in one <pre>: what reading and painting that many bytes costs at least) and, with --peer, another
report.html (an older one of the same suite, say). A copy of each page gets a small script (and a Content-Security-Policy
that lets it run) which logs first-contentful-paint and DOMContentLoaded from the performance API to the browser's
console; Chromium runs with --screenshot, so it stays until the page has painted. Each page is opened `repeats` times
and the best time counts (the machine is shared: the best run is the one least disturbed).
"""
from __future__ import annotations

import argparse
import html
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from remanence.report.html_report import HtmlReporter  # noqa: E402
from suite_document import suite_sized_document  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
PROBE = """<script>
new PerformanceObserver(function (list) {
  list.getEntries().forEach(function (e) {
    if (e.name !== "first-contentful-paint") return;
    var nav = performance.getEntriesByType("navigation")[0];
    console.log("BENCH " + JSON.stringify({fcp: e.startTime, dcl: nav.domContentLoadedEventEnd}));
  });
}).observe({type: "paint", buffered: true});
</script>"""
CSP = re.compile(r'<meta http-equiv="Content-Security-Policy"[^>]*>')


def probed(page: str) -> str:
    """The page with PROBE at the end of its body and no Content-Security-Policy to stop it."""
    page = CSP.sub("", page, count=1)
    return page.replace("</body>", PROBE + "</body>", 1) if "</body>" in page else page + PROBE


def paint(path: Path, work: Path) -> dict:
    """One opening of `path`: first-contentful-paint and DOMContentLoaded, in ms since navigation started."""
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
               "--disable-background-networking", "--disable-component-update", f"--user-data-dir={work / 'profile'}",
               "--enable-logging=stderr", "--v=0", "--window-size=1280,900", f"--screenshot={work / 'shot.png'}",
               path.as_uri()]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            start_new_session=True, text=True, errors="replace")
    try:
        _, err = proc.communicate(timeout=180)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)      # helpers the browser may have left behind
        except ProcessLookupError:
            pass
    found = re.search(r'"BENCH (\{.*?\})"', err)
    if not found:
        sys.exit(f"{path.name}: Chromium logged no paint timing")
    return json.loads(found.group(1).replace('\\"', '"'))


def elements(page: str) -> int:
    return len(re.findall(r"<[a-zA-Z]", page))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="?", type=Path, help="a results.json (default: a synthetic suite-sized one)")
    parser.add_argument("--peer", type=Path, help="another report.html to open in the same run")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not Path(CHROMIUM).exists():
        sys.exit(f"{CHROMIUM} is absent: install Debian's chromium")
    doc = json.loads(args.results.read_text()) if args.results else suite_sized_document()
    report = HtmlReporter().render(doc)
    size = len(report.encode())
    plain_page = "<!DOCTYPE html><pre>" + html.escape(report)[:size - 31].rsplit("&", 1)[0] + "</pre>"   # as many bytes
    pages = {"report.html": report, "plain page, same bytes": plain_page}
    if args.peer:
        pages[f"peer {args.peer.name}"] = args.peer.read_text(encoding="utf-8")
    print(f"document: {args.results or 'synthetic, suite-sized'}: {len(doc['verdicts'])} verdicts, "
          f"{len(doc['runs'])} runs, {sum(len(v['hits']) for v in doc['verdicts'])} hits")
    with tempfile.TemporaryDirectory(prefix="bench-report-") as tmp:
        work = Path(tmp)
        best = {}
        for name, page in pages.items():
            path = work / f"{re.sub(r'[^a-z0-9]+', '-', name)}.html"
            path.write_text(probed(page), encoding="utf-8")
            runs = [paint(path, work) for _ in range(args.repeats)]
            best[name] = {k: min(r[k] for r in runs) for k in ("fcp", "dcl")}
            print(f"{name:26} {len(page.encode()) / 1e6:7.2f} MB {elements(page):9,} elements   "
                  f"first contentful paint {best[name]['fcp']:7.0f} ms   DOMContentLoaded {best[name]['dcl']:7.0f} ms")
    plain = best["plain page, same bytes"]
    for key, what in (("fcp", "first contentful paint"), ("dcl", "DOMContentLoaded")):
        print(f"ratio ({what}): report.html / plain page {best['report.html'][key] / plain[key]:.2f}x"
              + "".join(f"; {name} / report.html {b[key] / best['report.html'][key]:.2f}x"
                        for name, b in best.items() if name.startswith("peer")))


if __name__ == "__main__":
    main()
