"""Scenario files: declarative TOML, validated strictly; every error names the file and the key."""
from __future__ import annotations

import re
import signal
from dataclasses import dataclass, field, replace
from pathlib import Path

from .model import Expect
from .snapshot import methods as snapshot_methods
from .snapshot.methods import Timing
from .tomltable import TomlTable, load_toml

LANGUAGES = ("c", "go", "node", "python")
# A `command` target is the user's own, unmodified program: no protocol, the secret is delivered the way a
# user would give it, and checkpoints are triggers (output, delay, idle) instead of announcements.
COMMAND_TARGET = "command"
# A `program` target is the user's own test program built on a remanence SDK: it speaks the protocol of
# targets/PROTOCOL.md like the built-in targets, and its [program] table says how to build and start it.
PROGRAM_TARGET = "program"
TARGET_KINDS = LANGUAGES + (PROGRAM_TARGET, COMMAND_TARGET)
# In a program's argv: the interpreter running remanence (its environment can `import remanence.sdk`).
PYTHON_PLACEHOLDER = "{python}"
DELIVERIES = ("stdin", "prompt", "file")
TRIGGER_KINDS = ("output", "delay", "idle")
SECRET_FILE_PLACEHOLDER = "{secret_file}"
DERIVED_LABEL = re.compile(r"[a-z0-9_]{1,64}")
# Scenario and checkpoint names become file and folder names (kept snapshots, probe files): no separators, no "..".
NAME = re.compile(r"[A-Za-z0-9._-]{1,128}")
SNAPSHOT_METHODS = snapshot_methods.names()
# The methods that leave the target running; kernel-core kills it, exit happens only at its end.
LIVE_METHODS = snapshot_methods.live_names()
EXIT_CHECKPOINT = "exit"
SECRET_FORMS = ("binary", "password")
MAX_SECONDS = 3600          # the longest timeout or trigger wait
MAX_REPEAT = 1000
MAX_COLLECTIONS = 100       # a repeating checkpoint's full collections
MAX_TIMED_STEPS = 1000      # a repeating checkpoint's snapshots every S seconds
SECRET_LENGTHS = (8, 4096)
# Where hits must lie for a `present` expectation to hold.
WHERE_CHOICES = ("any", "intended", "elsewhere", "heap", "stack", "anonymous", "registers")
REGION_FLAG_KEYS = ("locked", "dont_dump")
# What a snapshot may be expected to show; `crash` is a checkpoint's own expectation (its core takes one of these).
SNAPSHOT_EXPECTS = tuple(e.value for e in Expect if e is not Expect.CRASH)
CRASH_METHOD = "kernel-core"     # the one method of a crash checkpoint: the core the crash itself leaves


def signal_number(name: str) -> int | None:
    """The number of the signal named `name` ("SIGSEGV"), or None."""
    member = signal.Signals.__members__.get(name) if name.startswith("SIG") else None
    return None if member is None else int(member)


def name_problem(name: str) -> str | None:
    """Why `name` cannot name a scenario or a checkpoint, or None."""
    if not NAME.fullmatch(name) or name in (".", ".."):
        return f"{name!r} is not a name: use 1-128 of A-Z a-z 0-9 . _ - (not . or ..)"
    return None


def seconds_problem(seconds: float, zero_ok: bool = False) -> str | None:
    """Why `seconds` is not a timeout or trigger wait (not above 0, or 0 when `zero_ok`; above MAX_SECONDS; nan
    or inf: every comparison with nan fails), or None."""
    if (0 <= seconds if zero_ok else 0 < seconds) and seconds <= MAX_SECONDS:
        return None
    return f"{seconds} is out of range {'[0' if zero_ok else '(0'}, {MAX_SECONDS}] seconds"


class ScenarioError(Exception):
    """A scenario file is broken. The message names the file and the key."""

    def __init__(self, path: Path | str, key: str, message: str):
        self.path, self.key = Path(path), key
        where = f"{path}: {key}: " if key else f"{path}: "
        super().__init__(where + message)


