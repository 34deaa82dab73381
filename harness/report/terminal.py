"""The terminal view of a results document: findings first (where the secret survives, beside the gate), then the
table of verdicts. Colour follows rich's rules, NO_COLOR included.

A `subject` column appears only when some verdict is about something other than the planted secret (a value the
target derived from it, or a `remanence scan` value); documents without the field are about the secret alone."""
from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..model import Outcome
from .findings import LEGEND, findings, named_once

STYLES = {Outcome.PASS.value: "green", Outcome.FAIL.value: "bold red", Outcome.INCONCLUSIVE.value: "yellow",
          Outcome.ERROR.value: "bold magenta", Outcome.SKIP.value: "dim"}


def _subject(item: dict) -> str:
    return item.get("subject") or "secret"


MARK_STYLES = {True: "green", False: "bold red", None: ""}   # by Finding.expected


def print_findings(doc: dict, console: Console, subjects: bool) -> None:
    """One row per scenario x checkpoint x method (x subject); a scenario and checkpoint are named once for the rows
    below them, so the table stays narrow enough for 80 columns."""
    rows = findings(doc)
    if not rows:
        return
    table = Table(title="where the secret survives", title_justify="left", box=None, padding=(0, 1), pad_edge=False)
    for column in ("scenario", "checkpoint", "method") + (("subject",) if subjects else ()) + ("found", "gate"):
        table.add_column(column, overflow="fold", no_wrap=column == "method")
    for scenario, checkpoint, f in named_once(rows):
        style = "yellow" if f.state == "no evidence" else MARK_STYLES[f.expected]
        found = f"{f.mark}{escape(f.text)}"
        found = f"[{style}]{found}[/]" if style else found
        gate = ", ".join(f"[{STYLES.get(o, '')}]{words}[/]" for o, words in f.gate_words())
        table.add_row(escape(scenario), escape(checkpoint), f.method, *((escape(f.subject),) if subjects else ()),
                      found, gate)
    console.print(table)
    console.print(LEGEND + "\n", style="dim")


def print_verdicts(doc: dict, console: Console) -> None:
    subjects = any(_subject(v) != "secret" for v in doc["verdicts"])
    print_findings(doc, console, subjects)
    table = Table(title="remanence verdicts", show_lines=False, expand=False)
    columns = ("scenario", "#", "checkpoint", "method") + (("subject",) if subjects else ()) \
        + ("expect", "verdict", "reason")
    for column in columns:
        table.add_column(column, overflow="fold", no_wrap=column != "reason")
    for v in doc["verdicts"]:
        table.add_row(escape(v["scenario"]), str(v["repetition"]), escape(v["checkpoint"]), v["method"],
                      *((escape(_subject(v)),) if subjects else ()), v["expect"],
                      f"[{STYLES[v['outcome']]}]{v['outcome']}[/]", escape(v["reason"]))
    console.print(table)
    repeated = [a for a in doc["aggregates"] if a["runs"] > 1]
    if repeated:
        rates = Table(title="repetition rates")
        for column in ("scenario", "checkpoint", "method") + (("subject",) if subjects else ()) \
                + ("expect", "found" if subjects else "secret found", "outcomes"):
            rates.add_column(column)
        for a in repeated:
            outcomes = ", ".join(f"[{STYLES[k]}]{n}/{a['runs']} {k}[/]" for k, n in a["outcomes"].items())
            rates.add_row(escape(a["scenario"]), escape(a["checkpoint"]), a["method"],
                          *((escape(_subject(a)),) if subjects else ()), a["expect"],
                          f"{a['found']}/{a['runs']}", outcomes)
        console.print(rates)
    summary = ", ".join(f"[{STYLES[k]}]{n} {k}[/]" for k, n in doc["summary"].items() if n)
    shards = f" from {len(doc['merged_from'])} shard(s)" if "merged_from" in doc else ""
    console.print(f"{len(doc['runs'])} run(s){shards}: {summary or 'no verdicts'}"
                  + (" [bold](interrupted)[/]" if doc["interrupted"] else ""))
