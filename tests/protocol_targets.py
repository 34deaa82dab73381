"""The four built-in targets as the runner builds them (remanence.targets.build_target, its cache), and what each
registers and says: the tables the protocol conformance suite (test_protocol_conformance.py) and the per-language
tests (test_<language>_target.py) check the programs against. Targets are started with the environment the harness
gives them and driven by target_driver, with no other harness code."""
from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from target_driver import Run, Target, drive, target_env

from remanence.process import TARGET_PATH
from remanence.targets import PROJECT_ROOT, TARGET_ENV, TargetProgram, TargetUnavailable, build_target, go_tool

TIMEOUT = 60.0   # a deadline for a line or an exit, never a measurement
ADDR_RE = re.compile(r"0x[0-9a-f]+")


@dataclass(frozen=True)
class Language:
    name: str
    scenarios: dict[str, list[str]]            # registered scenario -> its checkpoints, in order
    sample: str                                # an ordinary scenario, for the tests any scenario serves
    eof_scenarios: tuple[str, ...]             # hung up on at every stage
    bogus_reply_scenario: str                  # answered with something other than `continue`
    pieces_scenario: str                       # three checkpoints, fed in pieces
    refused_lengths: tuple[tuple[str, int], ...]          # (scenario, secret length it must refuse with exit 70)
    extreme_length_scenarios: tuple[str, ...] = ()         # take a 1-byte and a 4096-byte secret whole
    notes: dict[str, list[str]] = field(default_factory=dict)   # scenario -> regular expressions over each note
    derived: dict[str, list[tuple[str, int]]] = field(default_factory=dict)   # scenario -> (label, length) sent
    exit_status: dict[str, int] = field(default_factory=dict)  # scenarios that end the process themselves
    # Expected crashes: scenarios killed by this signal once let go from their last checkpoint (no `done`).
    crashes: dict[str, str] = field(default_factory=dict)
    no_address: frozenset[tuple[str, str]] = frozenset()       # (scenario, checkpoint) reported as `-`
    one_address: bool = True                   # every checkpoint of a scenario reports the same address
    key_moves: tuple[str, ...] = ()             # ... except these: the key lives on in another object
    quiet: bool = False                        # a full conversation writes nothing on stdout or stderr
    listed_extras: str | None = None           # --list may add scenarios with this prefix (C's selftest.*)
    length_message: str | None = None          # the exact error line for a refused length ({n}: the length)

    @property
    def scenario_dir(self) -> Path:
        return PROJECT_ROOT / "scenarios" / self.name


C = Language(
    "c",
    scenarios={
        "sodium.live": ["in_use"],
        "sodium.freed": ["in_use", "freed"],
        "sodium.noaccess": ["in_use", "noaccess"],
        "sodium.readonly": ["in_use", "readonly"],
        "sodium.mlock_denied": ["in_use"],
        "malloc.nowipe": ["in_use", "freed"],
        "malloc.memset": ["in_use", "freed"],
        "malloc.memzero": ["in_use", "freed"],
        "stack.nowipe": ["in_use", "returned"],
        "stack.explicit_bzero": ["in_use", "returned"],
        "stdio.copy": ["in_use", "closed", "freed"],
        "sodium.overflow": ["in_use", "past_end"],
        "sodium.overflow.in_bounds": ["in_use", "last_byte"],
        "sodium.underflow": ["in_use", "before_start"],
        "sodium.underflow.intact": ["in_use", "freed"],
        "sodium.readonly_write": ["in_use", "write"],
        "sodium.readonly_write.readwrite": ["in_use", "written"],
        "sodium.noaccess_read": ["in_use", "read"],
        "sodium.noaccess_read.readwrite": ["in_use", "read"],
        "sodium.aes256gcm.state_kept": ["key_loaded", "key_wiped"],
        "sodium.aes256gcm.state_wiped": ["key_loaded", "key_wiped"],
    },
    crashes={"sodium.overflow": "SIGSEGV", "sodium.underflow": "SIGSEGV", "sodium.readonly_write": "SIGSEGV",
             "sodium.noaccess_read": "SIGSEGV"},
    sample="sodium.live",
    eof_scenarios=("sodium.live", "stdio.copy", "stack.nowipe"),
    bogus_reply_scenario="malloc.nowipe",
    pieces_scenario="stdio.copy",
    refused_lengths=(("stack.nowipe", 65), ("stack.explicit_bzero", 4096), ("stdio.copy", 4096)),
    extreme_length_scenarios=("sodium.live", "malloc.nowipe"),
    notes={"sodium.mlock_denied": [r"mlock=denied errno=\d+"]},
    key_moves=("sodium.aes256gcm.state_kept", "sodium.aes256gcm.state_wiped"),
    listed_extras="selftest.",
)