@dataclass(frozen=True)
class MethodExpectation:
    expect: Expect
    why: str
    where: str = "any"


@dataclass(frozen=True)
class Repeat:
    """A checkpoint taken again and again: after each of `collections` full collections of the target's runtime
    (the target held at the checkpoint), or every `every` seconds until `until` (the target running free between).
    The first step is the checkpoint itself; the later ones take `methods` and judge by `expectation` (for the secret
    and every derived value) when the repeat table gives them, else the checkpoint's."""

    collections: int = 0
    every: float = 0.0
    until: float = 0.0
    methods: tuple[str, ...] = ()
    expectation: MethodExpectation | None = None

    @property
    def steps(self) -> int:
        """How many times the checkpoint's snapshots are taken, the first one included."""
        return 1 + (self.collections or int(self.until / self.every + 1e-9))

    def label(self, index: int) -> str:
        """How reports name step `index` (0 is the checkpoint itself)."""
        if self.collections:
            return "at the checkpoint" if index == 0 else f"after {index} collection{'s' if index > 1 else ''}"
        return f"at {index * self.every:g} s"


@dataclass(frozen=True)
class CheckpointSpec:
    name: str
    default: MethodExpectation
    methods: tuple[str, ...] = ()          # the snapshot methods taken at this checkpoint, in order
    per_method: dict[str, MethodExpectation] = field(default_factory=dict)
    # Flags the region holding the secret must have (e.g. {"locked": False}), checked where a snapshot knows them.
    intended_region: dict[str, bool] = field(default_factory=dict)
    # `key=value` facts the target must have noted by this checkpoint (e.g. "do_panicked=false").
    require_notes: tuple[str, ...] = ()
    # Expectations for values the target derived from the secret and sent (`derived <label> <n>`), by label.
    derived: dict[str, MethodExpectation] = field(default_factory=dict)
    # command targets: when to take this checkpoint's snapshots (None for the exit checkpoint)
    trigger: Trigger | None = None
    repeat: Repeat | None = None           # None: one step
    # expect = "crash": the signals by which the target may die (names, "SIGSEGV"); its core's expectation is
    # per_method[CRASH_METHOD].
    signals: tuple[str, ...] = ()

    @property
    def expects_crash(self) -> bool:
        return self.default.expect is Expect.CRASH

    @property
    def signal_numbers(self) -> tuple[int, ...]:
        return tuple(signal_number(name) for name in self.signals)

    @property
    def is_exit(self) -> bool:
        return self.name == EXIT_CHECKPOINT

    def step(self, index: int) -> CheckpointSpec:
        """This repeating checkpoint as its step `index` (0: the first) takes it. The first takes its live methods,
        the later ones the repeat's methods and expectation; a method that ends the target comes at the last step
        only, judged as at the checkpoint."""
        repeat = self.repeat
        ending = tuple(m for m in self.methods if snapshot_methods.method(m).timing is Timing.ENDS_TARGET)
        last = ending if index == repeat.steps - 1 else ()
        if index == 0:
            return replace(self, methods=tuple(m for m in self.methods if m not in ending) + last)
        e = repeat.expectation
        if e is None:
            return replace(self, methods=repeat.methods + last)
        return replace(self, methods=repeat.methods + last, default=e,
                       per_method={m: self.for_method(m) for m in last},
                       derived={label: e if e.where not in ("intended", "elsewhere") else replace(e, where="any")
                                for label in self.derived})

    def for_method(self, method: str) -> MethodExpectation:
        return self.per_method.get(method, self.default)


@dataclass(frozen=True)
class SecretSpec:
    form: str = "binary"
    length: int = 32


@dataclass(frozen=True)
class Trigger:
    """When a command target's checkpoint happens, counted from the previous checkpoint (or the delivery)."""

    kind: str            # output | delay | idle
    pattern: str = ""    # output: a regular expression the program's output (stdout+stderr) must match
    seconds: float = 0.0  # delay: wait this long; idle: no CPU time and no output for this long

    def describe(self) -> str:
        return f"output matches /{self.pattern}/" if self.kind == "output" else \
            f"after {self.seconds:g} s" if self.kind == "delay" else f"idle for {self.seconds:g} s"


