"""results.json: the document itself (built, read and merged by harness/document.py)."""
from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True)
class JsonReporter:
    format: str = "json"
    filename: str = "results.json"

    def render(self, doc: dict) -> str:
        return json.dumps(doc, indent=2) + "\n"
