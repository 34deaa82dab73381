"""Ad-hoc scans: look for values the user gives in existing core files or in a live process.

`remanence scan` turns the forensic ritual (`gcore PID; strings core | grep ...`) into the harness's own
pipeline: the same snapshots (elfcore for a user's core, procmem/gcore for a pid), the same one-pass scan in
every encoding, the same attribution (regions, threads' registers) and verdicts, and one RunRecord per input in
an ordinary results document, so every reporter renders it.

Honesty: an arbitrary image has no canary. `absent` is only worth something when the same image is shown to
hold a value known to be in it (a positive control: --control-hex / --control / --control-file). A live process
has one of its own: the bytes of its command line (or environment) strings, which the kernel keeps on its
initial stack and /proc/PID/cmdline reads from there, read just before the snapshot. Without a control, a no-hit
`absent` is INCONCLUSIVE, with a reason saying how to get a PASS.

Secret values never reach a log, a message or a report: they are named by label and SHA-256 prefix, and hit
contexts are masked (all given values' material, controls included) unless show_secrets.
"""
from __future__ import annotations

import os
import re
import stat
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO, Callable

from .model import Expect, Gap, GapKind, Hit, Outcome, RegionKind, Secret, Snapshot
from .results import Results, RunRecord, utc_now
from .scan.context import hit_context, secret_material
from .scan.encodings import MIN_NEEDLE_LEN
from .scan.engine import ScanError, scan_snapshot
from .scenario import CheckpointSpec, MethodExpectation, Scenario, SecretSpec
from .snapshot import SnapshotError, dispose_snapshot, take_snapshot
from .snapshot.elfcore import CoreFormatError, snapshot_from_core
from .verdict import Judgement, Kind, Verdict, coverage, judge, mib

CORE_METHOD = "core-file"
CORE_CHECKPOINT = "image"
LIVE_CHECKPOINT = "live"
MAX_VALUE_LEN = 4096                 # every 16-byte window is a pattern: keep the pattern set compilable
AUTO_CONTROL_LABEL = "auto-control"
AUTO_CONTROL_MAX = 64
LABEL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@+-]{0,63}")
WHY = {
    Expect.ABSENT: "remanence scan --expect absent: the value must not be in this image",
    Expect.PRESENT: "remanence scan --expect present: the value must be in this image",
    Expect.OBSERVE: "remanence scan --expect observe: list where the value is",
}

Progress = Callable[[str], None]


class AdhocUsageError(Exception):
    """A bad value option (never quotes the value itself). Exit code 2."""


# --- the values to look for ------------------------------------------------------------------------------

@dataclass(frozen=True)
class ValueArg:
    """One --secret*/--control* option as given, before it is read. `raw` is hex, text or a path."""

    role: str                        # "secret" | "control"
    kind: str                        # "hex" | "text" | "file"
    raw: str = field(repr=False)
    label: str | None = None


@dataclass(frozen=True)
class Value:
    secret: Secret                   # label, bytes, textual
    origin: str                      # "hex", "text", "file /x/key.bin", "stdin": how it was given (never the value)


def _is_text(data: bytes) -> bool:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return text.isprintable()


def _read_value(arg: ValueArg, stdin: BinaryIO | None) -> tuple[bytes, bool, str]:
    """(bytes, textual, origin)."""
    option = f"--{arg.role}" + {"hex": "-hex", "text": "", "file": "-file"}[arg.kind]
    if arg.kind == "hex":
        digits = re.sub(r"[\s:]", "", arg.raw)
        digits = digits[2:] if digits[:2].lower() == "0x" else digits
        try:
            return bytes.fromhex(digits), False, "hex"
        except ValueError:
            # Never quote the argument: it is (most of) a secret.
            bad = "an odd number of digits" if re.fullmatch(r"[0-9A-Fa-f]*", digits) else "a character that is not a hex digit"
            raise AdhocUsageError(f"{option}: not a hex string ({bad}; {len(digits)} characters given)") from None
    if arg.kind == "text":
        return os.fsencode(arg.raw), True, "text"
    if arg.raw == "-":
        if stdin is None:
            raise AdhocUsageError(f"{option} -: standard input is not available")
        return stdin.read(), None, "stdin"
    path = Path(arg.raw)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise AdhocUsageError(f"{option} {path}: cannot read: {exc.strerror or exc}") from None
    return data, None, f"file {path}"