@dataclass(frozen=True)
class CommandSpec:
    """An unmodified program and how it gets the secret."""

    argv: tuple[str, ...]
    cwd: Path
    delivery: str                        # stdin | prompt | file
    prompt: str = ""                     # prompt delivery: regex of the prompt to answer on the pseudo-terminal
    newline: bool = True                 # end the typed/piped secret with a newline
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ProgramSpec:
    """A user's test program speaking the protocol through an SDK: how it is built and started."""

    argv: tuple[str, ...]                # run as is: no scenario name appended
    cwd: Path
    build: tuple[str, ...] = ()          # run once in cwd before the first run that needs it
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    target: str
    entry: str
    methods: tuple[str, ...]
    repeat: int
    timeout_s: float
    secret: SecretSpec
    checkpoints: tuple[CheckpointSpec, ...]
    source: Path
    command: CommandSpec | None = None   # only for target = "command"
    program: ProgramSpec | None = None   # only for target = "program"
    # Snapshot every process of the target's tree (its children, daemons it started), not only the target.
    follow: bool = False
    # CPU features (flags of /proc/cpuinfo) the code under test needs: without one the scenario is SKIPped, since
    # the library would refuse or take another code path (libsodium's aes256gcm exists only with AES-NI: "aes")
    requires_cpu: tuple[str, ...] = ()

    def checkpoint(self, name: str) -> CheckpointSpec | None:
        return next((c for c in self.checkpoints if c.name == name), None)


def _expectation(r: TomlTable, inherit: MethodExpectation | None, crash_allowed: bool = False) -> MethodExpectation:
    r.reject_unknown(("expect", "why", "where"))
    required = inherit is None
    expect = r.choice("expect", SNAPSHOT_EXPECTS + ((Expect.CRASH.value,) if crash_allowed else ()),
                      inherit and inherit.expect.value, required)
    changed = inherit is None or expect != inherit.expect.value
    # A changed expectation must say why: the scenario records what really happens and the reason.
    why = r.get("why", str, None if changed else inherit.why, required=changed)
    where = r.choice("where", WHERE_CHOICES, "any" if changed else inherit.where)
    return MethodExpectation(Expect(expect), why.strip(), where)


def _timing_problem(method: str, name: str, last: bool) -> str | None:
    """Why `method` cannot be taken at checkpoint `name` (the last one the target announces if `last`), if it cannot."""
    timing = snapshot_methods.method(method).timing
    if (timing is Timing.AT_EXIT) != (name == EXIT_CHECKPOINT):
        return f"the {method} method belongs to the checkpoint named {EXIT_CHECKPOINT!r} and only there" \
            if timing is Timing.AT_EXIT else f"the {EXIT_CHECKPOINT!r} checkpoint takes only the methods taken at exit"
    if timing is Timing.ENDS_TARGET and not last:
        return f"{method} ends the target, so it is only allowed at the last checkpoint"
    return None


def _default_methods(name: str, methods: tuple[str, ...], last: bool) -> tuple[str, ...]:
    return tuple(m for m in methods if not _timing_problem(m, name, last))


def _trigger(r: TomlTable, name: str) -> Trigger | None:
    if name == EXIT_CHECKPOINT:
        if "trigger" in r.table:
            raise r.fail("trigger", f"the {EXIT_CHECKPOINT!r} checkpoint happens when the program exits: it takes no trigger")
        return None
    t = r.sub("trigger", required=True)
    t.reject_unknown(TRIGGER_KINDS)
    if len(t.table) != 1:
        raise r.fail("trigger", f"give exactly one of {', '.join(TRIGGER_KINDS)} (e.g. {{ idle = 1.0 }})")
    kind = next(iter(t.table))
    if kind == "output":
        pattern = t.get("output", str)
        try:
            re.compile(pattern)
        except re.error as e:
            raise t.fail("output", f"not a valid regular expression: {e}") from None
        if not pattern:
            raise t.fail("output", "must not be empty")
        return Trigger("output", pattern=pattern)
    seconds = t.get(kind, (int, float))
    if problem := seconds_problem(seconds, zero_ok=True):
        raise t.fail(kind, problem)
    return Trigger(kind, seconds=float(seconds))


