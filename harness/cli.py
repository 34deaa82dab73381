"""The `remanence` command: run the scenario suite (whole or a shard), merge shards, list scenarios, doctor."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import __version__
from .config import Config, ConfigError, FormatSpec, parse_formats, resolve_config, split_formats
from .document import results_document
from .gate import BaselineError, apply_gate, load_baseline
from .model import Expect
from .plan import Plan, UsageError, make_plan, program_for, select
from .entry import handle_interrupts, interrupted_message, interrupts_deferred
from .paths import OutsideError
from .report import reporters, write_report
from .report.terminal import print_verdicts
from .results import EXIT_FAIL, EXIT_USAGE
from .probe import ProbeRequest, probe_scenario
from .progress import Progress
from .runner import RunOptions, Runner
from .schedule import MAX_JOBS, default_jobs
from .scenario import (LANGUAGES, LIVE_METHODS, MAX_REPEAT, SECRET_LENGTHS, SNAPSHOT_EXPECTS, SNAPSHOT_METHODS, Scenario,
                       ScenarioError, load_scenarios, seconds_problem)
from .shard import ShardError, load_shard, merge_documents, parse_shard, shard_inputs, shard_slice
from .snapshot import machine_facts, method_unavailable
from .suggest import unknown
from .layout import PACKAGE_DIR, SCENARIOS_DIR, TARGETS_DIR
from .workspace import session

DEFAULT_SCENARIOS = SCENARIOS_DIR
DEFAULT_OUT = Path("reports")


def _console(stderr: bool = False) -> Console:
    console = Console(stderr=stderr, no_color=bool(os.environ.get("NO_COLOR")), highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = 160  # logs and CI: wide enough that reasons stay readable
    return console


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from None
    if problem := seconds_problem(seconds):
        raise argparse.ArgumentTypeError(f"{value!r}: {problem}")
    return seconds


def _bounded_int(low: int, high: int):
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
        if not low <= number <= high:
            raise argparse.ArgumentTypeError(f"{value!r} is out of range {low}..{high}")
        return number
    return parse


def _method_list(known: tuple[str, ...], what: str = "method"):
    """--method LIST: comma-separated names from `known`, each once, in the order given."""
    def parse(value: str) -> list[str]:
        methods = [m.strip() for m in value.split(",") if m.strip()]
        for m in methods:
            if m not in known:
                raise argparse.ArgumentTypeError(unknown(what, m, known))
        if not methods:
            raise argparse.ArgumentTypeError(f"{value!r}: no method given (known: {', '.join(known)})")
        return list(dict.fromkeys(methods))
    return parse


FORMAT_HELP = ("report formats, comma-separated or repeated, each NAME or NAME=PATH (PATH - is stdout), e.g. "
               "json,sarif,md=- (default: the config's [run] formats, else json; known: %s)")
TIMEOUT_RULE = ("a trigger's own wait (delay=S, idle=S) comes on top: the timeout bounds how long the program "
                "takes to respond")


def _add_gate_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", action="append", default=None, metavar="LIST", help=FORMAT_HELP % ", ".join(reporters()))
    p.add_argument("--source-root", type=Path, default=None, metavar="DIR",
                   help="SARIF file locations are relative to DIR (default: the git top level of the scenario "
                        "files, else of the current folder; files outside it keep absolute URIs)")
    p.add_argument("--config", type=Path, default=None,
                   help="config file (default: $REMANENCE_CONFIG, else ./remanence.toml if present)")
    p.add_argument("--baseline", type=Path, default=None,
                   help="an earlier results.json: only verdicts not already failing there fail the gate")
    p.add_argument("--allow-skip", action="store_true",
                   help="SKIP verdicts (checks this machine cannot do) do not fail the gate (default: they exit 3); "
                        "config: [run] allow_skip = true")
    talk = p.add_mutually_exclusive_group()
    talk.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr, no table on stdout")
    talk.add_argument("-v", "--verbose", action="store_true",
                      help="on a terminal, every progress line (each snapshot) above the live display "
                           "(when stderr is not a terminal every line is printed anyway)")


class _Parser(argparse.ArgumentParser):
    """Usage errors are one line (and exit 2), not a usage block: CI logs and scripts show the reason itself."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


