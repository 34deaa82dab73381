"""remanence.toml: defaults for run options and the gate's suppressions, validated like scenario files.

Discovery (first that applies): `--config FILE`, then $REMANENCE_CONFIG, then ./remanence.toml, then no
config (built-in defaults). A file named by --config or $REMANENCE_CONFIG must exist. Relative paths in the
file (out, scenarios, baseline, formats' NAME=PATH) are relative to the file's folder.

    [run]
    scenarios = "scenarios"                 # scenario folder
    methods = ["procmem", "gcore"]
    repeat = 3
    timeout = 30                            # seconds per checkpoint
    jobs = 2                                # runs at once (default: the number of cores)
    out = "reports"
    formats = ["json", "sarif", "md=-"]     # like --format: NAME or NAME=PATH, PATH "-" = stdout
    baseline = "ci/baseline.json"           # like --baseline
    allow_skip = false                      # like --allow-skip: SKIP verdicts do not fail the gate

    [[suppress]]
    id = "stdio-buffer"                     # optional label
    scenario = "stdio.copy"                 # glob; this or fingerprint is required
    method = "gcore"                        # optional glob
    checkpoint = "in_use"                   # optional glob
    fingerprint = ["0123456789abcdef"]      # optional: a string or a list; every fingerprint of the verdict must be listed
    reason = "known glibc stdio buffer; tracked in #12"   # required, non-empty
    expires = 2027-01-31                    # optional TOML date; the suppression holds through that day
"""
from __future__ import annotations

import datetime as dt
import fnmatch
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .scenario import MAX_REPEAT, SNAPSHOT_METHODS, seconds_problem
from .schedule import MAX_JOBS
from .suggest import unknown
from .tomltable import TomlTable, load_toml

CONFIG_ENV = "REMANENCE_CONFIG"
CONFIG_NAME = "remanence.toml"
STDOUT = "-"
_FINGERPRINT = re.compile(r"^[0-9a-f]{16}$")
_GLOB_CHARS = set("*?[")


class ConfigError(Exception):
    """A config file (or a format list) is broken. The message names the file and the key (exit code 2)."""

    def __init__(self, path: Path | str | None, key: str, message: str):
        self.path, self.key = (Path(path) if path else None), key
        where = (f"{path}: " if path else "") + (f"{key}: " if key else "")
        super().__init__(where + message)


@dataclass(frozen=True)
class FormatSpec:
    """One requested report: reporter `name`, written to `path` (None: OUT/<reporter's filename>; "-": stdout)."""

    name: str
    path: str | None = None

    @property
    def to_stdout(self) -> bool:
        return self.path == STDOUT


def parse_formats(items: list[str], known: list[str], base: Path | None = None,
                  path: Path | None = None, key: str = "--format") -> list[FormatSpec]:
    """`json`, `md=-`, `sarif=out/x.sarif`, ... Unknown names, empty paths and two reports on stdout are errors.
    Relative paths are made relative to `base` when given (a config file's folder)."""
    specs: list[FormatSpec] = []
    for i, item in enumerate(items):
        where = key if path is None else f"{key}[{i}]"
        if not isinstance(item, str):
            raise ConfigError(path, where, f"expected a string NAME or NAME=PATH, got {item!r}")
        name, eq, target = item.strip().partition("=")
        name, target = name.strip(), target.strip()
        if name not in known:
            raise ConfigError(path, where, unknown("format", name, known))
        if eq and not target:
            raise ConfigError(path, where, f"{item!r}: empty PATH after '=' (use {name}=- for stdout)")
        if target and target != STDOUT and base is not None and not Path(target).is_absolute():
            target = str(base / target)
        specs.append(FormatSpec(name, target or None))
    if not specs:
        raise ConfigError(path, key, f"no format given (known: {', '.join(known)})")
    if sum(s.to_stdout for s in specs) > 1:
        raise ConfigError(path, key, "only one format can be written to stdout ('-')")
    return specs


def split_formats(value: str) -> list[str]:
    return [f for f in (part.strip() for part in value.split(",")) if f]