def load_values(args: list[ValueArg], stdin: BinaryIO | None, warn: Progress) -> tuple[list[Value], list[Value]]:
    """Read every value (a file's raw bytes; `-` is standard input, once), label them, check them.
    Returns (secrets, controls). AdhocUsageError names the option and label, never the value."""
    if sum(a.kind == "file" and a.raw == "-" for a in args) > 1:
        raise AdhocUsageError("only one --secret-file/--control-file can read standard input (-)")
    by_role: dict[str, list[Value]] = {"secret": [], "control": []}
    for role in ("secret", "control"):
        mine = [a for a in args if a.role == role]
        for n, arg in enumerate(mine, 1):
            label = arg.label or (role if n == 1 else f"{role}-{n}")
            if not LABEL_RE.fullmatch(label):
                raise AdhocUsageError(f"--label {label!r}: a label is 1-64 letters, digits or ._:@+- "
                                      "(starting with a letter or digit)")
            value, textual, origin = _read_value(arg, stdin)
            if textual is None:       # a file: text if it is printable UTF-8, so its UTF-16 forms are searched too
                textual = _is_text(value)
                if value.endswith(b"\n"):
                    warn(f"warning: {role} {label!r} ({origin}) ends with a newline byte, which is searched as part of "
                         "the value; write the file with printf '%s' (or echo -n) to leave it out")
            if len(value) < MIN_NEEDLE_LEN:
                raise AdhocUsageError(f"{role} {label!r} ({origin}) is {len(value)} byte(s); at least {MIN_NEEDLE_LEN} are "
                                      "needed (shorter values turn up in any memory by chance)")
            if len(value) > MAX_VALUE_LEN:
                raise AdhocUsageError(f"{role} {label!r} ({origin}) is {len(value)} bytes; at most {MAX_VALUE_LEN} are supported")
            by_role[role].append(Value(Secret(label, value, textual=textual), origin))
    every = by_role["secret"] + by_role["control"]
    labels = [v.secret.label for v in every]
    for label in labels:
        if labels.count(label) > 1 or label == AUTO_CONTROL_LABEL:
            raise AdhocUsageError(f"label {label!r} is used twice" if label != AUTO_CONTROL_LABEL
                                  else f"label {label!r} is reserved for a live process's automatic control")
    for i, a in enumerate(every):
        for b in every[i + 1:]:
            if a.secret.value == b.secret.value:
                raise AdhocUsageError(f"{a.secret.label!r} and {b.secret.label!r} are the same value")
    if not by_role["secret"]:
        raise AdhocUsageError("nothing to look for: give --secret-hex HEX, --secret TEXT or --secret-file PATH")
    return by_role["secret"], by_role["control"]


# --- the scan ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AdhocOptions:
    expect: Expect = Expect.ABSENT
    methods: tuple[str, ...] = ("procmem",)   # for --pid
    out_dir: Path = Path("reports")
    keep_snapshots: bool = False
    auto_control: bool = True                 # a live process's own command line / environment as a control


@dataclass(frozen=True)
class _Control:
    """A value known to be in the image, and how to describe it without its bytes."""

    secret: Secret
    description: str
    stack_only: bool = False         # the automatic control counts only where it lives: on a stack


def _secret_spec(values: list[Value]) -> SecretSpec:
    """The run's `secret` entry describes the first value; the run's notes list all of them."""
    first = values[0].secret
    return SecretSpec("password" if first.textual else "binary", len(first.value))


def _value_note(role: str, v: Value) -> str:
    s = v.secret
    form = "text" if s.textual else "binary"
    return f"{role} {s.label!r}: {len(s.value)} bytes ({form}, from {v.origin}), sha256 {s.fingerprint}"