def one_line(text: object) -> str:
    """A message on one line: newlines and other control characters (from file names, TOML keys) escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="remanence", description="Forensic leak tests: do secrets really get wiped?")
    parser.add_argument("--version", action="version", version=f"remanence {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run scenarios and judge them")
    run.add_argument("names", nargs="*", metavar="SCENARIO",
                     help="scenario names, glob patterns (quoted), or scenario files or folders (a path: anything "
                          "with a / or ending in .toml, loaded wherever it lies); default: the whole suite")
    run.add_argument("--scenarios", type=Path, default=None, help=f"scenario folder (default: {DEFAULT_SCENARIOS})")
    run.add_argument("--method", type=_method_list(SNAPSHOT_METHODS), default=None, metavar="LIST",
                     help=f"only these snapshot methods, comma-separated: {', '.join(SNAPSHOT_METHODS)} "
                          "(e.g. exit: only the snapshots taken at the targets' exit)")
    run.add_argument("--repeat", type=_bounded_int(1, MAX_REPEAT), default=None,
                     help="repetitions per scenario (overrides the scenario files)")
    run.add_argument("--timeout", type=_seconds, default=None,
                     help=f"seconds to wait for each checkpoint (overrides the files); {TIMEOUT_RULE}")
    run.add_argument("-j", "--jobs", type=_bounded_int(1, MAX_JOBS), default=None, metavar="N",
                     help=f"runs at once (default: the number of cores, {default_jobs()} here); a further run starts "
                          "only while free memory leaves room for the largest checkpoint so far")
    run.add_argument("--out", type=Path, default=None, help=f"output folder (default: {DEFAULT_OUT})")
    run.add_argument("--shard", default=None, metavar="I/N",
                     help="run only shard I of N (1-based): run k of the plan goes to shard (k mod N)+1")
    run.add_argument("--keep-snapshots", action="store_true", help="keep snapshot files (mode 0600) under OUT/snapshots")
    run.add_argument("--follow", action="store_true",
                     help="snapshot every process of each target's tree (its children, daemons it started), as follow = true")
    run.add_argument("--show-secrets", action="store_true",
                     help="do not mask secret bytes in hexdumps (reports then hold the secret: handle with care)")
    _add_gate_options(run)

    merge = sub.add_parser("merge", help="combine the results.json of `run --shard` jobs into one set of reports")
    merge.add_argument("out", type=Path, metavar="OUT_DIR", help="where the merged reports go")
    merge.add_argument("inputs", type=Path, nargs="+", metavar="SHARD_RESULTS",
                       help="shard results.json files, or folders holding them (searched recursively)")
    _add_gate_options(merge)

    lst = sub.add_parser("list", help="list scenarios and whether this machine can run them")
    lst.add_argument("--scenarios", type=Path, default=None, help=f"scenario folder (default: {DEFAULT_SCENARIOS})")
    lst.add_argument("--json", action="store_true",
                     help="machine-readable: name, target, checkpoints, methods, runnable, skip_reason, source")
    lst.add_argument("--config", type=Path, default=None, help="config file (its [run] scenarios is the default folder)")

    doctor = sub.add_parser("doctor", help="check what this machine allows and what each missing piece disables")
    doctor.add_argument("--json", action="store_true", help="machine-readable output")
    doctor.add_argument("--scenarios", type=Path, default=None,
                        help="the suite whose needs decide the exit code (default: the config's, else the built-in)")
    doctor.add_argument("--no-build", action="store_true", help="do not build the target programs (faster, less certain)")
    doctor.add_argument("--config", type=Path, default=None)
    sdk = sub.add_parser("sdk", help="print the folder of a language's SDK (to build or import your own targets)")
    sdk.add_argument("language", metavar="LANG", help=f"one of: {', '.join(LANGUAGES)}")
    _add_scan_parser(sub)
    _add_probe_parser(sub)
    return parser


def _add_probe_parser(sub) -> None:
    probe = sub.add_parser(
        "probe", help="test your own, unmodified program: give it a fresh secret, snapshot it at triggers, judge",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run CMD with a fresh random secret delivered on stdin (default), typed at its prompt on a "
                    "pseudo-terminal (--prompt), or in a private file (--file, CMD names it {secret_file}); snapshot it at "
                    "each --at trigger and judge every snapshot against --expect. The scenario file equivalent to the "
                    "probe is written next to the reports, ready to join a suite.",
        epilog="""examples:
  remanence probe --prompt 'Password:' --in-use 'output=Logged in' --at idle=2 -- ./login alice
  remanence probe --stdin --at exit --method procmem,gcore -- ./hash-password
  remanence probe --file --at delay=1 --expect observe -- ./decrypt --key-file {secret_file} data.bin""")
    delivery = probe.add_mutually_exclusive_group()
    delivery.add_argument("--stdin", dest="delivery", action="store_const", const="stdin",
                          help="pipe the secret (and a newline) to the program's stdin, then close it (default)")
    delivery.add_argument("--prompt", metavar="REGEX", default=None,
                          help="run the program on a pseudo-terminal and type the secret when its output matches REGEX")
    delivery.add_argument("--file", dest="delivery", action="store_const", const="file",
                          help="write the secret to a private file whose path replaces {secret_file} in CMD")
    probe.add_argument("--at", dest="triggers", action="append", metavar="TRIGGER", default=None,
                       help="when to snapshot, repeatable, in order: output=REGEX, delay=SECONDS, idle=SECONDS "
                            "(no CPU time and no output for that long) or exit (last); default: --at idle=1, "
                            "or only exit with --method exit")
    probe.add_argument("--in-use", metavar="TRIGGER", default=None,
                       help="first snapshot the program while it should still hold the secret (expected present): "
                            "proves the methods can see it there")
    probe.add_argument("--expect", choices=SNAPSHOT_EXPECTS, default=Expect.ABSENT.value,
                       help="what every snapshot should show (default: absent; needs the program to have read the secret)")
    probe.add_argument("--method", type=_method_list(SNAPSHOT_METHODS), default=None, metavar="LIST",
                       help=f"snapshot methods, comma-separated: {', '.join(SNAPSHOT_METHODS)} (default: "
                            f"{','.join(ProbeRequest.methods)}; exit snapshots the program as it exits, as --at exit does)")
    probe.add_argument("--secret-length", type=_bounded_int(*SECRET_LENGTHS), default=24,
                       help="length of the secret in bytes (default 24)")
    probe.add_argument("--binary", action="store_true", help="random bytes instead of a printable password (not with --prompt)")
    probe.add_argument("--no-newline", action="store_true", help="do not end the piped or typed secret with a newline")
    probe.add_argument("--env", action="append", default=[], metavar="NAME[=VALUE]",
                       help="add to the program's minimal environment (NAME alone copies ours); repeatable")
    probe.add_argument("--name", default=None, help="scenario name (default: probe.<program>)")
    probe.add_argument("--timeout", type=_seconds, default=60.0,
                       help=f"seconds to wait for the prompt and each trigger (default 60); {TIMEOUT_RULE}")
    probe.add_argument("--repeat", type=_bounded_int(1, MAX_REPEAT), default=1, help="run the probe this many times")
    probe.add_argument("--out", type=Path, default=None, help=f"output folder (default: {DEFAULT_OUT})")
    probe.add_argument("--keep-snapshots", action="store_true", help="keep snapshot files (mode 0600) under OUT/snapshots")
    probe.add_argument("--follow", action="store_true",
                       help="snapshot every process of the program's tree (its children, daemons it started): follow = true")
    probe.add_argument("--show-secrets", action="store_true", help="do not mask secret bytes in hexdumps")
    _add_gate_options(probe)
    probe.add_argument("program", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS]", help="the program and its arguments")


# --- scan: ad-hoc scans of core files and live processes (harness/adhoc.py) ---------------------------------

SCAN_DESCRIPTION = """\
Look for values you give in existing core files (CORE...) or in live processes (--pid), with the same snapshots,
encodings (raw, hex, base64, UTF-16, fragments), attribution and reports as `run`. Each input x value is one
verdict. --expect absent (the default) fails on any copy; a no-hit "absent" is only a PASS when a control value
known to be in the image was seen in it (--control-hex/--control/--control-file; a live process's own command line
serves automatically), else INCONCLUSIVE. A core that cannot be read is one line on stderr and an ERROR verdict;
the other inputs are still scanned. Exit codes as for run: 0 all PASS, 1 any FAIL, 2 usage error, 3 any ERROR or
INCONCLUSIVE."""

SCAN_EPILOG = """\
--secret and --secret-hex put the value in argv: other users can read it in `ps` and /proc, and it lands in your
shell history. Prefer --secret-file PATH, or --secret-file - to read it from standard input (e.g.
`gpg -d key.gpg | remanence scan --secret-file - core.1234`; a file's bytes are used as they are, trailing newline
included). --label NAME names the value option right after it (reports show labels and SHA-256 prefixes, never the
values); unlabelled values are secret, secret-2, ... and control, control-2, ...

