"""Findings first in the terminal and in summary.md, and progress on stderr: plain lines, -q, -v, and the live
display on a pseudo-terminal (real runs of the C target)."""
from __future__ import annotations

import copy
import io
import json
import os
import pty
import re
import select
import signal
import subprocess
import sys

import pytest
from rich.console import Console

from remanence.document import Document, aggregates
from remanence.progress import (CheckpointReached, Note, PlanStarted, Progress, RunFinished, RunStarted,
                                SnapshotEvent, eta_seconds)
from remanence.report.markdown_report import MarkdownReporter
from remanence.report.terminal import print_verdicts

from test_report_formats import document, hit, verdict

ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")


def with_aggregates(doc: dict) -> dict:
    """The document as the harness writes it: aggregates (with their findings) made by document.py."""
    read = Document.from_json(copy.deepcopy(doc), "test document")
    doc["aggregates"] = [a.to_json() for a in aggregates(read.verdicts)]
    return doc


def findings_document() -> dict:
    return with_aggregates(document([
        verdict("demo.leak", "freed", "procmem", "FAIL", "absent", "a copy in the heap",
                [hit("demo.leak", "freed", "procmem")], kind="leak"),
        verdict("demo.leak", "freed", "gcore", "PASS", "absent", "nothing found", kind="absent"),
        verdict("demo.keep", "in_use", "procmem", "PASS", "present", "found on the stack",
                [hit("demo.keep", "in_use", "procmem", kind="stack", name="[stack]")], kind="found"),
        verdict("demo.blind", "freed", "procmem", "INCONCLUSIVE", "absent", "no canary", kind="no-canary"),
    ]))


def terminal(doc: dict, width: int) -> list[str]:
    console = Console(record=True, width=width, no_color=True, force_terminal=False)
    print_verdicts(doc, console)
    return console.export_text().splitlines()


def row(lines: list[str], *words: str) -> str:
    """The one line holding every word, in that order."""
    hits = [line for line in lines if re.search(".*".join(map(re.escape, words)), line)]
    assert len(hits) == 1, (words, lines)
    return hits[0]


# --- findings first ----------------------------------------------------------------------------------------

def test_terminal_opens_with_where_the_secret_survives():
    lines = terminal(findings_document(), 400)
    titles = [i for i, line in enumerate(lines) if line.strip() in ("where the secret survives", "remanence verdicts")]
    assert [lines[i].strip() for i in titles] == ["where the secret survives", "remanence verdicts"]
    findings = lines[titles[0]:titles[1]]
    row(findings, "demo.leak", "freed", "procmem", "✗ full copy in heap", "FAIL")
    row(findings, "gcore", "✓ clean", "PASS")      # the scenario and checkpoint are named once, above
    row(findings, "demo.keep", "in_use", "procmem", "✓ full copy in stack", "PASS")
    assert "✓" not in row(findings, "demo.blind", "freed", "procmem", "no evidence", "INCONCLUSIVE")


def test_terminal_findings_fit_80_columns():
    lines = terminal(findings_document(), 80)
    end = next(i for i, line in enumerate(lines) if line.strip() == "remanence verdicts")
    assert all(len(line) <= 80 for line in lines[:end])
    row(lines[:end], "demo.leak", "freed", "procmem", "✗ full copy in heap", "FAIL")
    row(lines[:end], "demo.blind", "freed", "procmem", "no evidence", "INCONCLUSIVE")


def test_repetitions_count_each_finding():
    doc = with_aggregates(document([
        verdict("demo.gc", "after_gc", "procmem", "FAIL", "absent", "a copy", [hit("demo.gc", "after_gc", "procmem")],
                repetition=1, kind="leak"),
        verdict("demo.gc", "after_gc", "procmem", "PASS", "absent", "clean", repetition=2, kind="absent"),
        verdict("demo.gc", "after_gc", "procmem", "PASS", "absent", "clean", repetition=3, kind="absent"),
    ]))
    row(terminal(doc, 400), "demo.gc", "after_gc", "procmem", "✗ full 1/3, clean 2/3 in heap", "1/3 FAIL, 2/3 PASS")


def test_markdown_sections_findings_first():
    text = MarkdownReporter().render(findings_document())
    order = [text.index(title) for title in ("### Where the secret survives", "### Needs attention",
                                             "<details><summary>All verdicts")]
    assert order == sorted(order)
    found = text[order[0]:order[1]].splitlines()
    row(found, "| demo.leak | freed | procmem | ✗ full copy in heap | ❌ FAIL |")
    row(found, "|  |  | gcore | ✓ clean | ✅ PASS |")
    row(found, "| demo.blind | freed | procmem | no evidence | ❔ INCONCLUSIVE |")


