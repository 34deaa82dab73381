"""Target programs: building them (cached by source hash) and asking which scenarios they register."""
from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
TARGETS_DIR = PROJECT_ROOT / "targets"
BINARY_NAMES = {"c": "remanence-target-c", "go": "remanence-target-go"}
NODE_VERSION_MIN = 18
MIN_GO = (1, 26)
RUNTIME_SECRET_PLATFORMS = ("linux/amd64", "linux/arm64")
# Fixed per-language additions to a target's environment. GOTRACEBACK=crash makes a Go target that gets
# SIGABRT dump core (the kernel-core method) instead of exiting with status 2.
TARGET_ENV = {"c": {}, "go": {"GOTRACEBACK": "crash"}, "node": {}, "python": {}}


class TargetUnavailable(Exception):
    """This machine cannot build or run a target; the message says why (shown as a SKIP reason)."""


@dataclass(frozen=True)
class TargetProgram:
    language: str
    command: tuple[str, ...]     # argv before the scenario name: the binary, or an interpreter and its script
    entries: tuple[str, ...]

    @property
    def env(self) -> dict[str, str]:
        return TARGET_ENV[self.language]


# How each target's sources register a scenario: C's macro, Go's and Node's register(), Python's decorator.
REGISTRATION_MARKS = ("REMANENCE_SCENARIO", "register(", "@scenario(")
SOURCE_SUFFIXES = {"c": (".c",), "go": (".go",), "node": (".js",), "python": (".py",)}


@functools.lru_cache(maxsize=None)  # the report asks once per run: read the target sources once
def registration_site(language: str, entry: str) -> tuple[str, int] | None:
    """(path relative to the project, 1-based line) where the target registers `entry`, if it can be found."""
    folder = TARGETS_DIR / language
    needles = (f'"{entry}"', f"'{entry}'")
    for path in sorted(folder.glob("*")) if folder.is_dir() else []:
        text = path.read_text(errors="replace") if path.suffix in SOURCE_SUFFIXES.get(language, ()) else ""
        if text.startswith("//go:build"):  # a test-only build variant, not the scenario's home
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if any(n in line for n in needles) and any(m in line for m in REGISTRATION_MARKS):
                return str(path.relative_to(PROJECT_ROOT)), number
    return None


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "remanence" / "targets"


def _source_files(source: Path) -> list[Path]:
    skipped = ("build", "node_modules", "__pycache__")
    return sorted(p for p in source.rglob("*") if p.is_file() and not set(skipped) & set(p.relative_to(source).parts))


def _source_hash(source: Path, toolchain: str) -> str:
    digest = hashlib.sha256(toolchain.encode())
    for path in _source_files(source):
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


def go_tool() -> str | None:
    """The go command to use: $REMANENCE_GO if set, else go on PATH."""
    return os.environ.get("REMANENCE_GO") or shutil.which("go")