class AdhocScan:
    def __init__(self, secrets: list[Value], controls: list[Value], options: AdhocOptions,
                 progress: Progress = lambda message: None, error: Progress = lambda message: None):
        self.secrets, self.controls, self.options = secrets, controls, options
        self.progress, self.error = progress, error
        # Mask every given value in hexdumps, not only the one hit: two secrets may lie side by side.
        self.material = [m for v in secrets + controls for m in secret_material(v.secret)]

    def run(self, cores: list[Path], pids: list[int]) -> Results:
        results = Results(runs=[])
        names = _core_names(cores)
        try:
            for path, name in zip(cores, names):
                record = self._record(name, "core", path.name, path, f"ad-hoc scan of core file {path}", (CORE_METHOD,),
                                      CORE_CHECKPOINT)
                results.runs.append(record)
                self._guarded(self._scan_core, path, record, (CORE_METHOD,))
            for pid in pids:
                comm = _read_proc(pid, "comm").decode(errors="replace").strip()
                record = self._record(f"pid:{pid}", "pid", comm, Path(f"/proc/{pid}"),
                                      f"ad-hoc scan of live process {pid}" + (f" ({comm})" if comm else ""),
                                      self.options.methods, LIVE_CHECKPOINT)
                record.pid = pid
                results.runs.append(record)
                self._guarded(self._scan_pid, pid, record, self.options.methods)
        except KeyboardInterrupt:
            results.interrupted = True
            self.progress("interrupted: writing what we have")
        results.finished_at = utc_now()
        return results

    def _guarded(self, scan, target, record: RunRecord, methods: tuple[str, ...]) -> None:
        """One input's scan; a bug in it is that input's ERROR, and the other inputs are still scanned."""
        try:
            scan(target, record)
        except (KeyboardInterrupt, MemoryError):
            raise
        except Exception as exc:     # noqa: BLE001 - reported, never swallowed
            judged = {v.method for v in record.verdicts}
            self._fail_input(record, tuple(m for m in methods if m not in judged),
                             f"{record.scenario.name}: internal error (please report it): {type(exc).__name__}: {exc}")

    # --- inputs ---------------------------------------------------------------------------------------

    def _record(self, name: str, target: str, entry: str, source: Path, description: str, methods: tuple[str, ...],
                checkpoint: str) -> RunRecord:
        expectation = MethodExpectation(self.options.expect, WHY[self.options.expect])
        scenario = Scenario(name=name, description=description, target=target, entry=entry, methods=methods, repeat=1,
                            timeout_s=0.0, secret=_secret_spec(self.secrets),
                            checkpoints=(CheckpointSpec(checkpoint, expectation, methods),), source=source)
        record = RunRecord(scenario, 1, scenario.secret, self.secrets[0].secret.fingerprint,
                           self.controls[0].secret.fingerprint if self.controls else None)
        record.notes = [_value_note("secret", v) for v in self.secrets] + [_value_note("control", v) for v in self.controls]
        return record

    def _fail_input(self, record: RunRecord, methods: tuple[str, ...], message: str) -> None:
        """One line on stderr; the run's error; an ERROR verdict per method and value, so every report shows it."""
        message = "; ".join(line.strip() for line in message.splitlines() if line.strip())   # gdb's output has lines
        self.error(message)
        record.error = message if record.error is None else f"{record.error}; {message}"
        checkpoint = record.scenario.checkpoints[0]
        for method in methods:
            for v in self.secrets:
                record.verdicts.append(self._verdict(record, checkpoint.name, method, v, Outcome.ERROR, message))

    def _verdict(self, record: RunRecord, checkpoint: str, method: str, value: Value, outcome: Outcome, reason: str) -> Verdict:
        expect = self.options.expect
        return Verdict(record.scenario.name, record.repetition, checkpoint, method, expect, WHY[expect], outcome, reason,
                       subject=value.secret.label)

    def _scan_core(self, path: Path, record: RunRecord) -> None:
        started = time.monotonic()
        try:
            problem = _not_a_readable_file(path)
            if problem:
                self._fail_input(record, (CORE_METHOD,), f"{path}: {problem}")
                return
            self.progress(f"{record.scenario.name}: reading {path}")
            try:
                snapshot = snapshot_from_core(path, CORE_METHOD)
            except CoreFormatError as exc:
                self._fail_input(record, (CORE_METHOD,), str(exc))
                return
            except OSError as exc:
                self._fail_input(record, (CORE_METHOD,), f"{path}: cannot read: {exc.strerror or exc}")
                return
            snapshot.duration_s = time.monotonic() - started
            snapshot.notes.append(f"core file {path.resolve()}, {path.stat().st_size} bytes")
            self._judge_snapshot(record, CORE_CHECKPOINT, snapshot, [])
        finally:
            record.duration_s = time.monotonic() - started

    def _scan_pid(self, pid: int, record: RunRecord) -> None:
        started = time.monotonic()
        try:
            if not Path(f"/proc/{pid}").is_dir():
                self._fail_input(record, self.options.methods, f"pid {pid}: no such process")
                return
            for method in self.options.methods:
                control = self._auto_control(pid) if self.options.auto_control else None
                self.progress(f"{record.scenario.name}: {method} snapshot")
                try:
                    snapshot = take_snapshot(method, pid)   # in memory: it holds the process's secrets
                except SnapshotError as exc:
                    self._fail_input(record, (method,), f"pid {pid}: {method} failed: {exc}")
                    continue
                try:
                    self._judge_snapshot(record, LIVE_CHECKPOINT, snapshot, [control] if control else [])
                finally:
                    self._dispose(snapshot, record)
        finally:
            record.duration_s = time.monotonic() - started

    def _auto_control(self, pid: int) -> _Control | None:
        """The start of the process's command-line strings, else of its environment strings: the kernel put them on
        the initial stack and /proc reads them from there, so any snapshot that holds the stack holds them."""
        for name, what in (("cmdline", "command line"), ("environ", "environment")):
            data = _read_proc(pid, name)[:AUTO_CONTROL_MAX]
            if len(data) >= MIN_NEEDLE_LEN and data.count(0) < len(data) // 2:
                return _Control(Secret(AUTO_CONTROL_LABEL, data), f"the process's own {what} (the first {len(data)} "
                                f"bytes of /proc/{pid}/{name}, read just before the snapshot)", stack_only=True)
        return None

    def _dispose(self, snapshot: Snapshot, record: RunRecord) -> None:
        options = self.options
        keep_in = options.out_dir / "snapshots" / record.scenario.name.replace(":", "-") if options.keep_snapshots else None
        dispose_snapshot(snapshot, keep_in, LIVE_CHECKPOINT)

    # --- scanning and judging -------------------------------------------------------------------------

    def _judge_snapshot(self, record: RunRecord, checkpoint: str, snapshot: Snapshot, auto: list[_Control]) -> None:
        controls = [_Control(v.secret, f"control {v.secret.label!r} (sha256 {v.secret.fingerprint})")
                    for v in self.controls] + auto
        method = snapshot.method
        try:
            scan = scan_snapshot(snapshot, [v.secret for v in self.secrets] + [c.secret for c in controls])
        except (ScanError, EOFError, OSError) as exc:
            self._fail_input(record, (method,), f"{record.scenario.name}: {method}: scan failed: {exc}")
            return
        places = [(c, _where_seen(c, scan.hits)) for c in controls]
        if auto:
            record.notes += [f"{method}: automatic control {c.description}: " + (f"seen in {where}" if where else "NOT seen")
                             for c, where in places[len(self.controls):]]
        control_ok = [(c, where) for c, where in places if where]
        in_notes_only = [c for c, where in places if not where and _where_seen(c, scan.hits, in_memory=False)]
        by_label: dict[str, list[Hit]] = {}
        for h in scan.hits:
            by_label.setdefault(h.secret, []).append(h)
        total = 0
        for v in self.secrets:
            hits = by_label.get(v.secret.label, [])
            total += len(hits)
            outcome, reason, findings, kind = judge_adhoc(self.options.expect, snapshot, hits, controls, control_ok, in_notes_only)
            verdict = self._verdict(record, checkpoint, method, v, outcome, reason)
            verdict.kind = kind
            verdict.canary_seen = bool(control_ok) if controls else None
            verdict.findings = [replace(f, context=hit_context(snapshot, f.hit, self.material)) for f in findings]
            verdict.snapshot, verdict.scan_bytes, verdict.scan_duration_s = snapshot, scan.bytes_scanned, scan.duration_s
            record.verdicts.append(verdict)
        rate = scan.bytes_scanned / scan.duration_s / 1e9 if scan.duration_s else 0.0
        self.progress(f"{record.scenario.name}: {method}: {mib(scan.bytes_scanned)} scanned in {scan.duration_s:.2f} s "
                      f"({rate:.2f} GB/s, {scan.patterns} patterns), {total} hit(s)")


