"""From scenarios to a plan: which runs happen, with which target binary, and what this machine must skip."""
from __future__ import annotations

import fnmatch
import os
import sys
from dataclasses import dataclass, field

from .command import CommandUnavailable, resolve_program
from .scenario import COMMAND_TARGET, PROGRAM_TARGET, PYTHON_PLACEHOLDER, CommandSpec, Scenario, ScenarioError
from .snapshot import method_unavailable
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


def select(scenarios: list[Scenario], patterns: list[str]) -> list[Scenario]:
    """Scenarios whose name matches any glob pattern (all when none given); a pattern matching nothing is an error."""
    if not patterns:
        return scenarios
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(s.name, pattern) for s in scenarios):
            raise UsageError(f"no scenario matches {pattern!r}")
    return [s for s in scenarios if any(fnmatch.fnmatchcase(s.name, p) for p in patterns)]


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
        return TargetProgram(COMMAND_TARGET, (resolve_program(scenario.command), *scenario.command.argv[1:]),
                             (scenario.entry,))
    except CommandUnavailable as e:
        return str(e)


class ProgramBroken(Exception):
    """A user's test program that cannot be built or found: its scenario's verdicts are ERRORs."""


def program_argv(scenario: Scenario) -> tuple[str, ...]:
    """A program target's argv with the interpreter running remanence in place of {python}."""
    return tuple(a.replace(PYTHON_PLACEHOLDER, sys.executable) for a in scenario.program.argv)


def _user_program(scenario: Scenario, built: dict[tuple, str | None]) -> TargetProgram:
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
    argv = program_argv(scenario)
    try:
        program = resolve_program(CommandSpec(argv, spec.cwd, "stdin"))
    except CommandUnavailable as e:
        raise ProgramBroken(str(e)) from None
    return TargetProgram(PROGRAM_TARGET, (program, *argv[1:]), (), spec.cwd, tuple(spec.env.items()))


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
        if scenario.program:
            try:
                program, broken = _user_program(scenario, built), None
            except ProgramBroken as e:
                program, broken = None, str(e)
            runs += [PlannedRun(scenario, repetition, chosen, program, error_reason=broken, method_skips=method_skips)
                     for repetition in range(1, (repeat or scenario.repeat) + 1)]
            continue
        program = _command_program(scenario) if scenario.command else availability(scenario.target, programs)
        skip = program if isinstance(program, str) else None
        if not skip and scenario.entry not in program.entries:
            raise ScenarioError(scenario.source, "entry", f"{scenario.entry!r} is not registered in the {scenario.target} target "
                                f"(known: {', '.join(program.entries)})")
        for repetition in range(1, (repeat or scenario.repeat) + 1):
            runs.append(PlannedRun(scenario, repetition, chosen, None if skip else program, skip, method_skips))
    return Plan(tuple(runs))
