"""Target programs: building them (cached by source hash) and asking which scenarios they register."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
TARGETS_DIR = PROJECT_ROOT / "targets"
BINARY_NAMES = {"c": "remanence-target-c"}


class TargetUnavailable(Exception):
    """This machine cannot build or run a target; the message says why (shown as a SKIP reason)."""


@dataclass(frozen=True)
class TargetProgram:
    language: str
    binary: Path
    entries: tuple[str, ...]


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "remanence" / "targets"


def _source_hash(source: Path, toolchain: str) -> str:
    digest = hashlib.sha256(toolchain.encode())
    for path in sorted(p for p in source.rglob("*") if p.is_file() and "build" not in p.relative_to(source).parts):
        digest.update(str(path.relative_to(source)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def _c_missing() -> str | None:
    for tool in ("gcc", "make"):
        if not shutil.which(tool):
            return f"{tool} not found on PATH"
    if not Path("/usr/include/sodium.h").exists():
        probe = subprocess.run(["pkg-config", "--exists", "libsodium"], capture_output=True) if shutil.which("pkg-config") else None
        if probe is None or probe.returncode != 0:
            return "libsodium headers not found (install Debian's libsodium-dev)"
    return None


def _toolchain_version(tool: str) -> str:
    return subprocess.run([tool, "--version"], capture_output=True, text=True).stdout.splitlines()[0]


def build_target(language: str) -> TargetProgram:
    """Build (or reuse the cached build of) the target for `language`; raise TargetUnavailable with the reason."""
    if language != "c":
        raise TargetUnavailable(f"no target program for language {language!r} yet")
    if reason := _c_missing():
        raise TargetUnavailable(reason)
    source = TARGETS_DIR / "c"
    out = cache_dir() / f"c-{_source_hash(source, _toolchain_version('gcc'))}"
    binary = out / BINARY_NAMES["c"]
    if not binary.exists():
        out.mkdir(parents=True, exist_ok=True)
        build = subprocess.run(["make", "-s", "-C", str(source), f"OUT={out}"], capture_output=True, text=True)
        if build.returncode != 0 or not binary.exists():
            raise TargetUnavailable(f"building the C target failed: {(build.stderr or build.stdout).strip()[-2000:]}")
    listing = subprocess.run([str(binary), "--list"], capture_output=True, text=True, timeout=30)
    if listing.returncode != 0:
        raise TargetUnavailable(f"{binary} --list exited {listing.returncode}: {listing.stderr.strip()[-500:]}")
    return TargetProgram(language, binary, tuple(listing.stdout.split()))