def _checkpoint(r: TomlTable, methods: tuple[str, ...], last: bool, command: bool) -> CheckpointSpec:
    r.reject_unknown(("name", "expect", "why", "where", "methods", "per_method", "intended_region", "require_notes",
                      "derived", "repeat", "signals", "core") + (("trigger",) if command else ()))
    name = r.get("name", str, required=True)
    if problem := name_problem(name):
        raise r.fail("name", problem)
    at = tuple(r.get("methods", list, list(_default_methods(name, methods, last))))
    for i, method in enumerate(at):
        if method not in methods:
            raise r.fail(f"methods[{i}]", f"{method!r} is not in this scenario's methods ({', '.join(methods)})")
        if problem := _timing_problem(method, name, last):
            raise r.fail(f"methods[{i}]", problem)
    default = _expectation(r.child({k: v for k, v in r.table.items() if k in ("expect", "why", "where")}, r.prefix), None,
                           crash_allowed=not command)
    crash = default.expect is Expect.CRASH
    if crash:
        at = _crash_methods(r, methods, last)
    elif problem := next((key for key in ("signals", "core") if key in r.table), None):
        raise r.fail(problem, 'only with expect = "crash"')
    if not at:
        raise r.fail("methods", "no snapshot method applies at this checkpoint")
    per_method: dict[str, MethodExpectation] = {CRASH_METHOD: _expectation(r.sub("core", required=True), None)} \
        if crash else {}
    overrides = r.sub("per_method")
    if overrides and crash:
        raise r.fail("per_method", "a crash checkpoint's one snapshot is its core: its expectation is [checkpoints.core]")
    if overrides:
        for method in overrides.table:
            if method not in SNAPSHOT_METHODS:
                raise overrides.fail(method, f"unknown method (known: {', '.join(SNAPSHOT_METHODS)})")
            if method not in at:
                raise overrides.fail(method, f"method is not taken at this checkpoint ({', '.join(at)})")
            per_method[method] = _expectation(overrides.sub(method, required=True), default)
    flags: dict[str, bool] = {}
    region = r.sub("intended_region")
    if region:
        region.reject_unknown(REGION_FLAG_KEYS)
        flags = {k: region.get(k, bool) for k in region.table}
    notes = r.get("require_notes", list, [])
    for i, note in enumerate(notes):
        if not isinstance(note, str) or "=" not in note:
            raise r.fail(f"require_notes[{i}]", f"expected a 'key=value' string, got {note!r}")
    derived: dict[str, MethodExpectation] = {}
    if values := r.sub("derived"):
        for label in values.table:
            if not DERIVED_LABEL.fullmatch(label):
                raise values.fail(label, "a derived value's label is 1-64 characters of a-z, 0-9 and _")
            expectation = _expectation(values.sub(label, required=True), None)
            if expectation.where in ("intended", "elsewhere"):
                raise values.fail(f"{label}.where", "a derived value has no intended region: use any, heap, stack, anonymous or registers")
            derived[label] = expectation
    trigger = _trigger(r, name) if command else None
    return CheckpointSpec(name, default, tuple(sorted(at, key=SNAPSHOT_METHODS.index)), per_method, flags, tuple(notes),
                          derived, trigger, _repeat(r, name, at, command, crash), _signals(r) if crash else ())