def test_markdown_cut_keeps_what_needs_attention():
    doc = with_aggregates(document([verdict(f"demo.s{i:03d}", "freed", "procmem", "PASS", "absent", "clean",
                                            kind="absent") for i in range(300)]
                                   + [verdict("demo.zz", "freed", "procmem", "FAIL", "absent", "a copy",
                                              [hit("demo.zz", "freed", "procmem")], kind="leak")]))
    text = MarkdownReporter(max_bytes=8 * 1024).render(doc)
    assert len(text.encode()) <= 8 * 1024 and "**Truncated**" in text
    assert text.index("### Where the secret survives") < text.index("### Needs attention (1)")
    row(text.splitlines(), "| demo.zz | freed | procmem | absent | ❌ FAIL |")


# --- the progress sink -------------------------------------------------------------------------------------

EVENTS = [PlanStarted(2), RunStarted("demo#1", "c"), CheckpointReached("demo#1", "in_use"),
          SnapshotEvent("demo#1", "in_use", "procmem"),
          SnapshotEvent("demo#1", "in_use", "procmem", result="2.8 MiB scanned in 0.01 s, 1 hit(s)"),
          RunFinished("demo#1", 1.5, "1 PASS", 1, 2), Note("waiting for memory")]
LINES = ["2 run(s) planned", "demo#1: starting c target", "demo#1: in_use: reached", "demo#1: in_use: procmem snapshot",
         "demo#1: in_use: procmem: 2.8 MiB scanned in 0.01 s, 1 hit(s)",
         "demo#1: finished in 1.5 s: 1 PASS (1/2 runs done)", "waiting for memory"]


def shown(terminal: bool, **flags) -> tuple[Progress, io.StringIO]:
    out = io.StringIO()
    progress = Progress(Console(file=out, force_terminal=terminal, width=200, no_color=True), **flags)
    return progress, out


def test_plain_progress_is_one_line_per_event():
    progress, out = shown(False)
    assert progress.mode == "plain"
    with progress.live():
        for event in EVENTS:
            progress(event)
    assert out.getvalue().splitlines() == LINES


@pytest.mark.parametrize("terminal", [False, True])
def test_quiet_progress_says_nothing(terminal):
    progress, out = shown(terminal, quiet=True)
    with progress.live():
        for event in EVENTS:
            progress(event)
    assert out.getvalue() == ""


@pytest.mark.parametrize("verbose", [False, True])
def test_live_display_prints_notes_and_with_verbose_every_line(verbose):
    progress, out = shown(True, verbose=verbose)
    assert progress.mode == "live"
    with progress.live():
        for event in EVENTS:
            progress(event)
    text = ANSI.sub(b"", out.getvalue().encode()).decode()
    printed = [line for line in LINES if line in text]
    assert printed == (LINES if verbose else ["2 run(s) planned", "waiting for memory"])


@pytest.mark.parametrize("verbose", [False, True])
def test_a_run_that_ends_after_the_live_display_prints_its_end_only_with_verbose(verbose):
    """Ctrl-C ends the display first; the interrupted run reports its end afterwards."""
    progress, out = shown(True, verbose=verbose)
    with progress.live():
        progress(PlanStarted(1))
        progress(RunStarted("demo#1", "c"))
    progress(RunFinished("demo#1", 0.0, "1 ERROR", 1, 1))
    progress(Note("wrote results.json"))
    text = ANSI.sub(b"", out.getvalue().encode()).decode()
    assert ("demo#1: finished in 0.0 s: 1 ERROR (1/1 runs done)" in text) == verbose
    assert "wrote results.json" in text


def test_live_display_shows_runs_done_the_current_runs_and_an_eta():
    now = [100.0]
    progress = Progress(Console(file=io.StringIO(), force_terminal=True, width=120), clock=lambda: now[0])
    progress(PlanStarted(4))
    progress(RunStarted("a#1", "c"))
    progress(SnapshotEvent("a#1", "freed", "gcore"))
    console = Console(record=True, width=120, no_color=True, file=io.StringIO())
    console.print(progress.render())
    text = console.export_text()
    assert "0/4" in text and "ETA after the first run finishes" in text and "a#1: freed · gcore" in text
    now[0] += 30
    progress(RunFinished("a#1", 30.0, "1 PASS", 1, 4))
    progress(RunStarted("b#1", "go"))
    console.print(progress.render())
    text = console.export_text()
    assert "1/4" in text and "ETA ~1m30s" in text and "b#1: starting" in text and "a#1" not in text


def test_eta_is_the_mean_wall_time_of_finished_runs():
    assert eta_seconds(60.0, 0, 10) is None
    assert eta_seconds(60.0, 3, 10) == pytest.approx(140.0)
    assert eta_seconds(60.0, 10, 10) == 0


# --- the command, for real ---------------------------------------------------------------------------------

def harness(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "remanence", "run", *arguments]


