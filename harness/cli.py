"""The `remanence` command: run the scenario suite, list scenarios."""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import __version__
from .plan import UsageError, availability, make_plan, select
from .report import reporters, write_report
from .report.json_report import results_document
from .report.terminal import print_verdicts
from .results import EXIT_USAGE
from .runner import RunOptions, Runner
from .scenario import SNAPSHOT_METHODS, ScenarioError, load_scenarios
from .snapshot import method_unavailable
from .targets import PROJECT_ROOT

DEFAULT_SCENARIOS = PROJECT_ROOT / "scenarios"


def _console(stderr: bool = False) -> Console:
    console = Console(stderr=stderr, no_color=bool(os.environ.get("NO_COLOR")), highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = 160  # logs and CI: wide enough that reasons stay readable
    return console


def _machine() -> dict:
    gdb = shutil.which("gdb")
    version = subprocess.run([gdb, "--version"], capture_output=True, text=True).stdout.splitlines()[0] if gdb else None
    try:
        core_pattern = Path("/proc/sys/kernel/core_pattern").read_text().strip()
    except OSError:
        core_pattern = None
    return {"kernel": platform.release(), "arch": platform.machine(), "python": platform.python_version(),
            "gdb": version, "core_pattern": core_pattern}


def _methods(value: str) -> list[str]:
    methods = [m.strip() for m in value.split(",") if m.strip()]
    for m in methods:
        if m not in SNAPSHOT_METHODS:
            raise argparse.ArgumentTypeError(f"unknown method {m!r} (known: {', '.join(SNAPSHOT_METHODS)})")
    return methods


def _formats(value: str) -> list[str]:
    formats = [f.strip() for f in value.split(",") if f.strip()]
    known = reporters()
    for f in formats:
        if f not in known:
            raise argparse.ArgumentTypeError(f"unknown format {f!r} (known: {', '.join(known)})")
    return formats


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="remanence", description="Forensic leak tests: do secrets really get wiped?")
    parser.add_argument("--version", action="version", version=f"remanence {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run scenarios and judge them")
    run.add_argument("names", nargs="*", help="scenario names or glob patterns (default: all)")
    run.add_argument("--scenarios", type=Path, default=DEFAULT_SCENARIOS, help="scenario folder (default: %(default)s)")
    run.add_argument("--method", type=_methods, default=None, help="only these snapshot methods (comma-separated)")
    run.add_argument("--repeat", type=int, default=None, help="repetitions per scenario (overrides the scenario files)")
    run.add_argument("--timeout", type=float, default=None, help="seconds to wait for each checkpoint (overrides the files)")
    run.add_argument("--out", type=Path, default=Path("reports"), help="output folder (default: %(default)s)")
    run.add_argument("--format", type=_formats, default=["json"], help="report formats, comma-separated (default: json)")
    run.add_argument("--keep-snapshots", action="store_true", help="keep snapshot files (mode 0600) under OUT/snapshots")
    run.add_argument("--show-secrets", action="store_true",
                     help="do not mask secret bytes in hexdumps (reports then hold the secret: handle with care)")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr, no table on stdout")

    lst = sub.add_parser("list", help="list scenarios and whether this machine can run them")
    lst.add_argument("--scenarios", type=Path, default=DEFAULT_SCENARIOS)
    return parser


def _list(args) -> int:
    scenarios = load_scenarios(args.scenarios)
    programs: dict = {}
    table = Table(title=f"scenarios in {args.scenarios}")
    for column in ("scenario", "target", "checkpoints", "methods", "runnable here"):
        table.add_column(column, overflow="fold")
    for s in scenarios:
        program = availability(s.target, programs)
        problems = [program] if isinstance(program, str) else (
            [] if s.entry in program.entries else [f"entry {s.entry!r} not in the {s.target} target"])
        problems += [f"{m}: {r}" for m in s.methods if (r := method_unavailable(m))]
        table.add_row(s.name, s.target, " ".join(c.name for c in s.checkpoints), " ".join(s.methods),
                      "[green]yes[/]" if not problems else "[yellow]no[/]: " + escape("; ".join(problems)))
    _console().print(table)
    return 0


def _run(args) -> int:
    progress_console = _console(stderr=True)
    scenarios = select(load_scenarios(args.scenarios), args.names)
    plan = make_plan(scenarios, args.method, args.repeat)
    progress = (lambda message: None) if args.quiet else (lambda message: progress_console.print(escape(message), style="dim"))
    results = Runner(RunOptions(args.out, args.keep_snapshots, args.timeout), progress).run(plan)
    results.machine = _machine()
    known = reporters()
    doc = results_document(results, show_secrets=args.show_secrets)
    for name in args.format:
        path = write_report(known[name], doc, args.out)
        progress(f"wrote {path}")
    if not args.quiet:
        print_verdicts(results, _console())
    return results.exit_code()


def _terminate(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)  # a CI cancel behaves like Ctrl-C: kill targets, write what we have
    try:
        return _list(args) if args.command == "list" else _run(args)
    except ScenarioError as e:
        print(f"remanence: scenario error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except UsageError as e:
        print(f"remanence: {e}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