def _repeat(r: TomlTable, name: str, methods: list[str], command: bool, crash: bool) -> Repeat | None:
    t = r.sub("repeat")
    if t is None:
        return None
    if command or name == EXIT_CHECKPOINT or crash:
        raise r.fail("repeat", "only a checkpoint a protocol target announces can repeat" if command else
                     f"the {EXIT_CHECKPOINT!r} checkpoint happens once: it cannot repeat" if not crash else
                     "a crash happens once: a crash checkpoint cannot repeat")
    t.reject_unknown(("collections", "every", "until", "methods", "expect", "why", "where"))
    live = [m for m in methods if snapshot_methods.method(m).timing is Timing.LIVE]
    later = tuple(t.get("methods", list, live))
    for i, method in enumerate(later):
        if method not in live:
            raise t.fail(f"methods[{i}]", f"{method!r} is not a live method taken at this checkpoint ({', '.join(live)}): "
                         "a method that ends the target comes at the last step only")
    if not later:
        raise t.fail("methods", "name one or more of this checkpoint's methods")
    later = tuple(sorted(later, key=SNAPSHOT_METHODS.index))
    expectation = _expectation(t.child({k: v for k, v in t.table.items() if k in ("expect", "why", "where")}, t.prefix),
                               None) if "expect" in t.table else None
    if expectation is None and ("why" in t.table or "where" in t.table):
        raise t.fail("expect", "required with why or where: the later steps' expectation")
    if "collections" in t.table:
        if "every" in t.table or "until" in t.table:
            raise t.fail("collections", "give either collections = N or every = S with until = T, not both")
        collections = t.get("collections", int)
        if not 1 <= collections <= MAX_COLLECTIONS:
            raise t.fail("collections", f"{collections} is out of range 1..{MAX_COLLECTIONS}")
        return Repeat(collections=collections, methods=later, expectation=expectation)
    if "every" not in t.table or "until" not in t.table:
        raise r.fail("repeat", "give collections = N (1..100), or every = S and until = T seconds")
    every, until = t.get("every", (int, float)), t.get("until", (int, float))
    for key, seconds in (("every", every), ("until", until)):
        if problem := seconds_problem(seconds):
            raise t.fail(key, problem)
    if until < every:
        raise t.fail("until", f"{until} is shorter than every = {every}: not even one more step")
    if until / every > MAX_TIMED_STEPS:
        raise t.fail("every", f"every = {every} until = {until} makes more than {MAX_TIMED_STEPS} steps")
    return Repeat(every=float(every), until=float(until), methods=later, expectation=expectation)


def _crash_methods(r: TomlTable, methods: tuple[str, ...], last: bool) -> tuple[str, ...]:
    """A crash checkpoint's methods: exactly the core the crash leaves, at the last checkpoint the target announces."""
    if not last:
        raise r.fail("expect", "a crash ends the target: only the last checkpoint the target announces may expect one")
    if CRASH_METHOD not in methods:
        raise r.fail("expect", f"a crash checkpoint needs {CRASH_METHOD!r} in the scenario's methods: the core the "
                               "crash leaves is its snapshot")
    if r.table.get("methods", [CRASH_METHOD]) != [CRASH_METHOD]:
        raise r.fail("methods", f"a crash checkpoint takes exactly [\"{CRASH_METHOD}\"]: the core the crash leaves")
    return (CRASH_METHOD,)


def _signals(r: TomlTable) -> tuple[str, ...]:
    names = r.string_list("signals") if "signals" in r.table else []
    if not names:
        raise r.fail("signals", 'required with expect = "crash": the signals the crash may kill by, e.g. ["SIGSEGV", "SIGBUS"]')
    for i, name in enumerate(names):
        if signal_number(name) is None:
            raise r.fail(f"signals[{i}]", f"{name!r} is not a signal name (e.g. SIGSEGV, SIGBUS, SIGABRT)")
    return tuple(dict.fromkeys(names))


