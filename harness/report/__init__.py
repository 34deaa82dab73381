"""Reporters: one small interface, one module per format.

Every reporter renders the results document (the plain data of results.json, built, read and merged by
harness/document.py), so merged shard results render exactly like a single run.
Reporters never scan or judge."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Protocol

from ..paths import inside


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


def report_mode(doc: dict) -> int:
    """0600 for a report holding secret bytes (--show-secrets), else 0644."""
    return 0o600 if doc.get("secrets_shown") else 0o644


def write_atomically(path: Path, text: str, mode: int) -> Path:
    """Write to a temporary name in the same folder, then rename: an interrupted write never leaves half a file.
    The temporary file is created 0600 (mkstemp), so secret bytes are never readable by others, even briefly."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def write_report(reporter: Reporter, doc: dict, out_dir: Path, path: Path | str | None = None) -> Path:
    """`reporter`'s rendering of `doc`, atomically, to `path` (a path of the user's choosing) or to
    OUT/<the reporter's file name>, which must lie inside `out_dir`."""
    target = Path(path) if path is not None else inside(out_dir, reporter.filename)
    return write_atomically(target, reporter.render(doc), report_mode(doc))
