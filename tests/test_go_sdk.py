"""The Go SDK (targets/sdk/go) in a single-scenario program of the kind a user writes: no registry, the secret read
in two parts into two buffers of the program's own, a derived value, a checkpoint without an address, and the
mistakes the SDK must refuse. The built-in Go target (tests/test_go_target.py) covers the registry and the rest of
the conversation. A real program, built here against the SDK through a path replace and driven over fd 3 with no
harness code."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from target_driver import Target, drive, fresh, read_mem, target_env

from remanence.targets import TARGETS_DIR

SDK = TARGETS_DIR / "sdk" / "go"
TIMEOUT = 10.0

GO_MOD = f"""module example.com/sdkdemo

go 1.22

require remanence.dev/remanence v0.0.0

replace remanence.dev/remanence => {SDK}
"""

PROGRAM = r"""
package main

import (
	"os"

	"remanence.dev/remanence"
)

func main() {
	mode := ""
	if len(os.Args) == 2 {
		mode = os.Args[1]
	}
	if mode == "before_start" {
		remanence.Checkpoint("early", 0) // a bug: must panic, saying nothing on fd 3
	}
	n := remanence.Start()
	head := n / 2
	first, second, mask := make([]byte, head), make([]byte, n-head), make([]byte, n)
	remanence.ReadSecret(first)
	if mode == "short" {
		remanence.Done() // the rest of the secret is still unread
	}
	remanence.ReadSecret(second)
	for i := range mask {
		if i < head {
			mask[i] = first[i] ^ 0x5a
		} else {
			mask[i] = second[i-head] ^ 0x5a
		}
	}
	label := "mask"
	if mode == "bad_label" {
		label = "Mask"
	}
	remanence.Derived(label, mask)
	remanence.Notef("parts=2 head=%d", head)
	remanence.Checkpoint("held", remanence.AddressOf(&first[0]))
	remanence.Checkpoint("gone", 0)
	remanence.Done()
}
"""

pytestmark = pytest.mark.skipif(shutil.which("go") is None, reason="needs go")


@pytest.fixture(scope="module")
def program(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("go-sdk")
    (folder / "go.mod").write_text(GO_MOD)
    (folder / "main.go").write_text(PROGRAM)
    binary = folder / "sdk-demo"
    done = subprocess.run(["go", "build", "-o", str(binary), "."], cwd=folder, capture_output=True, text=True,
                          env=dict(os.environ, GOPROXY="off"), timeout=600)
    assert done.returncode == 0, done.stderr
    return binary


def start(program: Path, mode: str, secret_len: int) -> Target:
    env = target_env({"PATH": os.environ.get("PATH", "/usr/bin:/bin")}, secret_len, 16)
    return Target(program, [mode], env, TIMEOUT)


def test_a_single_scenario_program_speaks_the_whole_protocol(program):
    secret, canary = fresh(33), fresh(16)

    def probe(t, name, addr, probes):
        if name == "held":
            probes["first"] = read_mem(t.pid, int(addr, 16), 16)

    run = drive(start(program, "full", len(secret)), secret, canary, probe)
    assert run.rc == 0, run.stderr
    assert run.probes["first"] == secret[:16]       # read straight into the program's own buffer
    assert run.derived == [("mask", bytes(b ^ 0x5A for b in secret))]
    assert run.notes == ["parts=2 head=16"]
    assert [name for name, _ in run.checkpoints] == ["held", "gone"] and run.checkpoints[1][1] == "-"
    assert run.lines[-1] == "done"


@pytest.mark.parametrize("mode, message", [
    ("short", "error the program did not read the whole secret (16 of 32 bytes)"),
    ("bad_label", "error invalid derived label (must be [a-z0-9_]{1,64})"),
])
def test_a_misuse_after_start_is_an_error_line_and_exit_70(program, mode, message):
    t = start(program, mode, 32)
    try:
        assert t.readline() == "ready 1"
        t.send(fresh(16) + fresh(32))
        line = t.readline()
        rc = t.wait()
    finally:
        t.kill()
    assert (line, rc) == (message, 70)


def test_the_sdk_before_start_panics_without_a_word_on_the_channel(program):
    t = start(program, "before_start", 32)
    try:
        line = t.readline()
        rc = t.wait()
    finally:
        t.kill()
    assert line is None and rc == 2, t.stderr      # an unrecovered Go panic exits 2
    assert b"remanence: Checkpoint called before Start" in t.stderr