def _command(r: TomlTable, path: Path, secret: SecretSpec) -> CommandSpec:
    c = r.sub("command", required=True)
    c.reject_unknown(("argv", "cwd", "delivery", "prompt", "newline", "env"))
    argv = c.string_list("argv")
    if not argv or not argv[0]:
        raise c.fail("argv", "required: the program and its arguments, e.g. [\"./askpass\", \"--user\", \"me\"]")
    delivery = c.choice("delivery", DELIVERIES, "stdin")
    prompt = c.get("prompt", str, "", required=delivery == "prompt")
    if delivery != "prompt" and "prompt" in c.table:
        raise c.fail("prompt", f"only for delivery = \"prompt\" (this one is {delivery!r})")
    if prompt:
        try:
            re.compile(prompt)
        except re.error as e:
            raise c.fail("prompt", f"not a valid regular expression: {e}") from None
    env = _env(c)
    uses_file = any(SECRET_FILE_PLACEHOLDER in a for a in [*argv, *env.values()])
    if delivery == "file" and not uses_file:
        raise c.fail("argv", f"delivery = \"file\" needs {SECRET_FILE_PLACEHOLDER} in argv or env: that is where the program finds the file")
    if delivery != "file" and uses_file:
        raise c.fail("argv", f"{SECRET_FILE_PLACEHOLDER} is only for delivery = \"file\"")
    if delivery == "prompt" and secret.form != "password":
        raise r.fail("secret.form", "a secret typed at a prompt must be a password (a terminal would interpret binary bytes)")
    return CommandSpec(tuple(argv), _cwd(c, path), delivery, prompt, c.get("newline", bool, True), env)


def _env(t: TomlTable) -> dict[str, str]:
    env = t.get("env", dict, {})
    for k, v in env.items():
        if not isinstance(v, str) or "\0" in v or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k):
            raise t.fail(f"env.{k}", "expected NAME = \"string value\" (no NUL byte)")
    return dict(env)


def _cwd(t: TomlTable, path: Path) -> Path:
    """The folder a user's program runs in: relative to the scenario file, which is where it is kept."""
    cwd = (path.parent / t.get("cwd", str, ".")).resolve()
    if not cwd.is_dir():
        raise t.fail("cwd", f"{str(cwd)!r} is not a folder")
    return cwd


def _program(r: TomlTable, path: Path) -> ProgramSpec:
    p = r.sub("program", required=True)
    p.reject_unknown(("argv", "cwd", "build", "env"))
    argv = p.string_list("argv")
    if not argv or not argv[0]:
        raise p.fail("argv", "required: your test program and its arguments, e.g. [\"build/wipe_test\", \"leaky\"]")
    build = p.string_list("build") if "build" in p.table else []
    if "build" in p.table and (not build or not build[0]):
        raise p.fail("build", "a command and its arguments, e.g. [\"make\", \"-s\"]")
    return ProgramSpec(tuple(argv), _cwd(p, path), tuple(build), _env(p))


