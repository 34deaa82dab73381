"""`remanence doctor`: what this machine allows, and what each missing piece disables.

Each check gives a status (ok, limited, missing), a detail and what it disables, as `affects` tokens
(`method:gcore`, `target:go`) and as words. The exit code answers "can this machine run the scenario suite
fully?": 3 when a check that is not ok disables a method or target language some scenario (under
--scenarios) uses, else 0, so pieces no scenario needs yet (node, for the planned Node targets) are
reported without failing the check.
"""
from __future__ import annotations

import importlib.util
import os
import platform
import resource
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .results import EXIT_INCONCLUSIVE, EXIT_OK
from .snapshot import CAP_SYS_PTRACE, CAP_SYS_RESOURCE, METHODS, has_capability, method_unavailable, ptrace_scope
from .snapshot.methods import method as snapshot_method
from .targets import (MIN_GO, RUNTIME_SECRET_PLATFORMS, TargetUnavailable, _go_problem, _node_problem, build_target,
                      go_tool)

OK, LIMITED, MISSING = "ok", "limited", "missing"
_TOKEN_WORDS = {"method": "the {} snapshot method", "target": "{} scenarios"}
_LANGUAGE_NAMES = {"c": "C", "go": "Go", "node": "Node.js", "python": "Python"}


@dataclass
class Check:
    check: str
    status: str
    detail: str
    affects: list[str] = field(default_factory=list)    # method:NAME / target:LANG, when status is not ok
    disables: str = ""                                  # the same, in words
    blocks_suite: bool = False                          # a scenario under --scenarios needs what it disables


def _words(tokens: list[str], extra: str = "") -> str:
    words = [_TOKEN_WORDS[kind].format(_LANGUAGE_NAMES.get(name, name) if kind == "target" else name)
             for kind, name in (t.split(":", 1) for t in tokens)]
    return "; ".join(words) + (f" ({extra})" if extra else "")


def _check(name: str, status: str, detail: str, affects: list[str] = (), extra: str = "") -> Check:
    affects = [] if status == OK else list(affects)
    return Check(name, status, detail, affects, _words(affects, extra) if affects else "")


def _first_line(command: list[str]) -> str | None:
    try:
        run = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = (run.stdout or run.stderr).strip().splitlines()
    return lines[0].strip() if run.returncode == 0 and lines else None


def check_ptrace() -> Check:
    procmem, exit_ = method_unavailable("procmem"), method_unavailable("exit")
    scope, privileged = ptrace_scope(), has_capability(CAP_SYS_PTRACE)
    yama = "no Yama LSM (classic same-uid rules)" if not Path("/proc/sys/kernel/yama/ptrace_scope").exists() \
        else f"Yama ptrace_scope={scope}"
    detail = f"{yama}; CAP_SYS_PTRACE {'yes' if privileged else 'no'}"
    if procmem or exit_:
        lost = [m for m in METHODS if "ptrace" in snapshot_method(m).needs and method_unavailable(m)]
        return _check("ptrace", MISSING, f"{detail}: {procmem or exit_}", [f"method:{m}" for m in lost])
    if scope >= 1 and not privileged:
        return _check("ptrace", LIMITED, f"{detail}: the harness may read its own children, but gdb cannot attach "
                      "to a process it did not start (run as root or grant CAP_SYS_PTRACE)",
                      ["method:gcore", "method:gcore-all"])
    return _check("ptrace", OK, detail + ": /proc/PID/mem, ptrace exit stops and gdb attach all allowed")


def check_core_pattern() -> Check:
    from .snapshot.kernelcore import kernel_core_unavailable, read_core_pattern
    reason = kernel_core_unavailable()
    try:
        pattern, uses_pid = read_core_pattern()
        detail = f"core_pattern={pattern!r}" + (", core_uses_pid=1" if uses_pid else "")
    except OSError:
        detail = "core_pattern unreadable"
    if reason:
        return _check("core_pattern", MISSING, f"{detail}: {reason}", ["method:kernel-core"])
    return _check("core_pattern", OK, detail + ": kernel cores land in a file the harness can find")


def check_core_limit() -> Check:
    soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
    text = lambda v: "unlimited" if v == resource.RLIM_INFINITY else str(v)  # noqa: E731
    cap = has_capability(CAP_SYS_RESOURCE)
    detail = f"RLIMIT_CORE soft {text(soft)}, hard {text(hard)}; CAP_SYS_RESOURCE {'yes' if cap else 'no'}"
    if hard == resource.RLIM_INFINITY or cap:
        return _check("core limit", OK, detail + ": the harness raises the target's limit to unlimited")
    if hard == 0:
        return _check("core limit", MISSING, detail + ": a hard limit of 0 cannot be raised without CAP_SYS_RESOURCE, "
                      "so no kernel core is written (`ulimit -c unlimited` before the run)", ["method:kernel-core"])
    return _check("core limit", LIMITED, detail + f": cores are cut at {text(hard)} bytes", ["method:kernel-core"])