@dataclass(frozen=True)
class RunDefaults:
    scenarios: Path | None = None
    methods: tuple[str, ...] | None = None
    repeat: int | None = None
    timeout: float | None = None
    jobs: int | None = None
    out: Path | None = None
    formats: tuple[FormatSpec, ...] | None = None
    baseline: Path | None = None
    allow_skip: bool = False


@dataclass(frozen=True)
class Suppression:
    index: int                                  # position in the file: suppress[index]
    reason: str
    scenario: str | None = None
    method: str | None = None
    checkpoint: str | None = None
    fingerprints: tuple[str, ...] = ()
    expires: dt.date | None = None
    id: str | None = None

    @property
    def label(self) -> str:
        """How messages name it: its id, or its place in the file and what it matches."""
        if self.id:
            return self.id
        what = ", ".join(f"{k}={v}" for k, v in (("scenario", self.scenario), ("method", self.method),
                                                  ("checkpoint", self.checkpoint)) if v)
        if self.fingerprints:
            what += (", " if what else "") + "fingerprint=" + "|".join(self.fingerprints)
        return f"suppress[{self.index}] ({what})"

    def expired(self, today: dt.date) -> bool:
        """Expired the day after `expires`: the date is the last day it holds."""
        return self.expires is not None and today > self.expires

    def matches(self, verdict: dict) -> bool:
        for key, pattern in (("scenario", self.scenario), ("method", self.method), ("checkpoint", self.checkpoint)):
            if pattern is not None and not fnmatch.fnmatchcase(str(verdict.get(key, "")), pattern):
                return False
        if self.fingerprints:
            prints = verdict.get("fingerprints") or []
            if not prints or not set(prints) <= set(self.fingerprints):
                return False
        return True

    def as_dict(self) -> dict:
        return {"id": self.id or f"suppress[{self.index}]", "reason": self.reason,
                "expires": self.expires.isoformat() if self.expires else None}

    def describe(self) -> dict:
        """The suppression with its filters: for the gate's lists of expired and unused suppressions."""
        return {**self.as_dict(), "label": self.label, "scenario": self.scenario, "method": self.method,
                "checkpoint": self.checkpoint, "fingerprints": list(self.fingerprints)}


@dataclass(frozen=True)
class Config:
    path: Path | None = None                    # None: no config file, built-in defaults
    run: RunDefaults = field(default_factory=RunDefaults)
    suppressions: tuple[Suppression, ...] = ()


def _method_pattern(t: TomlTable, name: str, value: str) -> None:
    if not value:
        raise t.fail(name, "must not be empty")
    if not _GLOB_CHARS & set(value) and value not in SNAPSHOT_METHODS:
        raise t.fail(name, unknown("method", value, SNAPSHOT_METHODS))


def _run_defaults(t: TomlTable, base: Path, known_formats: list[str]) -> RunDefaults:
    t.reject_unknown(("scenarios", "methods", "repeat", "timeout", "jobs", "out", "formats", "baseline", "allow_skip"))
    methods = t.string_list("methods")
    if methods is not None:
        if not methods:
            raise t.fail("methods", "must list one or more methods")
        for i, m in enumerate(methods):
            if m not in SNAPSHOT_METHODS:
                raise t.fail(f"methods[{i}]", unknown("method", m, SNAPSHOT_METHODS))
    repeat = t.get("repeat", int)
    if repeat is not None and not 1 <= repeat <= MAX_REPEAT:
        raise t.fail("repeat", f"{repeat} is out of range 1..{MAX_REPEAT}")
    timeout = t.get("timeout", (int, float))
    if timeout is not None and (problem := seconds_problem(timeout)):
        raise t.fail("timeout", problem)
    jobs = t.get("jobs", int)
    if jobs is not None and not 1 <= jobs <= MAX_JOBS:
        raise t.fail("jobs", f"{jobs} is out of range 1..{MAX_JOBS}")
    paths = {}
    for key in ("scenarios", "out", "baseline"):
        value = t.get(key, str)
        if value is not None and not value.strip():
            raise t.fail(key, "must not be empty")
        paths[key] = None if value is None else base / value
    formats = t.string_list("formats")
    specs = None if formats is None else tuple(parse_formats(formats, known_formats, base, t.path, f"{t.prefix}formats"))
    return RunDefaults(paths["scenarios"], tuple(methods) if methods else None, repeat,
                       None if timeout is None else float(timeout), jobs, paths["out"], specs, paths["baseline"],
                       t.get("allow_skip", bool, False))


