"""The terminal view: a rich table of verdicts on stdout. Colour follows rich's rules, NO_COLOR included."""
from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..model import Outcome
from ..results import Results

STYLES = {Outcome.PASS: "green", Outcome.FAIL: "bold red", Outcome.INCONCLUSIVE: "yellow",
          Outcome.ERROR: "bold magenta", Outcome.SKIP: "dim"}


def print_verdicts(results: Results, console: Console) -> None:
    table = Table(title="remanence verdicts", show_lines=False, expand=False)
    for column in ("scenario", "#", "checkpoint", "method", "expect", "verdict", "reason"):
        table.add_column(column, overflow="fold", no_wrap=column != "reason")
    for v in results.verdicts:
        table.add_row(escape(v.scenario), str(v.repetition), escape(v.checkpoint), v.method, v.expect.value,
                      f"[{STYLES[v.outcome]}]{v.outcome.value}[/]", escape(v.reason))
    console.print(table)
    repeated = [a for a in results.aggregates() if a.runs > 1]
    if repeated:
        rates = Table(title="repetition rates")
        for column in ("scenario", "checkpoint", "method", "expect", "secret found", "outcomes"):
            rates.add_column(column)
        for a in repeated:
            outcomes = ", ".join(f"[{STYLES[Outcome(k)]}]{n}/{a.runs} {k}[/]" for k, n in a.outcomes.items())
            rates.add_row(escape(a.scenario), escape(a.checkpoint), a.method, a.expect, f"{a.found}/{a.runs}", outcomes)
        console.print(rates)
    counts = results.counts()
    summary = ", ".join(f"[{STYLES[Outcome(k)]}]{n} {k}[/]" for k, n in counts.items() if n)
    console.print(f"{len(results.runs)} run(s): {summary or 'no verdicts'}"
                  + (" [bold](interrupted)[/]" if results.interrupted else ""))