def check_gdb() -> Check:
    gdb = shutil.which("gdb")
    if gdb is None:
        return _check("gdb", MISSING, "gdb not found on PATH (install Debian's gdb)", ["method:gcore", "method:gcore-all"])
    version = _first_line([gdb, "--version"]) or "gdb (version unknown)"
    probe = _first_line([gdb, "-nx", "-batch", "-ex", "show dump-excluded-mappings"])
    if probe is None:
        return _check("gdb", LIMITED, f"{version} at {gdb}: no `set dump-excluded-mappings` (gdb too old), so "
                      "gcore-all cannot dump MADV_DONTDUMP pages", ["method:gcore-all"])
    return _check("gdb", OK, f"{version} at {gdb}; dump-excluded-mappings supported")


def check_swap() -> Check:
    reason = method_unavailable("swap")
    if reason:
        return _check("swap", MISSING, reason, ["method:swap"])
    return _check("swap", OK, "a private swap file swapped on, a page paged out with process_madvise(MADV_PAGEOUT) "
                  "and read back from it with O_DIRECT")


def check_c_toolchain() -> Check:
    found = {tool: shutil.which(tool) for tool in ("gcc", "make", "pkg-config")}
    missing = [t for t in ("gcc", "make") if not found[t]]
    if missing:
        return _check("C toolchain", MISSING, f"{', '.join(missing)} not found on PATH", ["target:c"])
    return _check("C toolchain", OK, _first_line([found["gcc"], "--version"]) or "gcc")


def check_libsodium() -> Check:
    version = None
    if pkg := shutil.which("pkg-config"):
        version = _first_line([pkg, "--modversion", "libsodium"])
    header = Path("/usr/include/sodium.h").exists()
    if version is None and not header:
        return _check("libsodium", MISSING, "libsodium headers not found (install Debian's libsodium-dev)", ["target:c"])
    return _check("libsodium", OK, f"libsodium {version}" if version else "sodium.h present (no pkg-config version)")


def check_go() -> Check:
    go = go_tool()
    problem, version = _go_problem(go)
    via = " ($REMANENCE_GO)" if os.environ.get("REMANENCE_GO") else ""
    if problem:
        return _check("go", MISSING, problem, ["target:go"], "runtime/secret and memguard")
    return _check("go", OK, f"{version} at {go}{via}: runtime/secret supported (GOEXPERIMENT=runtimesecret; needs "
                  f"Go >= {MIN_GO[0]}.{MIN_GO[1]} on {' or '.join(RUNTIME_SECRET_PLATFORMS)})")


def check_target(language: str, prerequisites: list[Check]) -> Check:
    name = f"{_LANGUAGE_NAMES[language]} target build"
    if failed := [c.check for c in prerequisites if c.status != OK]:
        return _check(name, MISSING, f"not built: {', '.join(failed)} missing (see above)", [f"target:{language}"])
    try:
        program = build_target(language)
    except TargetUnavailable as e:
        return _check(name, MISSING, str(e), [f"target:{language}"])
    return _check(name, OK, f"built {' '.join(program.command)} ({len(program.entries)} scenario entries)")


def check_node() -> Check:
    problem, version = _node_problem()
    if problem:
        return _check("node", MISSING, problem, ["target:node"], "sodium-native from npm")
    return _check("node", OK, f"node {version} at {shutil.which('node')}, npm at {shutil.which('npm')}")


def check_python_venv() -> Check:
    """The Python target gets a venv of its own with PyNaCl from PyPI (see check_target for the install)."""
    if importlib.util.find_spec("ensurepip") is None:   # Debian splits it out: python3-venv
        return _check("python venv", MISSING, f"{sys.executable} cannot make venvs with pip (install python3-venv)",
                      ["target:python"], "PyNaCl")
    return _check("python venv", OK, f"{sys.executable} (Python {platform.python_version()}) makes the target's venv")


def run_checks(build: bool = True) -> list[Check]:
    c_needs = [check_c_toolchain(), check_libsodium()]
    checks = [check_ptrace(), check_core_pattern(), check_core_limit(), check_gdb(), check_swap(), *c_needs]
    if build:
        checks.append(check_target("c", c_needs))
    go = check_go()
    checks.append(go)
    if build:
        checks.append(check_target("go", [go]))
    node = check_node()
    checks.append(node)
    if build:
        checks.append(check_target("node", [node]))
    venv = check_python_venv()
    checks.append(venv)
    if build:
        checks.append(check_target("python", [venv]))
    return checks


def suite_needs(scenarios: list) -> set[str]:
    """The tokens a set of scenarios needs: method:NAME and target:LANG."""
    return {f"method:{m}" for s in scenarios for m in s.methods} | {f"target:{s.target}" for s in scenarios}


def diagnose(scenarios: list, build: bool = True) -> tuple[list[Check], int]:
    needs = suite_needs(scenarios)
    checks = run_checks(build)
    for c in checks:
        c.blocks_suite = bool(set(c.affects) & needs)
    return checks, EXIT_INCONCLUSIVE if any(c.blocks_suite for c in checks) else EXIT_OK


def as_json(checks: list[Check], exit_code: int, scenarios_dir: Path, scenarios: list) -> dict:
    needs = suite_needs(scenarios)
    return {"checks": [asdict(c) for c in checks],
            "suite": {"scenarios": str(scenarios_dir), "count": len(scenarios),
                      "needs": sorted(needs, key=lambda t: (t.split(":")[0], METHODS.index(t[7:]) if t.startswith("method:") else 0, t))},
            "exit_code": exit_code}

