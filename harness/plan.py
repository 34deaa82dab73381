"""From scenarios to a plan: which runs happen, with which target binary, and what this machine must skip."""
from __future__ import annotations

import fnmatch
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .command import CommandUnavailable, resolve_program
from .scenario import (COMMAND_TARGET, PROGRAM_TARGET, PYTHON_PLACEHOLDER, SNAPSHOT_METHODS, CommandSpec, Scenario,
                       ScenarioError, load_scenario, load_scenarios)
from .snapshot import method_unavailable
from .suggest import close_matches
from .targets import TargetProgram, TargetUnavailable, build_target, run_step


class UsageError(ValueError):
    """The command line asks for something that cannot be planned (exit code 2)."""


@dataclass(frozen=True)
class PlannedRun:
    scenario: Scenario
    repetition: int                      # 1-based
    methods: tuple[str, ...]
    program: TargetProgram | None        # None when the run is skipped
    skip_reason: str | None = None
    error_reason: str | None = None      # the user's program could not be built: an error, not this machine's limit
    method_skips: dict[str, str] = field(default_factory=dict)

    @property
    def run_id(self) -> str:
        return f"{self.scenario.name}#{self.repetition}"


@dataclass(frozen=True)
class Plan:
    runs: tuple[PlannedRun, ...]


def is_scenario_path(argument: str) -> bool:
    """A command-line argument naming a scenario file or folder rather than a scenario name or glob: it holds a
    / or ends in .toml (names hold neither a / nor, in practice, that ending)."""
    return "/" in argument or argument.endswith(".toml")


def select(patterns: list[str], suite: Callable[[], list[Scenario]]) -> list[Scenario]:
    """The scenarios the command line asks for, sorted by name: each argument is a scenario file or folder
    (is_scenario_path: loaded wherever it lies) or a name or glob pattern matched against `suite()` (loaded only
    when needed); no arguments: the whole suite. An argument matching nothing, or two files with one name, is an error."""
    if not patterns:
        return suite()
    names = [p for p in patterns if not is_scenario_path(p)]
    known = suite() if names else []
    chosen: dict[Path, Scenario] = {}
    for pattern in patterns:
        if is_scenario_path(pattern):
            path = Path(pattern)
            if path.is_dir():
                found = load_scenarios(path)
            elif path.is_file():
                found = [load_scenario(path)]
            else:
                siblings = [str(path.parent / f.name) for f in path.parent.glob("*.toml")] if path.parent.is_dir() else []
                hint = close_matches(pattern, siblings)
                raise UsageError(f"scenario file {pattern!r} not found" + (f" ({hint})" if hint else ""))
        else:
            found = [s for s in known if fnmatch.fnmatchcase(s.name, pattern)]
            if not found:
                hint = close_matches(pattern, [s.name for s in known]) or "`remanence list` shows them"
                raise UsageError(f"no scenario matches {pattern!r} ({hint})")
        for scenario in found:
            chosen.setdefault(scenario.source.resolve(), scenario)
    by_name: dict[str, Scenario] = {}
    for scenario in chosen.values():
        if (other := by_name.setdefault(scenario.name, scenario)) is not scenario:
            raise UsageError(f"two scenario files are named {scenario.name!r}: {other.source} and {scenario.source}")
    return sorted(by_name.values(), key=lambda s: s.name)


def availability(language: str, cache: dict[str, TargetProgram | str]) -> TargetProgram | str:
    """The built target for `language`, or the reason it cannot be had here (memoised in `cache`)."""
    if language not in cache:
        try:
            cache[language] = build_target(language)
        except TargetUnavailable as e:
            cache[language] = str(e)
    return cache[language]


def _command_program(scenario: Scenario) -> TargetProgram | str:
    """A user's program needs no build: only that it can be found."""
    try:
        return TargetProgram(COMMAND_TARGET, (resolve_program(scenario.command), *scenario.command.argv[1:]), ())
    except CommandUnavailable as e:
        return str(e)


class ProgramBroken(Exception):
    """A user's test program that cannot be built or found: its scenario's verdicts are ERRORs."""


