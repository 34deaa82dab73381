"""Where the harness may write: every file it creates lies under a folder it was given (--out, its work folder)."""
from __future__ import annotations

from pathlib import Path


class OutsideError(ValueError):
    """A path the harness was about to write lies outside the folder it belongs in (exit code 2)."""


def inside(base: Path | str, path: Path | str) -> Path:
    """`path` (relative paths are taken under `base`) resolved, if it lies strictly under `base`; else OutsideError.
    Symbolic links are resolved first, so a link inside `base` pointing out of it is refused too."""
    root = Path(base).resolve()
    resolved = (root / path).resolve()
    if resolved == root or not resolved.is_relative_to(root):
        raise OutsideError(f"{path}: refusing to write outside {base}")
    return resolved
