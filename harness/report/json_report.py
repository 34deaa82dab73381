"""results.json: the document itself (built, read, written and merged by harness/document.py)."""
from __future__ import annotations

from dataclasses import dataclass

from ..document import dumps


@dataclass(frozen=True)
class JsonReporter:
    format: str = "json"
    filename: str = "results.json"

    def render(self, doc: dict) -> str:
        return dumps(doc)
