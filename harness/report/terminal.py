"""The terminal view of a results document: a rich table of verdicts. Colour follows rich's rules, NO_COLOR included.

A `subject` column appears only when some verdict is about something other than the planted secret (a value the
target derived from it, or a `remanence scan` value); documents without the field are about the secret alone."""
from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..model import Outcome

STYLES = {Outcome.PASS.value: "green", Outcome.FAIL.value: "bold red", Outcome.INCONCLUSIVE.value: "yellow",
          Outcome.ERROR.value: "bold magenta", Outcome.SKIP.value: "dim"}


def _subject(item: dict) -> str:
    return item.get("subject") or "secret"


def print_verdicts(doc: dict, console: Console) -> None:
    subjects = any(_subject(v) != "secret" for v in doc["verdicts"])
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