@pytest.mark.e2e
def test_plain_lines_quiet_and_verbose_when_stderr_is_not_a_terminal(tmp_path):
    from suite_run import require
    require("c", "procmem")
    plain = subprocess.run(harness("malloc.memzero", "malloc.nowipe", "--method", "procmem", "-j", "1",
                                   "--out", str(tmp_path / "plain")), capture_output=True, text=True, timeout=300)
    lines = plain.stderr.splitlines()
    assert lines[0] == "2 run(s) planned"
    assert "malloc.memzero#1: starting c target" in lines and "malloc.memzero#1: freed: reached" in lines
    assert any(re.fullmatch(r"malloc\.memzero#1: freed: procmem: [\d.]+ MiB scanned in [\d.]+ s, 0 hit\(s\)", line)
               for line in lines)
    assert any(re.fullmatch(r"malloc\.nowipe#1: finished in [\d.]+ s: \d+ PASS \(2/2 runs done\)", line)
               for line in lines)
    quiet = subprocess.run(harness("malloc.memzero", "--method", "procmem", "-q", "--out", str(tmp_path / "quiet")),
                           capture_output=True, text=True, timeout=300)
    assert (quiet.returncode, quiet.stderr, quiet.stdout) == (0, "", "")
    verbose = subprocess.run(harness("malloc.memzero", "--method", "procmem", "-v", "--out", str(tmp_path / "verbose")),
                             capture_output=True, text=True, timeout=300)
    assert "malloc.memzero#1: in_use: procmem snapshot" in verbose.stderr.splitlines()


def on_a_terminal(arguments: list[str], until: bytes | None = None) -> tuple[int, bytes]:
    """Run the harness with stderr on a pseudo-terminal (stdout a pipe); with `until`, send SIGINT once the
    terminal shows it. The exit code and everything the terminal received."""
    controller, terminal = pty.openpty()
    env = {**os.environ, "COLUMNS": "120", "LINES": "40", "TERM": "xterm"}
    env.pop("NO_COLOR", None)
    process = subprocess.Popen(arguments, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=terminal,
                               env=env)
    os.close(terminal)
    received, interrupted = b"", False
    while True:
        ready, _, _ = select.select([controller], [], [], 1.0)
        if not ready:
            if process.poll() is not None:
                break
            continue
        try:
            chunk = os.read(controller, 65536)
        except OSError:   # the last writer closed the terminal
            break
        if not chunk:
            break
        received += chunk
        if until is not None and not interrupted and until in ANSI.sub(b"", received):
            process.send_signal(signal.SIGINT)
            interrupted = True
    os.close(controller)
    return process.wait(timeout=120), received


@pytest.mark.e2e
def test_live_display_on_a_terminal_shows_runs_done_and_an_eta_and_ends_cleanly(tmp_path):
    from suite_run import require
    require("c", "procmem")
    code, received = on_a_terminal(harness("malloc.memzero", "malloc.nowipe", "malloc.memset", "--method", "procmem",
                                           "-j", "1", "--out", str(tmp_path / "out")))
    assert code == 0
    text = ANSI.sub(b"", received).decode()
    assert "1/3" in text and "2/3" in text and "3/3" in text
    assert re.search(r"ETA ~\dm\d\ds \(mean wall time of the 1 finished run\(s\)\)", text)
    assert "procmem snapshot" not in text      # the snapshot lines are for -v
    tail = received[received.rindex(b"\x1b[?25h"):]   # the cursor shown again, the display erased ...
    assert ANSI.sub(b"", tail).strip() == b"wrote " + str(tmp_path / "out" / "results.json").encode()


@pytest.mark.e2e
def test_ctrl_c_leaves_the_terminal_clean(tmp_path):
    from suite_run import require
    require("c", "procmem")
    scenarios = tmp_path / "scenarios"
    scenarios.mkdir()
    (scenarios / "hang.toml").write_text(
        'name = "hang"\ntarget = "c"\nentry = "selftest.hang"\nmethods = ["procmem"]\ntimeout = 120\n'
        '[secret]\nform = "binary"\nlength = 32\n'
        '[[checkpoints]]\nname = "in_use"\nexpect = "observe"\nwhy = "never reached"\n')
    code, received = on_a_terminal(harness("--scenarios", str(scenarios), "--out", str(tmp_path / "out"),
                                           "--format", "json"), until=b"hang#1: starting")
    assert code == 130, ANSI.sub(b"", received).decode(errors="replace")[-3000:]
    tail = received[received.rindex(b"\x1b[?25h"):]
    lines = [line.strip() for line in ANSI.sub(b"", tail).decode().splitlines() if line.strip()]
    assert lines == [f"wrote {tmp_path / 'out' / 'results.json'}"]
    assert json.loads((tmp_path / "out" / "results.json").read_text())["interrupted"]
