"""From scenarios to a plan: which runs happen, with which target binary, and what this machine must skip."""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

from .command import CommandUnavailable, resolve_program
from .scenario import COMMAND_TARGET, Scenario, ScenarioError
from .snapshot import method_unavailable
from .targets import TargetProgram, TargetUnavailable, build_target


class UsageError(ValueError):
    """The command line asks for something that cannot be planned (exit code 2)."""


@dataclass(frozen=True)
class PlannedRun:
    scenario: Scenario
    repetition: int                      # 1-based
    methods: tuple[str, ...]
    program: TargetProgram | None        # None when the run is skipped
    skip_reason: str | None = None
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


def make_plan(scenarios: list[Scenario], methods: list[str] | None = None, repeat: int | None = None) -> Plan:
    if repeat is not None and repeat < 1:
        raise UsageError("--repeat must be at least 1")
    programs: dict[str, TargetProgram | str] = {}
    runs = []
    for scenario in scenarios:
        chosen = tuple(m for m in scenario.methods if not methods or m in methods)
        if not chosen:
            continue
        program = _command_program(scenario) if scenario.command else availability(scenario.target, programs)
        skip = program if isinstance(program, str) else None
        if not skip and scenario.entry not in program.entries:
            raise ScenarioError(scenario.source, "entry", f"{scenario.entry!r} is not registered in the {scenario.target} target "
                                f"(known: {', '.join(program.entries)})")
        method_skips = {m: reason for m in chosen if (reason := method_unavailable(m))}
        for repetition in range(1, (repeat or scenario.repeat) + 1):
            runs.append(PlannedRun(scenario, repetition, chosen, None if skip else program, skip, method_skips))
    return Plan(tuple(runs))