def _user_program(scenario: Scenario) -> TargetProgram:
    """A program target as it is now ({python} being the interpreter running remanence): a program its build has
    yet to make is taken as it will be."""
    spec = scenario.program
    argv = tuple(a.replace(PYTHON_PLACEHOLDER, sys.executable) for a in spec.argv)
    try:
        argv = (resolve_program(CommandSpec(argv, spec.cwd, "stdin")), *argv[1:])
    except CommandUnavailable as e:
        if not spec.build:
            raise ProgramBroken(str(e)) from None
    return TargetProgram(PROGRAM_TARGET, argv, (), spec.cwd, tuple(spec.env.items()))


def _built_program(scenario: Scenario, built: dict[tuple, str | None]) -> TargetProgram:
    """A program target, built first (once per build command, folder and environment in a plan) if its
    [program] table says how."""
    spec = scenario.program
    if spec.build:
        key = (spec.cwd, spec.build, tuple(sorted(spec.env.items())))
        if key not in built:
            try:
                run_step(PROGRAM_TARGET, list(spec.build), spec.cwd, {**os.environ, **spec.env})
                built[key] = None
            except TargetUnavailable as e:
                built[key] = str(e)
        if built[key]:
            raise ProgramBroken(f"{built[key]} (in {spec.cwd})")
    program = _user_program(scenario)
    if not Path(program.command[0]).is_absolute():    # not found on PATH nor in cwd, even after the build
        raise ProgramBroken(f"the build ({' '.join(spec.build)}) did not make {spec.argv[0]!r} in {spec.cwd}")
    return program


def program_for(scenario: Scenario, cache: dict[str, TargetProgram | str]) -> TargetProgram | str:
    """What runs `scenario` (the built target, or the user's program, not built here), or the reason it cannot
    run here."""
    if scenario.program:
        try:
            return _user_program(scenario)
        except ProgramBroken as e:
            return str(e)
    return _command_program(scenario) if scenario.command else availability(scenario.target, cache)


def cpu_lacks(flags: tuple[str, ...], cpuinfo: Path = Path("/proc/cpuinfo")) -> str | None:
    """Why this CPU cannot run code that needs `flags` (as /proc/cpuinfo names them), or None when it can."""
    if not flags:
        return None
    try:
        present = {flag for line in cpuinfo.read_text().splitlines() if line.startswith("flags")
                   for flag in line.split(":", 1)[1].split()}
    except OSError as exc:
        return f"cannot tell the CPU's features ({cpuinfo}: {exc.strerror})"
    missing = [flag for flag in flags if flag not in present]
    return f"this CPU lacks {', '.join(missing)} (flags in {cpuinfo}), which the scenario requires" if missing else None


def make_plan(scenarios: list[Scenario], methods: list[str] | None = None, repeat: int | None = None) -> Plan:
    if repeat is not None and repeat < 1:
        raise UsageError("--repeat must be at least 1")
    programs: dict[str, TargetProgram | str] = {}
    built: dict[tuple, str | None] = {}
    runs = []
    for scenario in scenarios:
        chosen = tuple(m for m in scenario.methods if not methods or m in methods)
        if not chosen:
            continue
        method_skips = {m: reason for m in chosen if (reason := method_unavailable(m))}
        cpu = cpu_lacks(scenario.requires_cpu)
        if scenario.program:
            program, broken = None, None
            if not cpu:
                try:
                    program = _built_program(scenario, built)
                except ProgramBroken as e:
                    broken = str(e)
            runs += [PlannedRun(scenario, repetition, chosen, program, cpu, error_reason=broken,
                                method_skips=method_skips) for repetition in range(1, (repeat or scenario.repeat) + 1)]
            continue
        program = program_for(scenario, programs)
        skip = program if isinstance(program, str) else cpu
        if not skip and not program.registers(scenario.entry):
            raise ScenarioError(scenario.source, "entry", f"{scenario.entry!r} is not registered in the {scenario.target} target "
                                f"(known: {', '.join(program.entries)})")
        for repetition in range(1, (repeat or scenario.repeat) + 1):
            runs.append(PlannedRun(scenario, repetition, chosen, None if skip else program, skip, method_skips=method_skips))
    if methods and scenarios and not runs:
        used = sorted({m for s in scenarios for m in s.methods}, key=SNAPSHOT_METHODS.index)
        raise UsageError(f"--method {','.join(methods)}: no selected scenario uses it (they use: {', '.join(used)})")
    return Plan(tuple(runs))