def _where_seen(control: _Control, hits: list[Hit], in_memory: bool = True) -> str | None:
    """Region names where the control's whole value was found: in memory (the automatic control: on a stack only),
    or, with in_memory=False, in the core's notes. Only a copy in memory proves the image holds memory: a note
    (NT_FILE's program path, registers) is there even when every memory segment is lost."""
    places = []
    for h in hits:
        in_a_note = h.address is None                    # notes have no address (scan.engine.make_hit)
        if (h.secret == control.secret.label and h.full and in_a_note != in_memory
                and (not in_memory or not control.stack_only or h.region.kind == RegionKind.STACK)):
            where = h.region.name or h.region.kind.value
            if where not in places:
                places.append(where)
    return ", ".join(places[:3]) + (f" and {len(places) - 3} more" if len(places) > 3 else "") if places else None


def _excluded(gaps: list[Gap]) -> str:
    """What the method left out by its own policy (gcore: MADV_DONTDUMP, coredump_filter): not searched."""
    by_reason: dict[str, list[Gap]] = {}
    for g in gaps:
        if g.kind == GapKind.EXCLUDED:
            by_reason.setdefault(g.reason, []).append(g)
    parts = [f"{mib(sum(g.size for g in gs))} in {len(gs)} range(s) ({reason})" for reason, gs in by_reason.items()]
    return f"; left out by the method, so not searched: {', '.join(parts)}" if parts else ""


