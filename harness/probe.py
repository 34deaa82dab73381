"""`remanence probe -- CMD ARGS`: a command-target scenario made from the command line.

The probe is written as a scenario file next to its reports (so an ad-hoc probe can become a CI scenario
unchanged) and loaded by the same strict reader as every other scenario.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .model import Expect
from .plan import UsageError
from .command import CommandUnavailable, resolve_program, script_argument
from .paths import inside
from .scenario import (COMMAND_TARGET, CommandSpec, EXIT_CHECKPOINT, LIVE_METHODS, SECRET_FILE_PLACEHOLDER,
                       TRIGGER_KINDS, Scenario, ScenarioError, load_scenario, name_problem,
                       seconds_problem)

DEFAULT_TRIGGER = "idle=1"
WHY = {Expect.ABSENT: "the program claims to wipe the secret once it is done with it",
       Expect.PRESENT: "the program still holds the secret here",
       Expect.OBSERVE: "an exploratory probe: report what is there"}


@dataclass(frozen=True)
class ProbeRequest:
    argv: list[str]
    delivery: str                     # stdin | prompt | file
    prompt: str = ""
    triggers: tuple[str, ...] | None = None   # None: idle=1 (only exit when the methods are only exit)
    in_use: str | None = None         # a trigger at which the secret must be present: the strongest control
    expect: Expect = Expect.ABSENT
    methods: tuple[str, ...] = LIVE_METHODS[:2]
    secret_form: str = "password"
    secret_length: int = 24
    newline: bool = True
    env: tuple[str, ...] = ()         # NAME=VALUE, or NAME to copy from our environment
    cwd: Path = Path(".")
    timeout_s: float = 60.0
    repeat: int = 1
    name: str | None = None
    follow: bool = False              # snapshot every process of the program's tree


def probe_name(request: ProbeRequest) -> str:
    """probe.<program>, or probe.<interpreter>.<script> when the program is an interpreter running a file."""
    words = [Path(request.argv[0]).name]
    if (script := script_argument(request.argv, request.cwd)) is not None:
        words.append(Path(script).name)
    return request.name or "probe." + re.sub(r"[^A-Za-z0-9_.-]", "_", ".".join(words))


def scenario_file_name(request: ProbeRequest) -> str:
    return probe_name(request) + ".toml"


def _toml(value) -> str:
    """A TOML value: JSON's string, number and boolean syntax is valid TOML."""
    return json.dumps(value)


def _trigger_table(text: str) -> str:
    kind, sep, value = text.partition("=")
    if not sep or kind not in TRIGGER_KINDS:
        raise UsageError(f"--at {text!r}: expected output=REGEX, delay=SECONDS, idle=SECONDS or exit")
    if kind == "output":
        return f"{{ output = {_toml(value)} }}"
    try:
        seconds = float(value)
    except ValueError:
        raise UsageError(f"--at {text!r}: {value!r} is not a number of seconds") from None
    if problem := seconds_problem(seconds):
        raise UsageError(f"--at {text!r}: {problem}")
    return f"{{ {kind} = {seconds!r} }}"


def _env(entries: tuple[str, ...]) -> dict[str, str]:
    env = {}
    for entry in entries:
        name, sep, value = entry.partition("=")
        if not sep:
            if name not in os.environ:
                raise UsageError(f"--env {name}: not set in this environment")
            value = os.environ[name]
        env[name] = value
    return env


def _portable_argv(request: ProbeRequest) -> list[str]:
    """argv with a program given by absolute path inside the working folder made relative to it (./login), so the
    scenario file still works where the project is checked out elsewhere; system programs (/usr/bin/...) stay."""
    program = Path(request.argv[0])
    cwd = request.cwd.resolve()
    if program.is_absolute() and program.resolve().is_relative_to(cwd):
        return ["./" + str(program.resolve().relative_to(cwd)), *request.argv[1:]]
    return list(request.argv)