GO = Language(
    "go",
    scenarios={
        "secret.none": ["inside", "after"],
        "secret.return": ["inside", "after"],
        "secret.panic": ["inside", "after"],
        "secret.panic_nodo": ["inside", "after"],
        "secret.panic_value": ["inside", "recovered", "dropped"],
        "secret.panic_value_nodo": ["inside", "recovered", "dropped"],
        "secret.goexit": ["inside", "in_defer", "after"],
        "secret.goexit_nodo": ["inside", "in_defer", "after"],
        "go.aes.cipher_kept": ["key_loaded", "key_wiped"],
        "go.aes.cipher_dropped": ["key_loaded", "key_wiped", "after_gc"],
        "go.aes.cipher_dropped_nodo": ["key_loaded", "key_wiped", "after_gc"],
        "secret.heap": ["before_gc", "after_gc"],
        "secret.heap_nodo": ["before_gc", "after_gc"],
        "secret.map": ["inside", "before_gc", "after_gc"],
        "secret.map_nodo": ["inside", "before_gc", "after_gc"],
        "secret.keepalive": ["inside", "after", "after_gc"],
        "secret.keepalive_nodo": ["inside", "after", "after_gc"],
        "secret.escape": ["inside", "after", "dropped"],
        "secret.global": ["inside", "after"],
        "secret.goroutine": ["inside", "after", "exited"],
        "secret.stack_growth": ["inside", "grown", "after"],
        "secret.stack_growth_nodo": ["inside", "grown", "after"],
        "secret.registers": ["inside", "after"],
        "secret.registers_nodo": ["inside", "after"],
        "secret.signal": ["inside", "after", "after_gc"],
        "secret.signal_nodo": ["inside", "after", "after_gc"],
        "memguard.locked_live": ["in_use"],
        "memguard.overflow": ["in_use", "past_end"],
        "memguard.overflow.in_bounds": ["in_use", "last_byte"],
        "memguard.underflow": ["in_use", "destroy"],
        "memguard.underflow.intact": ["in_use", "destroyed"],
        "memguard.frozen_write": ["in_use", "write"],
        "memguard.frozen_write.melted": ["in_use", "written"],
        "memguard.destroyed": ["in_use", "destroyed"],
        "memguard.enclave": ["loaded", "sealed"],
        "memguard.enclave_open": ["open", "destroyed"],
        "memguard.string_copy": ["in_use", "destroyed"],
        "memguard.purge": ["in_use", "purged"],
        "memguard.safe_exit": ["in_use"],
        "memguard.interrupt": ["in_use"],
        "memguard.with_secret_do": ["loaded", "sealed", "inside", "after"],
        "memguard.finalizer": ["in_use", "collected"],
        "memguard.finalizer_cleanup": ["in_use", "collected"],
        "memguard.from_bytes": ["read", "moved", "plain_copy", "wiped", "destroyed"],
        "memguard.from_bytes_copy": ["read", "copied", "destroyed"],
    },
    sample="secret.return",
    eof_scenarios=("secret.return", "secret.goroutine", "memguard.locked_live"),
    bogus_reply_scenario="secret.none",
    pieces_scenario="secret.escape",
    refused_lengths=(("secret.map", 129), ("secret.map_nodo", 4096), ("secret.registers", 15),
                     ("secret.registers_nodo", 8), ("secret.signal", 1)),
    extreme_length_scenarios=("secret.return", "secret.heap", "secret.stack_growth", "memguard.destroyed"),
    notes={
        "secret.panic_value": [r"gc_cycles=\d+"],
        "secret.panic_value_nodo": [r"gc_cycles=\d+"],
        "secret.goexit": [r"secret_enabled_in_outer_defer=true"],
        "secret.goexit_nodo": [r"secret_enabled_in_outer_defer=false"],
        "secret.heap": [r"gc_cycles=\d+"],
        "go.aes.cipher_dropped": [r"gc_cycles=\d+"],
        "go.aes.cipher_dropped_nodo": [r"gc_cycles=\d+"],
        "secret.heap_nodo": [r"gc_cycles=\d+"],
        "secret.map": [r"gc_cycles=\d+"],
        "secret.map_nodo": [r"gc_cycles=\d+"],
        "secret.keepalive": [r"gc_cycles=\d+"],
        "secret.keepalive_nodo": [r"gc_cycles=\d+"],
        "secret.escape": [r"gc_cycles=\d+"],
        "secret.goroutine": [r"do_panicked=false goroutine_in_secret_mode=false"],
        "secret.stack_growth": [r"stack_moved=true old_stack_clear_at_grown=true"],
        "secret.stack_growth_nodo": [r"stack_moved=true old_stack_clear_at_grown=false"],
        "secret.registers": [r"register_sets=general\+sse\S*"],
        "secret.registers_nodo": [r"register_sets=general\+sse\S*"],
        "secret.signal": [r"register_sets=general\+sse\S*"],
        "secret.signal_nodo": [r"register_sets=general\+sse\S*"],
        "memguard.finalizer": [r"gc_cycles=\d+ data_mapped=true"],
        "memguard.finalizer_cleanup": [r"gc_cycles=\d+ data_mapped=false"],
        "memguard.from_bytes": [r"src_wiped=true"],
    },
    # Scenarios that end the process themselves after `done`, and their status.
    exit_status={"memguard.safe_exit": 0, "memguard.interrupt": 1},
    crashes={"memguard.overflow": "SIGABRT", "memguard.underflow": "SIGABRT", "memguard.frozen_write": "SIGABRT"},
    no_address=frozenset({("secret.map", "before_gc"), ("secret.map", "after_gc"), ("secret.map_nodo", "before_gc"),
                          ("secret.map_nodo", "after_gc"), ("memguard.with_secret_do", "sealed")}),
    one_address=False,
)

