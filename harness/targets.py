"""Target programs: building them (cached by source hash) and asking which scenarios they register."""
from __future__ import annotations

import contextlib
import fcntl
import functools
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .layout import ROOT as PROJECT_ROOT, TARGETS_DIR
from .process import die_with_parent

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
    entries: tuple[str, ...]     # the scenarios it registers; () for a user's program, whose argv is complete
    cwd: Path | None = None      # None: the run's private folder
    extra_env: tuple[tuple[str, str], ...] = ()

    @property
    def env(self) -> dict[str, str]:
        return {**TARGET_ENV.get(self.language, {}), **dict(self.extra_env)}

    def registers(self, entry: str) -> bool:
        """Whether `entry` names one of its scenarios (a user's program has none: its argv says what runs)."""
        return not self.entries or entry in self.entries

    def argv(self, entry: str) -> tuple[str, ...]:
        return (*self.command, entry) if self.entries else self.command


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


def _source_hash(sources: tuple[Path, ...], toolchain: str) -> str:
    """A hash of the toolchain and every file of `sources` (folders or single files: a target and the SDK it
    is built on)."""
    digest = hashlib.sha256(toolchain.encode())
    for source in sources:
        files = _source_files(source) if source.is_dir() else [source]
        for path in files:
            name = Path(source.name) / path.relative_to(source) if source.is_dir() else Path(source.name)
            digest.update(str(name).encode() + b"\0" + path.read_bytes())
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


def _cache_folder(language: str, sources: tuple[Path, ...], toolchain: str) -> Path:
    """The cache entry for a target built from `sources` (its own folder first) with `toolchain`."""
    for source in sources:
        if not source.exists():
            raise TargetUnavailable(f"{source} is missing")
    return cache_dir() / f"{language}-{_source_hash(sources, toolchain)}"


def run_step(language: str, argv: list[str], cwd: Path, env: dict | None = None) -> None:
    """One build or install command; its failure raises TargetUnavailable with the end of its output."""
    try:
        done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, env=env, timeout=600,
                              preexec_fn=die_with_parent)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise TargetUnavailable(f"building the {language} target failed: {' '.join(argv[:3])}: {e}") from None
    if done.returncode != 0:
        raise TargetUnavailable(f"building the {language} target failed: {' '.join(argv[:3])}: "
                                f"{(done.stderr or done.stdout).strip()[-2000:]}")


# A cache entry is a folder <language>-<hash> holding the built target and MANIFEST_NAME. It is built in a
# staging folder <entry>.tmp-XXXXXX, checked, then renamed into place, under the lock <entry>.lock; an entry
# is used only once its manifest matches and its --list answers, otherwise it is discarded and rebuilt.
MANIFEST_NAME = ".manifest.json"
SCENARIO_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
Build = Callable[[Path], None]             # fills a staging folder with a target
CommandIn = Callable[[Path], tuple[str, ...]]  # the target's argv prefix when it lives in a given folder


class _Unusable(Exception):
    """A cache entry that must not be used (missing, damaged, or its target does not answer --list)."""


def _tree(folder: Path) -> dict[str, list[int]]:
    """Every file and symlink under `folder` but the manifest and Python's own __pycache__ (which Python may
    rewrite): relative path -> [size, mode]."""
    tree = {}
    for parent, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in files + [d for d in dirs if os.path.islink(os.path.join(parent, d))]:
            path = os.path.join(parent, name)
            stat = os.lstat(path)
            tree[os.path.relpath(path, folder)] = [stat.st_size, stat.st_mode]
    tree.pop(MANIFEST_NAME, None)
    return tree


def _listing(folder: Path, command: tuple[str, ...]) -> tuple[str, ...]:
    """The scenario names the target in `folder` lists, once its files are all as they were built."""
    try:
        recorded = json.loads((folder / MANIFEST_NAME).read_text())
    except (OSError, ValueError) as e:
        raise _Unusable(f"no readable manifest ({e})") from None
    if not isinstance(recorded, dict):
        raise _Unusable(f"{MANIFEST_NAME} is not a manifest")
    present = _tree(folder)
    if changed := sorted(p for p, attrs in recorded.items() if present.get(p) != attrs):
        raise _Unusable(f"{len(changed)} file(s) missing or changed since the build, e.g. {changed[0]}")
    try:
        done = subprocess.run([*command, "--list"], capture_output=True, text=True, timeout=60,
                              preexec_fn=die_with_parent)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise _Unusable(f"{' '.join(command)} --list failed: {e}") from None
    names = tuple(done.stdout.split())
    if done.returncode != 0:
        raise _Unusable(f"{' '.join(command)} --list exited {done.returncode}: {done.stderr.strip()[-500:]}")
    if not names or not all(SCENARIO_NAME.fullmatch(n) for n in names):
        raise _Unusable(f"{' '.join(command)} --list did not answer with scenario names: {done.stdout[:200]!r}")
    return names