def _go_problem(go: str | None) -> tuple[str | None, str]:
    """(why this Go cannot build the target or None, its version string)."""
    if not go:
        return f"go not found on PATH (Go >= {MIN_GO[0]}.{MIN_GO[1]} is needed for runtime/secret)", ""
    try:
        probe = subprocess.run([go, "env", "GOVERSION", "GOOS", "GOARCH"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{go} does not run: {e}", ""
    fields = probe.stdout.split()
    if probe.returncode != 0 or len(fields) != 3:
        return f"{go} env failed: {(probe.stderr or probe.stdout).strip()[-300:]}", ""
    version, platform = fields[0], f"{fields[1]}/{fields[2]}"
    match = re.match(r"go(\d+)\.(\d+)", version)
    if not match or (int(match[1]), int(match[2])) < MIN_GO:
        return f"{version} is older than go{MIN_GO[0]}.{MIN_GO[1]}, the first with runtime/secret", version
    if platform not in RUNTIME_SECRET_PLATFORMS:
        return f"runtime/secret only erases on {' and '.join(RUNTIME_SECRET_PLATFORMS)}, this Go targets {platform}", version
    return None, version


def _cache_folder(language: str, source: Path, toolchain: str) -> Path:
    if not source.is_dir():
        raise TargetUnavailable(f"{source} is missing")
    return cache_dir() / f"{language}-{_source_hash(source, toolchain)}"


def _run_step(language: str, argv: list[str], cwd: Path, env: dict | None = None) -> None:
    """One build or install command; its failure, with the end of its output, is the target's SKIP reason."""
    try:
        done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, env=env, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise TargetUnavailable(f"building the {language} target failed: {' '.join(argv[:3])}: {e}") from None
    if done.returncode != 0:
        raise TargetUnavailable(f"building the {language} target failed: {' '.join(argv[:3])}: "
                                f"{(done.stderr or done.stdout).strip()[-2000:]}")


def _build(language: str, source: Path, toolchain: str, command: list[str], env: dict | None = None) -> Path:
    out = _cache_folder(language, source, toolchain)
    binary = out / BINARY_NAMES[language]
    if not binary.exists():
        out.mkdir(parents=True, exist_ok=True)
        partial = out / (binary.name + ".partial")
        _run_step(language, [c.replace("{OUT}", str(out)).replace("{BIN}", str(partial)) for c in command], source, env)
        if not partial.exists():
            raise TargetUnavailable(f"building the {language} target failed: {partial.name} was not written")
        partial.rename(binary)  # only a complete build is ever cached
    return binary


def _install(language: str, source: Path, toolchain: str, steps: list[list[str]], product: str) -> Path:
    """For interpreted targets: copy the sources into a cache folder and run the install steps there
    (npm ci, pip install); the folder is only published once every step succeeded."""
    out = _cache_folder(language, source, toolchain)
    if not (out / product).exists():
        partial = out.with_name(out.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        for path in _source_files(source):
            (partial / path.relative_to(source)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, partial / path.relative_to(source))
        for step in steps:
            _run_step(language, [a.replace("{OUT}", str(partial)) for a in step], partial)
        shutil.rmtree(out, ignore_errors=True)
        partial.rename(out)
    return out


def _node_problem() -> tuple[str | None, str]:
    """(why node cannot run the target or None, its version)."""
    for tool in ("node", "npm"):
        if not shutil.which(tool):
            return f"{tool} not found on PATH (the Node target needs Node >= {NODE_VERSION_MIN} and npm)", ""
    version = _toolchain_version("node")
    match = re.match(r"v(\d+)\.", version)
    if not match or int(match[1]) < NODE_VERSION_MIN:
        return f"node {version} is older than {NODE_VERSION_MIN}", version
    return None, version


def build_target(language: str) -> TargetProgram:
    """Build (or reuse the cached build of) the target for `language`; raise TargetUnavailable with the reason."""
    if language == "c":
        if reason := _c_missing():
            raise TargetUnavailable(reason)
        binary = _build("c", TARGETS_DIR / "c", _toolchain_version("gcc"),
                        ["make", "-s", "OUT={OUT}", "BIN={BIN}"])
    elif language == "go":
        go = go_tool()
        reason, version = _go_problem(go)
        if reason:
            raise TargetUnavailable(reason)
        env = dict(os.environ, GOEXPERIMENT="runtimesecret", CGO_ENABLED="0")
        binary = _build("go", TARGETS_DIR / "go", version, [go, "build", "-trimpath", "-o", "{BIN}", "."], env)
    elif language == "node":
        reason, version = _node_problem()
        if reason:
            raise TargetUnavailable(reason)
        out = _install("node", TARGETS_DIR / "node", version, [["npm", "ci", "--no-audit", "--no-fund"]], "node_modules")
        command = (shutil.which("node"), "--expose-gc", str(out / "target.js"))
    elif language == "python":
        # The target gets a venv of its own (PyNaCl pinned in requirements.txt), made with this interpreter.
        out = _install("python", TARGETS_DIR / "python", sys.version,
                       [[sys.executable, "-m", "venv", "{OUT}/venv"],
                        ["{OUT}/venv/bin/pip", "install", "--no-cache-dir", "--disable-pip-version-check", "-q",
                         "-r", "requirements.txt"]], "venv")
        command = (str(out / "venv" / "bin" / "python"), "-E", "-s", str(out / "target.py"))
    else:
        raise TargetUnavailable(f"no target program for language {language!r}")
    if language in ("c", "go"):
        command = (str(binary),)
    try:
        listing = subprocess.run([*command, "--list"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise TargetUnavailable(f"{' '.join(command)} --list failed: {e}") from None
    if listing.returncode != 0:
        raise TargetUnavailable(f"{' '.join(command)} --list exited {listing.returncode}: {listing.stderr.strip()[-500:]}")
    return TargetProgram(language, command, tuple(listing.stdout.split()))