NODE = Language(
    "node",
    scenarios={
        "node.sodium.live": ["in_use"],
        "node.sodium.noaccess": ["in_use", "noaccess"],
        "node.sodium.freed": ["in_use", "freed", "after_gc"],
        "node.sodium.dropped": ["in_use", "collected", "finalized"],
        "node.buffer.alloc": ["in_use", "wiped"],
        "node.buffer.dropped": ["in_use", "after_gc"],
        "node.string.hex": ["converted", "wiped", "dropped"],
        "node.string.base64": ["converted", "wiped", "dropped"],
        "node.string.latin1": ["converted", "wiped", "dropped"],
        "node.sodium.readonly_write": ["in_use", "write"],
        "node.sodium.readonly_write.readwrite": ["in_use", "written"],
        "node.sodium.noaccess_read": ["in_use", "read"],
        "node.sodium.noaccess_read.readwrite": ["in_use", "read"],
    },
    crashes={"node.sodium.readonly_write": "SIGSEGV", "node.sodium.noaccess_read": "SIGSEGV"},
    sample="node.sodium.live",
    eof_scenarios=("node.sodium.live", "node.sodium.freed", "node.buffer.alloc"),
    bogus_reply_scenario="node.sodium.live",
    pieces_scenario="node.sodium.freed",
    refused_lengths=(),
    extreme_length_scenarios=("node.sodium.live", "node.sodium.freed", "node.buffer.alloc", "node.string.hex"),
    notes={
        "node.sodium.freed": [r"detached_length=0 still_mapped=true", r"gc_rounds=\d+"],
        "node.sodium.dropped": [r"still_mapped_after_gc_without_turn=true", r"gc_rounds=\d+"],
        "node.buffer.dropped": [r"gc_rounds=\d+"],
        "node.string.hex": [r"gc_rounds=\d+"],
        "node.string.base64": [r"gc_rounds=\d+"],
        "node.string.latin1": [r"gc_rounds=\d+"],
        "node.sodium.noaccess_read.readwrite": [r"read=\d+"],
    },
)

PYTHON = Language(
    "python",
    scenarios={
        "py.privatekey.dropped": ["in_use", "dropped"],
        "py.bytearray.wiped": ["in_use", "wiped", "dropped"],
        "py.bytearray.bytes_copy": ["in_use", "wiped", "dropped"],
        "py.kx.xchacha": ["exchanged", "dropped"],
    },
    sample="py.kx.xchacha",
    eof_scenarios=("py.kx.xchacha", "py.bytearray.wiped"),
    bogus_reply_scenario="py.bytearray.bytes_copy",
    pieces_scenario="py.bytearray.bytes_copy",
    # Every Python scenario needs exactly 32 bytes (PyNaCl's key size).
    refused_lengths=tuple((s, n) for s in ("py.bytearray.bytes_copy", "py.bytearray.wiped", "py.kx.xchacha",
                                           "py.privatekey.dropped") for n in (16, 33)),
    length_message="error this scenario needs a 32-byte secret, got {n}",
    derived={
        "py.privatekey.dropped": [("box_shared_key", 32)],
        "py.bytearray.wiped": [("kx_secret_key", 32)],
        "py.kx.xchacha": [("client_secret_key", 32), ("session_rx", 32), ("session_tx", 32),
                          ("plaintext_c2s", 48), ("plaintext_s2c", 48)],
    },
    quiet=True,
)