@contextlib.contextmanager
def _entry_lock(entry: Path):
    """Held while an entry is checked again, discarded or built: concurrent harnesses build it once."""
    with open(entry.with_name(entry.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)   # released when the handle closes, or when its holder dies
        yield


def _staging_folder(entry: Path) -> Path:
    return Path(tempfile.mkdtemp(prefix=entry.name + ".tmp-", dir=entry.parent))


def _discard(entry: Path) -> None:
    """Under the entry's lock: remove the entry (moved aside first, so it disappears at once rather than
    file by file under a reader) and the staging folders a killed build left behind."""
    if entry.exists() or entry.is_symlink():
        entry.rename(_staging_folder(entry) / "discarded")
    for leftover in entry.parent.glob(glob.escape(entry.name) + ".tmp-*"):
        shutil.rmtree(leftover, ignore_errors=True)


def _cached_target(language: str, entry: Path, build: Build, command_in: CommandIn) -> TargetProgram:
    """The target from cache entry `entry`, (re)built first unless it is whole and answers --list."""
    try:
        return TargetProgram(language, command_in(entry), _listing(entry, command_in(entry)))
    except _Unusable:
        pass
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        with _entry_lock(entry):
            try:  # another harness may have built it while this one waited for the lock
                return TargetProgram(language, command_in(entry), _listing(entry, command_in(entry)))
            except _Unusable:
                _discard(entry)
            staging = _staging_folder(entry)
            try:
                build(staging)
                (staging / MANIFEST_NAME).write_text(json.dumps(_tree(staging)))
                try:
                    names = _listing(staging, command_in(staging))
                except _Unusable as e:
                    raise TargetUnavailable(f"the {language} target just built does not work: {e}") from None
                staging.chmod(0o755)   # mkdtemp's 0700 is for the build only
                staging.rename(entry)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    except OSError as e:
        raise TargetUnavailable(f"cannot build the {language} target in {entry.parent}: {e}") from None
    return TargetProgram(language, command_in(entry), names)


def _compile(language: str, source: Path, argv: list[str], env: dict | None = None) -> Build:
    """Build step of a compiled target: `argv` run in `source`, {OUT} and {BIN} naming the staging folder
    and the binary in it."""
    def build(staging: Path) -> None:
        binary = staging / BINARY_NAMES[language]
        run_step(language, [a.replace("{OUT}", str(staging)).replace("{BIN}", str(binary)) for a in argv], source, env)
        if not binary.is_file():
            raise TargetUnavailable(f"building the {language} target failed: {' '.join(argv[:3])} wrote no {binary.name}")
    return build


def _install(language: str, copies: dict[str, Path], steps: list[list[str]]) -> Build:
    """Build steps of an interpreted target: each source (a folder's files, or one file) copied to its place in
    the staging folder ("" for the top), then the install steps (npm ci, pip install) run there, {OUT} naming it."""
    def build(staging: Path) -> None:
        for place, source in copies.items():
            files = _source_files(source) if source.is_dir() else [source]
            for path in files:
                target = staging / place / (path.relative_to(source) if source.is_dir() else path.name)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
        for step in steps:
            run_step(language, [a.replace("{OUT}", str(staging)) for a in step], staging)
    return build


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
        source = TARGETS_DIR / "c"
        return _cached_target("c", _cache_folder("c", (source, TARGETS_DIR / "sdk" / "c"), _toolchain_version("gcc")),
                              _compile("c", source, ["make", "-s", "OUT={OUT}", "BIN={BIN}"]),
                              lambda folder: (str(folder / BINARY_NAMES["c"]),))
    if language == "go":
        go = go_tool()
        reason, version = _go_problem(go)
        if reason:
            raise TargetUnavailable(reason)
        source = TARGETS_DIR / "go"
        env = dict(os.environ, GOEXPERIMENT="runtimesecret", CGO_ENABLED="0")
        return _cached_target("go", _cache_folder("go", (source, TARGETS_DIR / "sdk" / "go"), version),
                              _compile("go", source, [go, "build", "-trimpath", "-o", "{BIN}", "."], env),
                              lambda folder: (str(folder / BINARY_NAMES["go"]),))
    if language == "node":
        reason, version = _node_problem()
        if reason:
            raise TargetUnavailable(reason)
        # The target depends on the SDK by a relative file: path, which its copy keeps (node/ beside sdk/node/).
        source, sdk = TARGETS_DIR / "node", TARGETS_DIR / "sdk" / "node"
        return _cached_target("node", _cache_folder("node", (source, sdk), version),
                              _install("node", {"node": source, "sdk/node": sdk},
                                       [["npm", "ci", "--prefix", "{OUT}/node", "--no-audit", "--no-fund"]]),
                              lambda folder: (shutil.which("node"), "--expose-gc", str(folder / "node" / "target.js")))
    if language == "python":
        # The target gets a venv of its own (PyNaCl pinned in requirements.txt), made with this interpreter, and
        # the SDK it is written on beside it as the package `remanence` (the venv does not hold the harness).
        source, sdk = TARGETS_DIR / "python", Path(__file__).with_name("sdk.py")
        return _cached_target("python", _cache_folder("python", (source, sdk), sys.version),
                              _install("python", {"": source, "remanence": sdk}, [
                                  [sys.executable, "-c", "open('remanence/__init__.py', 'x').close()"],
                                  [sys.executable, "-m", "venv", "{OUT}/venv"],
                                  ["{OUT}/venv/bin/pip", "install", "--no-cache-dir", "--disable-pip-version-check",
                                   "-q", "-r", "requirements.txt"]]),
                              lambda folder: (str(folder / "venv" / "bin" / "python"), "-E", "-s",
                                              str(folder / "target.py")))
    raise TargetUnavailable(f"no target program for language {language!r}")