def load_scenario(path: Path) -> Scenario:
    path = Path(path)
    r = TomlTable(path, load_toml(path, ScenarioError), "", ScenarioError)
    r.reject_unknown(("name", "description", "target", "entry", "methods", "repeat", "timeout", "secret", "checkpoints",
                      "command", "program", "follow", "requires_cpu"))
    name = r.get("name", str, required=True)
    if problem := name_problem(name):
        raise r.fail("name", problem)
    target = r.choice("target", TARGET_KINDS, required=True)
    is_command = target == COMMAND_TARGET
    for kind in (COMMAND_TARGET, PROGRAM_TARGET):
        if target != kind and kind in r.table:
            raise r.fail(kind, f"only for target = \"{kind}\"")
        if target == kind and "entry" in r.table:
            raise r.fail("entry", f"a {kind} target has no entry: [{kind}] argv says what runs")
    methods = r.get("methods", list, list(snapshot_methods.default_names()))
    for i, method in enumerate(methods):
        if method not in SNAPSHOT_METHODS:
            raise r.fail(f"methods[{i}]", f"unknown method {method!r} (known: {', '.join(SNAPSHOT_METHODS)})")
    if not methods or len(set(methods)) != len(methods):
        raise r.fail("methods", "must list one or more distinct methods")
    repeat = r.get("repeat", int, 1)
    if not 1 <= repeat <= MAX_REPEAT:
        raise r.fail("repeat", f"{repeat} is out of range 1..{MAX_REPEAT}")
    timeout = r.get("timeout", (int, float), 60)
    if problem := seconds_problem(timeout):
        raise r.fail("timeout", problem)
    # A user's program is mostly given passwords; the built-in targets take raw key bytes.
    secret = SecretSpec("password" if is_command else "binary")
    if s := r.sub("secret"):
        s.reject_unknown(("form", "length"))
        secret = SecretSpec(s.choice("form", SECRET_FORMS, secret.form), s.get("length", int, 32))
        if not SECRET_LENGTHS[0] <= secret.length <= SECRET_LENGTHS[1]:
            raise s.fail("length", f"{secret.length} is out of range {SECRET_LENGTHS[0]}..{SECRET_LENGTHS[1]} bytes")
    raw_checkpoints = r.get("checkpoints", list, required=True)
    if not raw_checkpoints:
        raise r.fail("checkpoints", "at least one checkpoint is required")
    for i, table in enumerate(raw_checkpoints):
        if not isinstance(table, dict):
            raise r.fail(f"checkpoints[{i}]", "expected a table ([[checkpoints]])")
    names = [r.child(table, f"checkpoints[{i}].").get("name", str, required=True)
             for i, table in enumerate(raw_checkpoints)]
    if len(set(names)) != len(names):
        raise r.fail("checkpoints", f"checkpoint names repeat: {names}")
    if EXIT_CHECKPOINT in names[:-1]:
        raise r.fail("checkpoints", f"the {EXIT_CHECKPOINT!r} checkpoint (taken at the target's final exit) must come last")
    if ("exit" in methods) != (EXIT_CHECKPOINT in names):
        raise r.fail("methods", f"the exit method and a last checkpoint named {EXIT_CHECKPOINT!r} go together")
    if "exit" in methods and "kernel-core" in methods:
        raise r.fail("methods", "kernel-core kills the target, so it cannot also be snapshotted at its exit")
    announced = [n for n in names if n != EXIT_CHECKPOINT]
    checkpoints = []
    for i, table in enumerate(raw_checkpoints):
        last = bool(announced) and table.get("name") == announced[-1]
        checkpoints.append(_checkpoint(r.child(table, f"checkpoints[{i}]."), tuple(methods), last, is_command))
    return Scenario(
        name=name,
        description=r.get("description", str, "").strip(),
        target=target,
        entry=r.get("entry", str, name),
        methods=tuple(methods),
        repeat=repeat,
        timeout_s=float(timeout),
        secret=secret,
        checkpoints=tuple(checkpoints),
        source=path,
        command=_command(r, path, secret) if is_command else None,
        program=_program(r, path) if target == PROGRAM_TARGET else None,
        follow=r.get("follow", bool, False),
        requires_cpu=_cpu_flags(r),
    )


def _cpu_flags(r: TomlTable) -> tuple[str, ...]:
    flags = r.get("requires_cpu", list, [])
    for i, flag in enumerate(flags):
        if not isinstance(flag, str) or not re.fullmatch(r"[a-z0-9_]+", flag):
            raise r.fail(f"requires_cpu[{i}]", f"expected a CPU flag as /proc/cpuinfo spells it (e.g. \"aes\"), got {flag!r}")
    return tuple(flags)


def load_scenarios(directory: Path) -> list[Scenario]:
    """Every *.toml under `directory`, sorted by name; duplicate names are an error."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ScenarioError(directory, "", "scenario directory not found")
    scenarios: dict[str, Scenario] = {}
    for path in sorted(directory.rglob("*.toml")):
        scenario = load_scenario(path)
        if scenario.name in scenarios:
            raise ScenarioError(path, "name", f"{scenario.name!r} is already defined in {scenarios[scenario.name].source}")
        scenarios[scenario.name] = scenario
    return sorted(scenarios.values(), key=lambda s: s.name)