LANGUAGES = {spec.name: spec for spec in (C, GO, NODE, PYTHON)}


def program(language: str) -> TargetProgram:
    """The target as the runner builds it (cached); a skip saying why when this machine cannot build it."""
    try:
        return _built(language)
    except TargetUnavailable as e:
        pytest.skip(f"{language} target unavailable here: {e}")


@functools.lru_cache(maxsize=None)  # one look at the build cache per test process
def _built(language: str) -> TargetProgram:
    return build_target(language)


def harness_env(language: str, secret_len: int, canary_len: int, **overrides) -> dict[str, str]:
    """The fixed environment the harness gives a target, plus the protocol's lengths (see target_env)."""
    base = {"PATH": TARGET_PATH, "LC_ALL": "C", **TARGET_ENV[language]}
    return target_env(base, secret_len, canary_len, **overrides)


def start(command: tuple[str, ...] | list[str], argv: list[str], env: dict[str, str]) -> Target:
    return Target(Path(command[0]), [*command[1:], *argv], env, TIMEOUT)


def run_listing(command, *argv: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """The target run without a control channel (for --list and usage errors)."""
    return subprocess.run([*command, *argv], capture_output=True, text=True, timeout=TIMEOUT, env=env)


def converse(language: str, scenario: str, secret: bytes, canary: bytes, on_checkpoint=None) -> Run:
    """A full conversation with the built target of `language` (see target_driver.drive)."""
    t = start(program(language).command, [scenario], harness_env(language, len(secret), len(canary)))
    return drive(t, secret, canary, on_checkpoint, crash=scenario in LANGUAGES[language].crashes)


# ---------------------------------------------------------------- a copy that registers one name twice


def c_duplicate(folder: Path) -> tuple[tuple[str, ...], str]:
    """(command, duplicated name): `make dup`, the C target built with a second registration."""
    r = subprocess.run(["make", "-C", str(PROJECT_ROOT / "targets" / "c"), f"OUT={folder}", "dup"],
                       capture_output=True, text=True)
    assert r.returncode == 0, f"make dup failed:\n{r.stdout}\n{r.stderr}"
    return (str(folder / "remanence-target-c-dup"),), "sodium.live"


def go_duplicate(folder: Path) -> tuple[tuple[str, ...], str]:
    """The Go target built with the build tag that adds a second registration."""
    binary = folder / "remanence-target-go-dup"
    r = subprocess.run([go_tool(), "build", "-trimpath", "-tags", "remanence_duplicate_for_test", "-o", str(binary),
                        "."], cwd=PROJECT_ROOT / "targets" / "go", capture_output=True, text=True,
                       env=dict(os.environ, GOEXPERIMENT="runtimesecret", CGO_ENABLED="0"))
    assert r.returncode == 0, f"go build failed:\n{r.stdout}\n{r.stderr}"
    return (str(binary),), "secret.return"


def node_duplicate(folder: Path) -> tuple[tuple[str, ...], str]:
    """A script that loads the built target.js (its registrations run at load) and registers a name again."""
    node, expose_gc, target_js = program("node").command
    script = folder / "dup_register_for_test.js"
    script.write_text(f"'use strict'\nconst t = require({str(target_js)!r})\nt.register('node.sodium.live', () => {{}})\n")
    return (node, expose_gc, str(script)), "node.sodium.live"


def install_python_sdk(folder: Path) -> None:
    """remanence.sdk beside a copy of target.py, as the harness installs it (the venv lacks the harness)."""
    package = folder / "remanence"
    package.mkdir(exist_ok=True)
    (package / "__init__.py").write_text("")
    shutil.copyfile(PROJECT_ROOT / "harness" / "sdk.py", package / "sdk.py")


def python_duplicate(folder: Path) -> tuple[tuple[str, ...], str]:
    """A copy of target.py with one more registration of an existing name before main runs, in the built venv."""
    python, *flags, target_py = program("python").command
    source = Path(target_py).read_text()
    guard = '\nif __name__ == "__main__":'
    assert source.count(guard) == 1
    install_python_sdk(folder)
    (folder / "target.py").write_text(source.replace(guard, '\n@scenario("py.kx.xchacha")\ndef _again():\n    pass\n\n'
                                                            + guard))
    return (python, *flags, str(folder / "target.py")), "py.kx.xchacha"


DUPLICATES = {"c": c_duplicate, "go": go_duplicate, "node": node_duplicate, "python": python_duplicate}