def scenario_text(request: ProbeRequest, folder: Path) -> str:
    """The scenario file equivalent to a probe request, to be written into `folder`: its paths (cwd) are relative
    to that folder, so the file joins a suite unchanged on another machine."""
    if not request.argv:
        raise UsageError("probe: give the program to run after --, e.g. remanence probe --prompt 'Password:' -- ./login")
    if request.delivery == "file" and not any(SECRET_FILE_PLACEHOLDER in a for a in request.argv):
        raise UsageError(f"probe --file: put {SECRET_FILE_PLACEHOLDER} in the command where the program expects the file's path")
    at_triggers = [m for m in request.methods if m != "exit"]   # every method but exit snapshots at triggers
    given = request.triggers
    if given is None:   # --method exit alone snapshots only at the exit
        given = (DEFAULT_TRIGGER,) if at_triggers else ()
    if "exit" in given[:-1]:
        raise UsageError("probe: --at exit must be the last --at")
    # --at exit and --method exit ask for the same snapshot: the exit checkpoint.
    exit_wanted = "exit" in given or "exit" in request.methods
    triggers = [t for t in given if t != "exit"]
    if (triggers or request.in_use) and not at_triggers:
        what = "--at " + " --at ".join(triggers) if triggers else "--in-use " + request.in_use
        raise UsageError(f"probe: {what}: --method {','.join(request.methods)} snapshots only at the program's exit; "
                         f"add a live method ({', '.join(LIVE_METHODS)}) for the other triggers")
    methods = at_triggers + (["exit"] if exit_wanted else [])
    lines = [f"name = {_toml(probe_name(request))}",
             f"description = {_toml('remanence probe -- ' + ' '.join(request.argv))}",
             f'target = "{COMMAND_TARGET}"',
             f"methods = {_toml(methods)}",
             f"timeout = {request.timeout_s!r}",
             f"repeat = {request.repeat}",
             *(["follow = true"] if request.follow else []),
             "",
             "[secret]",
             f"form = {_toml(request.secret_form)}",
             f"length = {request.secret_length}",
             "",
             "[command]",
             f"argv = {_toml(_portable_argv(request))}",
             f"cwd = {_toml(os.path.relpath(request.cwd.resolve(), folder.resolve()))}",
             f"delivery = {_toml(request.delivery)}"]
    if request.delivery == "prompt":
        lines.append(f"prompt = {_toml(request.prompt)}")
    if not request.newline:
        lines.append("newline = false")
    if env := _env(request.env):
        lines.append("env = { " + ", ".join(f"{k} = {_toml(v)}" for k, v in env.items()) + " }")
    expectation = [f"expect = {_toml(request.expect.value)}", f"why = {_toml(WHY[request.expect])}"]
    if request.in_use:
        lines += ["", "[[checkpoints]]", 'name = "in_use"', f"trigger = {_trigger_table(request.in_use)}",
                  'expect = "present"', f"why = {_toml(WHY[Expect.PRESENT])}"]
    for i, trigger in enumerate(triggers, 1):
        lines += ["", "[[checkpoints]]", f"name = \"at{i}\"", f"trigger = {_trigger_table(trigger)}", *expectation]
    if exit_wanted:
        lines += ["", "[[checkpoints]]", f"name = \"{EXIT_CHECKPOINT}\"", *expectation]
    return "\n".join(lines) + "\n"


def probe_scenario(request: ProbeRequest, out: Path) -> Scenario:
    """Write the probe's scenario file into `out` (reports point at it; it can join a suite as it is) and load it."""
    if request.name is not None and (problem := name_problem(request.name)):
        raise UsageError(f"probe --name: {problem}")
    text = scenario_text(request, out)
    try:   # a program that does not exist is the user's mistake (exit 2), found before anything is written
        resolve_program(CommandSpec(tuple(request.argv), request.cwd.resolve(), request.delivery))
    except CommandUnavailable as e:
        raise UsageError(f"probe: {e}") from None
    path = inside(out, scenario_file_name(request))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    try:
        return load_scenario(path)
    except ScenarioError as e:
        raise UsageError(f"probe: {e}") from None