def _suppression(t: TomlTable, index: int) -> Suppression:
    t.reject_unknown(("id", "scenario", "method", "checkpoint", "fingerprint", "reason", "expires"))
    reason = t.get("reason", str, required=True)
    if not reason.strip():
        raise t.fail("reason", "must say why the finding is accepted (it is empty)")
    ident = t.get("id", str)
    if ident is not None and not ident.strip():
        raise t.fail("id", "must not be empty")
    filters = {}
    for key in ("scenario", "method", "checkpoint"):
        value = t.get(key, str)
        if value is not None and not value.strip():
            raise t.fail(key, "must not be empty")
        filters[key] = value
    if filters["method"] is not None:
        _method_pattern(t, "method", filters["method"])
    raw = t.get("fingerprint", (str, list))
    prints = [raw] if isinstance(raw, str) else (raw or [])
    for i, fp in enumerate(prints):
        key = "fingerprint" if isinstance(raw, str) else f"fingerprint[{i}]"
        if not isinstance(fp, str) or not _FINGERPRINT.match(fp):
            raise t.fail(key, f"expected 16 lowercase hex digits (a fingerprint from results.json), got {fp!r}")
    if raw is not None and not prints:
        raise t.fail("fingerprint", "must list one or more fingerprints")
    if filters["scenario"] is None and not prints:
        raise t.fail("scenario", "required key is missing (a suppression names a scenario glob or fingerprints)")
    expires = t.get("expires", (dt.date, str))
    if isinstance(expires, str):
        try:
            expires = dt.date.fromisoformat(expires)
        except ValueError:
            raise t.fail("expires", f"{expires!r} is not a date (write expires = 2027-01-31)") from None
    return Suppression(index, reason.strip(), filters["scenario"], filters["method"], filters["checkpoint"],
                       tuple(prints), expires, ident.strip() if ident else None)


def load_config(path: Path, known_formats: list[str]) -> Config:
    path = Path(path)
    top = TomlTable(path, load_toml(path, ConfigError), "", ConfigError)
    top.reject_unknown(("run", "suppress"))
    base = path.resolve().parent
    run = RunDefaults()
    table = top.get("run", dict)
    if table is not None:
        run = _run_defaults(top.child(table, "run."), base, known_formats)
    suppressions = []
    entries = top.get("suppress", list) or []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise top.fail(f"suppress[{i}]", "expected a table ([[suppress]])")
        suppressions.append(_suppression(top.child(entry, f"suppress[{i}]."), i))
    ids = [s.id for s in suppressions if s.id]
    if dupes := sorted({i for i in ids if ids.count(i) > 1}):
        raise top.fail("suppress", f"ids repeat: {', '.join(dupes)}")
    return Config(path, run, tuple(suppressions))


def discover_config(explicit: Path | None, environ: dict | None = None, cwd: Path | None = None) -> Path | None:
    """Which config file applies: --config, then $REMANENCE_CONFIG, then ./remanence.toml, then none.
    A file named explicitly (flag or variable) that does not exist is an error."""
    environ = os.environ if environ is None else environ
    if explicit is not None:
        if not Path(explicit).is_file():
            raise ConfigError(explicit, "", "config file not found (given with --config)")
        return Path(explicit)
    if value := environ.get(CONFIG_ENV, "").strip():
        if not Path(value).is_file():
            raise ConfigError(value, "", f"config file not found (named by ${CONFIG_ENV})")
        return Path(value)
    local = (Path.cwd() if cwd is None else Path(cwd)) / CONFIG_NAME
    return local if local.is_file() else None


def resolve_config(explicit: Path | None, known_formats: list[str]) -> Config:
    path = discover_config(explicit)
    return Config() if path is None else load_config(path, known_formats)