NOTES_ONLY = "the control was seen only in the core's notes, not in memory: the memory capture is not proven"
NO_CONTROL = ("no control value was given, so absence proves nothing about this image: give --control-hex HEX, "
              "--control TEXT or --control-file PATH with a value known to be in it (for a live --pid, its own "
              "command line serves, unless --no-auto-control)")


def judge_adhoc(expect: Expect, snapshot: Snapshot, hits: list[Hit], controls: list[_Control],
                seen: list[tuple[_Control, str]], in_notes_only: list[_Control] = ()) -> Judgement:
    """verdict.judge, with the positive control of an ad-hoc scan: a value known to be in the image, seen in its
    memory. `seen`: the controls found in memory, each with where; `in_notes_only`: those found only in notes."""
    covered = coverage(snapshot)
    control_note = f"control seen: {seen[0][0].description} in {seen[0][1]}" if seen else ""
    expectation = MethodExpectation(expect, WHY[expect])

    def by_judge() -> Judgement:
        return judge(expectation=expectation, snapshot=snapshot, secret_hits=hits, canary_seen=True,
                     intended_address=None, control_established=True, control_note=control_note, intended_flags={})

    if hits:                                  # a copy is a copy, control or not
        return by_judge()
    blind = bool(controls) and not seen
    unseen = ", ".join(c.description for c in controls)
    if blind and in_notes_only:
        return Judgement(Outcome.INCONCLUSIVE, f"not found in {covered}, but {NOTES_ONLY} "
                         f"({', '.join(c.description for c in in_notes_only)}): absence proves nothing", [], Kind.NO_CONTROL)
    if blind:
        return Judgement(Outcome.INCONCLUSIVE, f"not found in {covered}, but the control value was not seen either ({unseen}): "
                         "the control is not in this image after all, or the image lacks the memory that held it: "
                         "absence proves nothing", [], Kind.NO_CONTROL)
    if expect == Expect.OBSERVE:
        return Judgement(Outcome.PASS, f"observed: not found in {covered}" + (f"; {control_note}" if seen else
                                                                              "; no control value given"), [], Kind.OBSERVED)
    if expect == Expect.PRESENT:
        return by_judge()                     # FAIL: not found (an image without the value fails `present`)
    if not controls:
        return Judgement(Outcome.INCONCLUSIVE, f"not found in {covered}, but {NO_CONTROL}", [], Kind.NO_CONTROL)
    judged = by_judge()                       # INCONCLUSIVE when unreadable memory could hide it
    if judged.outcome == Outcome.PASS:
        return judged._replace(reason=f"absent from {covered}; {control_note}{_excluded(snapshot.gaps)}")
    return judged


# --- helpers ----------------------------------------------------------------------------------------------

def _read_proc(pid: int, name: str) -> bytes:
    try:
        with open(f"/proc/{pid}/{name}", "rb") as f:
            return f.read(1 << 16)
    except OSError:
        return b""


def _not_a_readable_file(path: Path) -> str | None:
    """Why `path` cannot be a core, before opening it (a FIFO would block); None if it is a regular file."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "no such file"
    except OSError as exc:
        return f"cannot read: {exc.strerror or exc}"
    if stat.S_ISDIR(mode):
        return "is a directory, not a core file"
    if not stat.S_ISREG(mode):
        return "not a regular file"
    if not os.access(path, os.R_OK):
        return "cannot read: permission denied"
    return None


def _core_names(cores: list[Path]) -> list[str]:
    """Each core's scenario name: its file name, or the path as given when two share a name; unique."""
    names = [p.name for p in cores]
    names = [str(p) if names.count(n) > 1 else n for p, n in zip(cores, names)]
    unique: list[str] = []
    for n in names:
        candidate, k = n, 2
        while candidate in unique:
            candidate, k = f"{n} ({k})", k + 1
        unique.append(candidate)
    return unique


def check_pid(pid: int) -> None:
    """Refuse what a scan must never do: stop the harness itself."""
    if pid == os.getpid():
        raise AdhocUsageError(f"--pid {pid} is remanence itself")
