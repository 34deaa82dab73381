"""Reporters: one small interface, one module per format.

Every reporter renders the results document (the plain data of results.json, see
json_report.results_document), so merged shard results render exactly like a single run.
Reporters never scan or judge."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Protocol

class Reporter(Protocol):
    format: str
    filename: str

    def render(self, doc: dict) -> str: ...


def reporters() -> dict[str, Reporter]:
    from .html_report import HtmlReporter
    from .json_report import JsonReporter
    from .junit_report import JunitReporter
    from .markdown_report import MarkdownReporter
    from .sarif_report import SarifReporter
    return {r.format: r for r in (JsonReporter(), HtmlReporter(), JunitReporter(), SarifReporter(), MarkdownReporter())}


def write_report(reporter: Reporter, doc: dict, out_dir: Path) -> Path:
    """Write atomically, so an interrupted write never leaves half a report behind."""
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / reporter.filename
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{reporter.filename}.")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(reporter.render(doc))
    os.chmod(tmp, 0o644)
    os.replace(tmp, target)
    return target
