"""The `remanence` command: run the scenario suite (whole or a shard), merge shards, list scenarios, doctor."""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import __version__
from .config import Config, ConfigError, FormatSpec, parse_formats, resolve_config, split_formats
from .gate import BaselineError, apply_gate, load_baseline
from .plan import Plan, UsageError, availability, make_plan, select
from .report import reporters, write_report
from .report.json_report import results_document
from .report.terminal import print_verdicts
from .results import EXIT_USAGE
from .runner import RunOptions, Runner
from .scenario import SNAPSHOT_METHODS, ScenarioError, load_scenarios
from .shard import ShardError, load_shard, merge_documents, parse_shard, shard_inputs, shard_slice
from .snapshot import machine_facts, method_unavailable
from .targets import PROJECT_ROOT

DEFAULT_SCENARIOS = PROJECT_ROOT / "scenarios"
DEFAULT_OUT = Path("reports")


def _console(stderr: bool = False) -> Console:
    console = Console(stderr=stderr, no_color=bool(os.environ.get("NO_COLOR")), highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = 160  # logs and CI: wide enough that reasons stay readable
    return console


def _methods(value: str) -> list[str]:
    methods = [m.strip() for m in value.split(",") if m.strip()]
    for m in methods:
        if m not in SNAPSHOT_METHODS:
            raise argparse.ArgumentTypeError(f"unknown method {m!r} (known: {', '.join(SNAPSHOT_METHODS)})")
    return methods


FORMAT_HELP = ("report formats, comma-separated, each NAME or NAME=PATH (PATH - is stdout), e.g. json,sarif,md=- "
               "(default: the config's [run] formats, else json; known: %s)")


def _add_gate_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", default=None, metavar="LIST", help=FORMAT_HELP % ", ".join(reporters()))
    p.add_argument("--config", type=Path, default=None,
                   help="config file (default: $REMANENCE_CONFIG, else ./remanence.toml if present)")
    p.add_argument("--baseline", type=Path, default=None,
                   help="an earlier results.json: only verdicts not already failing there fail the gate")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr, no table on stdout")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="remanence", description="Forensic leak tests: do secrets really get wiped?")
    parser.add_argument("--version", action="version", version=f"remanence {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run scenarios and judge them")
    run.add_argument("names", nargs="*", help="scenario names or glob patterns (default: all)")
    run.add_argument("--scenarios", type=Path, default=None, help=f"scenario folder (default: {DEFAULT_SCENARIOS})")
    run.add_argument("--method", type=_methods, default=None, help="only these snapshot methods (comma-separated)")
    run.add_argument("--repeat", type=int, default=None, help="repetitions per scenario (overrides the scenario files)")
    run.add_argument("--timeout", type=float, default=None, help="seconds to wait for each checkpoint (overrides the files)")
    run.add_argument("--out", type=Path, default=None, help=f"output folder (default: {DEFAULT_OUT})")
    run.add_argument("--shard", default=None, metavar="I/N",
                     help="run only shard I of N (1-based): run k of the plan goes to shard (k mod N)+1")
    run.add_argument("--keep-snapshots", action="store_true", help="keep snapshot files (mode 0600) under OUT/snapshots")
    run.add_argument("--show-secrets", action="store_true",
                     help="do not mask secret bytes in hexdumps (reports then hold the secret: handle with care)")
    _add_gate_options(run)

    merge = sub.add_parser("merge", help="combine the results.json of `run --shard` jobs into one set of reports")
    merge.add_argument("out", type=Path, metavar="OUT_DIR", help="where the merged reports go")
    merge.add_argument("inputs", type=Path, nargs="+", metavar="SHARD_RESULTS",
                       help="shard results.json files, or folders holding them (searched recursively)")
    _add_gate_options(merge)

    lst = sub.add_parser("list", help="list scenarios and whether this machine can run them")
    lst.add_argument("--scenarios", type=Path, default=None)
    lst.add_argument("--config", type=Path, default=None, help="config file (its [run] scenarios is the default folder)")

    doctor = sub.add_parser("doctor", help="check what this machine allows and what each missing piece disables")
    doctor.add_argument("--json", action="store_true", help="machine-readable output")
    doctor.add_argument("--scenarios", type=Path, default=None,
                        help="the suite whose needs decide the exit code (default: the config's, else the built-in)")
    doctor.add_argument("--no-build", action="store_true", help="do not build the target programs (faster, less certain)")
    doctor.add_argument("--config", type=Path, default=None)
    return parser


# --- shared pieces -----------------------------------------------------------------------------------------

def _formats(args, config: Config, known: dict) -> list[FormatSpec]:
    if args.format is not None:
        return parse_formats(split_formats(args.format), list(known))
    return list(config.run.formats) if config.run.formats else [FormatSpec("json")]


def _write_file(path: Path, text: str) -> Path:
    """Atomically, as write_report does, to a path of the user's choosing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path


def _emit(doc: dict, formats: list[FormatSpec], out: Path, known: dict, progress) -> None:
    to_stdout = None
    for spec in formats:
        reporter = known[spec.name]
        if spec.to_stdout:
            to_stdout = reporter
        elif spec.path is None:
            progress(f"wrote {write_report(reporter, doc, out)}")
        else:
            progress(f"wrote {_write_file(Path(spec.path), reporter.render(doc))}")
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


# --- commands ----------------------------------------------------------------------------------------------

def _list(args) -> int:
    config = _config_for(args, reporters())
    folder = args.scenarios or config.run.scenarios or DEFAULT_SCENARIOS
    scenarios = load_scenarios(folder)
    programs: dict = {}
    table = Table(title=f"scenarios in {folder}")
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
    known = reporters()
    config = _config_for(args, known)
    defaults = config.run
    formats = _formats(args, config, known)
    out = args.out or defaults.out or DEFAULT_OUT
    baseline_path = args.baseline or defaults.baseline
    baseline = load_baseline(baseline_path) if baseline_path else None   # before the run: a bad one fails fast
    shard = parse_shard(args.shard) if args.shard is not None else None
    methods = args.method or (list(defaults.methods) if defaults.methods else None)
    repeat = args.repeat if args.repeat is not None else defaults.repeat
    timeout = args.timeout if args.timeout is not None else defaults.timeout

    scenarios = select(load_scenarios(args.scenarios or defaults.scenarios or DEFAULT_SCENARIOS), args.names)
    plan = make_plan(scenarios, methods, repeat)
    planned = [r.run_id for r in plan.runs]
    if shard:
        mine = set(shard_slice(planned, *shard))
        plan = Plan(tuple(r for r in plan.runs if r.run_id in mine))

    progress_console = _console(stderr=True)
    progress = (lambda message: None) if args.quiet else (lambda message: progress_console.print(escape(message), style="dim"))
    if shard:
        progress(f"shard {shard[0]}/{shard[1]}: {len(plan.runs)} of {len(planned)} planned run(s)")
    results = Runner(RunOptions(out, args.keep_snapshots, timeout), progress).run(plan)
    results.machine = machine_facts()
    doc = results_document(results, show_secrets=args.show_secrets)
    if shard:
        doc["shard"] = f"{shard[0]}/{shard[1]}"
        doc["planned_runs"] = planned
        doc["shard_runs"] = [r.run_id for r in plan.runs]
    doc = apply_gate(doc, baseline, config, baseline_path=baseline_path)
    table_console = _console(stderr=any(f.to_stdout for f in formats))  # stdout may belong to a report
    if not args.quiet:
        print_verdicts(doc, table_console)
    _report_gate(doc, table_console, args.quiet)
    _emit(doc, formats, out, known, progress)
    return doc["exit_code"]


def _merge(args) -> int:
    known = reporters()
    config = _config_for(args, known)
    formats = _formats(args, config, known)
    baseline_path = args.baseline or config.run.baseline
    baseline = load_baseline(baseline_path) if baseline_path else None
    files = shard_inputs(args.inputs)
    doc = merge_documents([(str(f), load_shard(f)) for f in files])
    doc = apply_gate(doc, baseline, config, baseline_path=baseline_path)
    progress_console = _console(stderr=True)
    progress = (lambda message: None) if args.quiet else (lambda message: progress_console.print(escape(message), style="dim"))
    progress(f"merged {len(files)} shard document(s): {len(doc['runs'])} run(s), {len(doc['verdicts'])} verdict(s)")
    table_console = _console(stderr=any(f.to_stdout for f in formats))
    if not args.quiet:
        print_verdicts(doc, table_console)
    _report_gate(doc, table_console, args.quiet)
    _emit(doc, formats, args.out, known, progress)
    return doc["exit_code"]


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


def _terminate(signum, frame):
    raise KeyboardInterrupt


COMMANDS = {"run": _run, "merge": _merge, "list": _list, "doctor": _doctor}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)  # a CI cancel behaves like Ctrl-C: kill targets, write what we have
    try:
        return COMMANDS[args.command](args)
    except ScenarioError as e:
        print(f"remanence: scenario error: {e}", file=sys.stderr)
    except ConfigError as e:
        print(f"remanence: {'config error: ' if e.path else ''}{e}", file=sys.stderr)
    except (UsageError, BaselineError, ShardError) as e:
        print(f"remanence: {e}", file=sys.stderr)
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