examples:
  remanence scan --secret-file key.bin --control-hex 4d5a9000deadbeef core.1234
  remanence scan --pid 4242 --method procmem,gcore --label db --secret-file - --expect observe
  remanence scan --secret-hex 00112233445566778899aabbccddeeff --format json,html --out /tmp/r core.*"""


class _ScanValue(argparse.Action):
    """--secret*/--control*: appended in command-line order to args.scan_values, each taking a pending --label."""

    def __init__(self, option_strings, dest, role: str, kind: str, **kwargs):
        self.role, self.kind = role, kind
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, value, option_string=None):
        from .adhoc import ValueArg
        values = list(getattr(namespace, "scan_values", None) or [])
        values.append(ValueArg(self.role, self.kind, value, getattr(namespace, "scan_label", None)))
        namespace.scan_values, namespace.scan_label = values, None


class _ScanLabel(argparse.Action):
    def __call__(self, parser, namespace, value, option_string=None):
        if getattr(namespace, "scan_label", None) is not None:
            raise argparse.ArgumentError(self, "two --label options in a row: each names the value option right after it")
        namespace.scan_label = value


def _scan_pid(value: str) -> int:
    try:
        pid = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a process id: {value!r}") from None
    if pid <= 0:
        raise argparse.ArgumentTypeError(f"not a process id: {value!r}")
    return pid


def _add_scan_parser(sub) -> None:
    scan = sub.add_parser("scan", help="look for given values in core files or live processes",
                          description=SCAN_DESCRIPTION, epilog=SCAN_EPILOG,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    scan.add_argument("cores", nargs="*", type=Path, metavar="CORE", help="core files to scan (never modified)")
    scan.add_argument("--pid", type=_scan_pid, action="append", default=[], metavar="PID",
                      help="a live process to snapshot and scan (repeatable); it is stopped while it is read")
    scan.add_argument("--method", type=_method_list(LIVE_METHODS, "method for a live process"), default=None,
                      metavar="LIST", help=f"snapshot methods for --pid, comma-separated: {', '.join(LIVE_METHODS)} "
                                           "(default: procmem)")
    values = scan.add_argument_group("values to look for (repeatable, at least one --secret*)")
    for role, what in (("secret", "a value to look for"), ("control", "a value known to be in the image (positive control)")):
        values.add_argument(f"--{role}-hex", action=_ScanValue, role=role, kind="hex", dest="scan_values", metavar="HEX",
                            help=f"{what}, as hex digits" + (" (visible in ps: prefer --secret-file)" if role == "secret" else ""))
        values.add_argument(f"--{role}", action=_ScanValue, role=role, kind="text", dest="scan_values", metavar="TEXT",
                            help=f"{what}, as text (UTF-8; its UTF-16 forms are searched too)"
                            + (" (visible in ps: prefer --secret-file)" if role == "secret" else ""))
        values.add_argument(f"--{role}-file", action=_ScanValue, role=role, kind="file", dest="scan_values", metavar="PATH",
                            help=f"{what}: the file's raw bytes; - reads standard input (once)")
    values.add_argument("--label", action=_ScanLabel, dest="scan_label", metavar="NAME",
                        help="name the next --secret*/--control* value (default: secret, secret-2, ..., control, ...)")
    scan.add_argument("--expect", choices=("absent", "present", "observe"), default="absent",
                      help="absent (default, CI): any copy FAILs; present: no copy FAILs; observe: list copies, PASS")
    scan.add_argument("--no-auto-control", action="store_true",
                      help="for --pid: do not use the process's own command line (or environment) as the control")
    scan.add_argument("--out", type=Path, default=None, help=f"output folder (default: {DEFAULT_OUT})")
    scan.add_argument("--keep-snapshots", action="store_true",
                      help="keep --pid snapshot files (mode 0600) under OUT/snapshots (they hold the process's secrets)")
    scan.add_argument("--show-secrets", action="store_true",
                      help="do not mask secret bytes in hexdumps (reports then hold the secret: handle with care)")
    _add_gate_options(scan)
    scan.set_defaults(scan_values=None, scan_label=None)


# --- shared pieces -----------------------------------------------------------------------------------------

def _formats(args, config: Config, known: dict) -> list[FormatSpec]:
    if args.format is not None:   # --format a,b --format c == --format a,b,c
        return parse_formats([f for value in args.format for f in split_formats(value)], list(known))
    return list(config.run.formats) if config.run.formats else [FormatSpec("json")]


def _emit(doc: dict, formats: list[FormatSpec], out: Path, known: dict, progress) -> None:
    to_stdout = None
    for spec in formats:
        reporter = known[spec.name]
        if spec.to_stdout:
            to_stdout = reporter
        else:
            progress(f"wrote {write_report(reporter, doc, out, spec.path)}")
    if to_stdout is not None:  # last, so nothing else interleaves with it
        sys.stdout.write(to_stdout.render(doc))
        sys.stdout.flush()


def _report_gate(doc: dict, console: Console, quiet: bool) -> None:
    """Expired suppressions always (they fail the gate); the rest unless quiet."""
    gate = doc["gate"]
    for message in gate["messages"]:
        if message.startswith("error:") or not quiet:
            print(f"remanence: {message}", file=sys.stderr)
    if quiet:
        return
    gated = [v for v in doc["verdicts"] if v["gate"] and v["gate"]["state"] != "new"]
    if gated:
        table = Table(title="baselined and suppressed verdicts (they do not fail the gate)")
        for column in ("scenario", "#", "checkpoint", "method", "verdict", "gate", "why accepted"):
            table.add_column(column, overflow="fold", no_wrap=column not in ("why accepted",))
        for v in gated:
            s = v["gate"]["suppression"]
            why = f"{s['id']}: {s['reason']}" + (f" (until {s['expires']})" if s["expires"] else "") if s \
                else "already failing in the baseline"
            table.add_row(escape(v["scenario"]), str(v["repetition"]), escape(v["checkpoint"]), v["method"],
                          v["outcome"], v["gate"]["state"], escape(why))
        console.print(table)
    if gate["config"] or gate["baseline"] or gated:
        sources = "; ".join(f"{k}: {escape(gate[k])}" for k in ("config", "baseline") if gate[k])
        console.print(f"gate: {gate['new_failures']} new, {gate['baseline_failures']} baseline, "
                      f"{gate['suppressed']} suppressed" + (f" ({sources})" if sources else "")
                      + f" -> exit {gate['exit_code']}")


def _config_for(args, known: dict) -> Config:
    return resolve_config(getattr(args, "config", None), list(known))


class _Reporting:
    """What run, merge, scan and probe share: config, formats, output folder, baseline (loaded before the work,
    so a bad one fails fast), progress on stderr; and finish(): gate, verdict table, reports, exit code."""

    def __init__(self, args, out: Path | None = None):
        self.known = reporters()
        if args.source_root is not None:
            if not args.source_root.is_dir():
                raise UsageError(f"--source-root {args.source_root}: not a folder")
            self.known["sarif"] = dataclasses.replace(self.known["sarif"], source_root=args.source_root)
        self.config = _config_for(args, self.known)
        self.formats = _formats(args, self.config, self.known)
        self.out = out or getattr(args, "out", None) or self.config.run.out or DEFAULT_OUT
        self.baseline_path = args.baseline or self.config.run.baseline
        self.baseline = load_baseline(self.baseline_path) if self.baseline_path else None
        self.allow_skip = args.allow_skip         # the gate adds the config's [run] allow_skip
        self.quiet = args.quiet
        self.progress = Progress(_console(stderr=True), quiet=args.quiet, verbose=args.verbose)

    def finish(self, doc: dict) -> int:
        """Gate, table and reports; a Ctrl-C or SIGTERM meanwhile waits until every report file is complete."""
        with interrupts_deferred() as interrupts:
            doc = apply_gate(doc, self.baseline, self.config, baseline_path=self.baseline_path,
                             allow_skip=self.allow_skip)
            table_console = _console(stderr=any(f.to_stdout for f in self.formats))  # stdout may belong to a report
            if not self.quiet:
                print_verdicts(doc, table_console)
            _report_gate(doc, table_console, self.quiet)
            _emit(doc, self.formats, self.out, self.known, self.progress)
        if interrupts and doc["exit_code"] != EXIT_FAIL:
            return interrupted_message()
        return doc["exit_code"]


# --- commands ----------------------------------------------------------------------------------------------

def _require_programs(scenarios: list[Scenario]) -> None:
    """A user's program that cannot be found is a usage error before anything runs, not a SKIP (a program
    target with a build command may only exist once built)."""
    for s in scenarios:
        if (s.command or s.program) and isinstance(problem := program_for(s, {}), str):
            raise UsageError(f"{s.source}: {s.target}.argv: {problem}")


def _list(args) -> int:
    config = _config_for(args, reporters())
    folder = args.scenarios or config.run.scenarios or DEFAULT_SCENARIOS
    scenarios = load_scenarios(folder)
    programs: dict = {}
    rows = []
    for s in scenarios:
        program = program_for(s, programs)
        problems = [program] if isinstance(program, str) else (
            [] if program.registers(s.entry) else [f"entry {s.entry!r} not in the {s.target} target"])
        problems += [f"{m}: {r}" for m in s.methods if (r := method_unavailable(m))]
        rows.append({"name": s.name, "target": s.target, "checkpoints": [c.name for c in s.checkpoints],
                     "methods": list(s.methods), "runnable": not problems,
                     "skip_reason": "; ".join(problems) or None, "source": str(s.source)})
    if args.json:
        print(json.dumps({"scenarios_dir": str(folder), "scenarios": rows}, indent=2))
        return 0
    table = Table(title=f"scenarios in {folder}")
    for column in ("scenario", "target", "checkpoints", "methods", "runnable here"):
        # Names stay whole (they are what `run` takes); the other columns wrap between words.
        table.add_column(column, no_wrap=column == "scenario", overflow="fold")
    for row in rows:
        table.add_row(escape(row["name"]), row["target"], " ".join(row["checkpoints"]), " ".join(row["methods"]),
                      "[green]yes[/]" if row["runnable"] else "[yellow]no[/]: " + escape(row["skip_reason"]))
    _console().print(table)
    return 0


def _run(args) -> int:
    reporting = _Reporting(args)
    defaults = reporting.config.run
    shard = parse_shard(args.shard) if args.shard is not None else None
    methods = args.method or (list(defaults.methods) if defaults.methods else None)
    repeat = args.repeat if args.repeat is not None else defaults.repeat
    timeout = args.timeout if args.timeout is not None else defaults.timeout

    scenarios = select(args.names, lambda: load_scenarios(args.scenarios or defaults.scenarios or DEFAULT_SCENARIOS))
    _require_programs(scenarios)
    plan = make_plan(scenarios, methods, repeat)
    planned = [r.run_id for r in plan.runs]
    if shard:
        mine = set(shard_slice(planned, *shard))
        plan = Plan(tuple(r for r in plan.runs if r.run_id in mine))
        reporting.progress(f"shard {shard[0]}/{shard[1]}: {len(plan.runs)} of {len(planned)} planned run(s)")
    jobs = args.jobs or defaults.jobs or default_jobs()
    with reporting.progress.live():
        results = Runner(RunOptions(reporting.out, args.keep_snapshots, timeout, args.follow, jobs),
                         reporting.progress).run(plan)
    results.machine = machine_facts()
    doc = results_document(results, show_secrets=args.show_secrets)
    if shard:
        doc["shard"] = f"{shard[0]}/{shard[1]}"
        doc["planned_runs"] = planned
        doc["shard_runs"] = [r.run_id for r in plan.runs]
    return reporting.finish(doc)


def _merge(args) -> int:
    reporting = _Reporting(args, out=args.out)
    files = shard_inputs(args.inputs)
    doc = merge_documents([(str(f), load_shard(f)) for f in files])
    reporting.progress(f"merged {len(files)} shard document(s): {len(doc['runs'])} run(s), {len(doc['verdicts'])} verdict(s)")
    return reporting.finish(doc)


def _doctor(args) -> int:
    from .doctor import as_json, diagnose
    config = _config_for(args, reporters())
    folder = args.scenarios or config.run.scenarios or DEFAULT_SCENARIOS
    scenarios = load_scenarios(folder)
    checks, code = diagnose(scenarios, build=not args.no_build)
    if args.json:
        print(json.dumps(as_json(checks, code, folder, scenarios), indent=2))
        return code
    table = Table(title="remanence doctor: what this machine allows")
    for column in ("check", "status", "detail", "disables"):
        table.add_column(column, overflow="fold", no_wrap=column in ("check", "status"))
    styles = {"ok": "green", "limited": "yellow", "missing": "bold red"}
    for c in checks:
        disables = escape(c.disables) + (" [bold](needed by the suite)[/]" if c.blocks_suite else "")
        table.add_row(c.check, f"[{styles[c.status]}]{c.status}[/]", escape(c.detail), disables)
    console = _console()
    console.print(table)
    if code:
        console.print(f"[yellow]Some of the {len(scenarios)} scenarios in {escape(str(folder))} cannot run fully here: "
                      f"their verdicts will be SKIP (exit {code}).[/]")
    else:
        console.print(f"[green]Everything the {len(scenarios)} scenarios in {escape(str(folder))} need is available.[/]")
    return code


def _scan(args) -> int:
    from .adhoc import AdhocOptions, AdhocScan, AdhocUsageError, check_pid, load_values
    reporting = _Reporting(args)

    def usage(message: str) -> int:
        _usage_error(f"scan: {message}")
        return EXIT_USAGE

    if args.scan_label is not None:
        return usage("--label NAME must come right before the --secret*/--control* option it names")
    if not args.cores and not args.pid:
        return usage("nothing to scan: give core files, or --pid PID")
    if args.method and not args.pid:
        return usage("--method applies to --pid only (a core file is read as it is)")
    errors = lambda message: print(f"remanence: scan: {one_line(message)}", file=sys.stderr, flush=True)  # always
    try:
        for pid in args.pid:
            check_pid(pid)
        secrets, controls = load_values(args.scan_values or [], sys.stdin.buffer if sys.stdin else None, errors)
    except AdhocUsageError as e:
        return usage(str(e))
    options = AdhocOptions(expect=Expect(args.expect), methods=tuple(args.method or ("procmem",)),
                           out_dir=reporting.out, keep_snapshots=args.keep_snapshots, auto_control=not args.no_auto_control)
    results = AdhocScan(secrets, controls, options, reporting.progress, errors).run(
        list(args.cores), list(dict.fromkeys(args.pid)))
    results.machine = machine_facts()
    return reporting.finish(results_document(results, show_secrets=args.show_secrets))


def _probe(args) -> int:
    reporting = _Reporting(args)
    argv = args.program[1:] if args.program[:1] == ["--"] else args.program
    request = ProbeRequest(
        argv=argv, delivery="prompt" if args.prompt is not None else args.delivery or "stdin", prompt=args.prompt or "",
        triggers=tuple(args.triggers) if args.triggers else None, in_use=args.in_use, expect=Expect(args.expect),
        methods=tuple(args.method or ProbeRequest.methods), secret_form="binary" if args.binary else "password",
        secret_length=args.secret_length, newline=not args.no_newline, env=tuple(args.env), cwd=Path.cwd(),
        timeout_s=args.timeout, repeat=args.repeat, name=args.name, follow=args.follow)
    scenario = probe_scenario(request, reporting.out)
    reporting.progress(f"probe scenario written to {scenario.source}")
    with reporting.progress.live():
        results = Runner(RunOptions(reporting.out, args.keep_snapshots, None), reporting.progress).run(make_plan([scenario]))
    results.machine = machine_facts()
    return reporting.finish(results_document(results, show_secrets=args.show_secrets))


def _sdk(args) -> int:
    """The folder of a language's SDK on stdout (for -I, GOFLAGS, NODE_PATH ...); how to use it on stderr."""
    if args.language not in LANGUAGES:
        raise UsageError(f"sdk: {unknown('language', args.language, LANGUAGES)}")
    folder = PACKAGE_DIR if args.language == "python" else TARGETS_DIR / "sdk" / args.language
    marker = folder / "sdk.py" if args.language == "python" else folder
    if not marker.exists():
        raise UsageError(f"sdk {args.language}: {marker} is missing from this installation")
    print(folder)
    if args.language == "python":
        print("remanence: the Python SDK is part of the installed package: import remanence.sdk", file=sys.stderr)
    return 0


COMMANDS = {"run": _run, "merge": _merge, "list": _list, "doctor": _doctor, "scan": _scan, "probe": _probe, "sdk": _sdk}


def main(argv: list[str] | None = None) -> int:
    """The whole command; start-up (arguments, then the command's own checks) happens before any target runs."""
    handle_interrupts()   # again for in-process callers; the console script sets it before importing this module
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:       # --help, --version, or a usage error already printed on one line
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    try:
        with session():
            return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        return interrupted_message()
    except ScenarioError as e:
        _usage_error(f"scenario error: {e}")
    except ConfigError as e:
        _usage_error(f"{'config error: ' if e.path else ''}{e}")
    except (UsageError, BaselineError, ShardError, OutsideError) as e:
        _usage_error(str(e))
    return EXIT_USAGE


def _usage_error(message: str) -> None:
    print(f"remanence: {one_line(message)}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
