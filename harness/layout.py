"""Where the built-in scenarios and target sources are: the checkout, or the copy a wheel carries."""
from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
_BUNDLED = PACKAGE_DIR / "bundled"
# An installed wheel has remanence/bundled/{scenarios,targets}; a checkout (or an editable install of
# one) has them beside harness/. Paths in reports are relative to this root either way.
ROOT = _BUNDLED if (_BUNDLED / "scenarios").is_dir() else PACKAGE_DIR.parent
SCENARIOS_DIR = ROOT / "scenarios"
TARGETS_DIR = ROOT / "targets"
