"""Reporters: one small interface, one module per format. Reporters only read Results; they never scan or judge."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Protocol

from ..results import Results


class Reporter(Protocol):
    format: str
    filename: str

    def render(self, results: Results) -> str: ...


def reporters() -> dict[str, Reporter]:
    from .json_report import JsonReporter
    return {r.format: r for r in (JsonReporter(),)}


def write_report(reporter: Reporter, results: Results, out_dir: Path) -> Path:
    """Write atomically, so an interrupted write never leaves half a report behind."""
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / reporter.filename
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{reporter.filename}.")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(reporter.render(results))
    os.chmod(tmp, 0o644)
    os.replace(tmp, target)
    return target
