"""The four SDKs (targets/sdk/c, targets/sdk/go, targets/sdk/node, remanence.sdk) in the same single-scenario
program of the kind a user writes: no registry, the secret read in two parts into two buffers of the program's own,
a derived value, a note, a checkpoint without an address, and the mistakes each SDK must refuse. The built-in
targets, written on these SDKs, cover the registry and the rest of the protocol (test_protocol_conformance.py).
Real programs, built here on the SDKs and driven over fd 3 with no harness code; what only one SDK's API does is in
test_sdk_python.py and test_node_sdk.py."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
from target_driver import Target, drive, fresh, read_mem, target_env

from remanence.targets import TARGETS_DIR

TIMEOUT = 10.0

C_PROGRAM = r"""
#include "remanence.h"
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv)
{
    const char *mode = argc == 2 ? argv[1] : "";
    if (strcmp(mode, "before_start") == 0)
        rem_checkpoint("early", NULL);              /* a bug: must abort, saying nothing on fd 3 */
    size_t n = rem_start(), head = n / 2;
    unsigned char *first = malloc(head), *second = malloc(n - head), *mask = malloc(n);
    rem_read_secret(first, head);
    if (strcmp(mode, "short") == 0)
        rem_done();                                 /* the rest of the secret is still unread */
    rem_read_secret(second, n - head);
    for (size_t i = 0; i < n; i++)
        mask[i] = (i < head ? first[i] : second[i - head]) ^ 0x5a;
    rem_derived(strcmp(mode, "bad_label") == 0 ? "Mask" : "mask", mask, n);
    rem_note("parts=2 head=%zu", head);
    rem_checkpoint("held", first);
    rem_checkpoint("gone", NULL);
    rem_done();
}
"""

GO_MOD = f"""module example.com/sdkdemo

go 1.22

require remanence.dev/remanence v0.0.0

replace remanence.dev/remanence => {TARGETS_DIR / "sdk" / "go"}
"""

GO_PROGRAM = r"""
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


def build_c(folder: Path) -> Path:
    sdk = TARGETS_DIR / "sdk" / "c"
    (folder / "main.c").write_text(C_PROGRAM)
    subprocess.run(["cc", "-std=gnu11", "-O2", "-Wall", "-Wextra", "-Werror", f"-I{sdk}", "-o", str(folder / "sdk-demo"),
                    str(folder / "main.c"), str(sdk / "remanence.c")], check=True)
    return folder / "sdk-demo"


def build_go(folder: Path) -> Path:
    (folder / "go.mod").write_text(GO_MOD)
    (folder / "main.go").write_text(GO_PROGRAM)
    done = subprocess.run(["go", "build", "-o", str(folder / "sdk-demo"), "."], cwd=folder, capture_output=True,
                          text=True, env=dict(os.environ, GOPROXY="off"), timeout=600)
    assert done.returncode == 0, done.stderr
    return folder / "sdk-demo"


PYTHON_PROGRAM = r"""
import sys

from remanence import sdk

mode = sys.argv[1] if len(sys.argv) == 2 else ""
if mode == "before_start":
    sdk.checkpoint("early", None)                   # a bug: must stop the program, saying nothing on fd 3
n = sdk.start()
head = n // 2
first, second = bytearray(head), bytearray(n - head)
sdk.read_secret_into(first)
if mode == "short":
    sdk.done()                                      # the rest of the secret is still unread
sdk.read_secret_into(second)
mask = bytes(b ^ 0x5A for b in first + second)
sdk.derived("Mask" if mode == "bad_label" else "mask", mask)
sdk.note(f"parts=2 head={head}")
sdk.checkpoint("held", sdk.address_of(first))
sdk.checkpoint("gone", None)
sdk.done()
"""

NODE_PROGRAM = r"""
'use strict'
const sdk = require(process.env.SDK_UNDER_TEST)
const mode = process.argv.length === 3 ? process.argv[2] : ''
if (mode === 'before_start') sdk.checkpoint('early', null)   // a bug: must stop the program, saying nothing on fd 3
const n = sdk.start()
const head = Math.floor(n / 2)
const first = Buffer.alloc(head)
const second = Buffer.alloc(n - head)
const address = sdk.locate(first)                 // found before the secret is in it
sdk.readSecret(first, 0, head)
if (mode === 'short') sdk.done()                  // the rest of the secret is still unread
sdk.readSecret(second, 0, n - head)
const mask = Buffer.alloc(n)
for (let i = 0; i < n; i++) mask[i] = (i < head ? first[i] : second[i - head]) ^ 0x5a
sdk.derived(mode === 'bad_label' ? 'Mask' : 'mask', mask)
sdk.note({ parts: 2, head })
sdk.checkpoint('held', address)
sdk.checkpoint('gone', null)
sdk.done()
"""


def build_python(folder: Path) -> tuple[str, ...]:
    (folder / "program.py").write_text(PYTHON_PROGRAM)
    return sys.executable, "-s", str(folder / "program.py")


def build_node(folder: Path) -> tuple[str, ...]:
    (folder / "program.js").write_text(NODE_PROGRAM.replace("process.env.SDK_UNDER_TEST",
                                                            json.dumps(str(TARGETS_DIR / "sdk" / "node"))))
    return shutil.which("node"), "--expose-gc", str(folder / "program.js")


@dataclass(frozen=True)
class Sdk:
    tool: str | None                        # what builds or runs the program (None: this interpreter)
    build: Callable[[Path], tuple[str, ...]]  # writes the program into a folder; its command
    short_read: str                         # the error line when the program stops before the whole secret
    bad_label: str                          # the error line for a derived label outside [a-z0-9_]{1,64}
    before_start_status: Callable[[int], bool]   # how a call before start ends: its exit status…
    before_start_message: bytes                  # …and what it says on stderr


SDKS = {
    "c": Sdk("cc", lambda folder: (str(build_c(folder)),),
             "error the program did not read the whole secret (16 of 32 bytes)",
             "error invalid derived label (must be [a-z0-9_]{1,64})",
             lambda rc: rc < 0, b"rem_checkpoint() called before rem_start()"),
    "go": Sdk("go", lambda folder: (str(build_go(folder)),),
              "error the program did not read the whole secret (16 of 32 bytes)",
              "error invalid derived label (must be [a-z0-9_]{1,64})",
              lambda rc: rc == 2, b"remanence: Checkpoint called before Start"),   # a Go panic exits 2
    "node": Sdk("node", build_node, "error done before the whole secret was read", "error invalid derived label",
                lambda rc: rc == 70, b"checkpoint() before start()"),                # sdk.fail: exit 70, fd 3 unused
    "python": Sdk(None, build_python, "error the program did not read the whole secret",
                  "error invalid derived label",
                  lambda rc: rc == 1, b"remanence.sdk.start() must be called first"),   # an uncaught RuntimeError
}


@pytest.fixture(scope="module", params=sorted(SDKS))
def sdk(request, tmp_path_factory) -> tuple[str, tuple[str, ...]]:
    """(the language, the command of the program built on its SDK)."""
    tool = SDKS[request.param].tool
    if tool and shutil.which(tool) is None:
        pytest.skip(f"needs {tool}")
    return request.param, SDKS[request.param].build(tmp_path_factory.mktemp(f"{request.param}-sdk"))


def start(command: tuple[str, ...], mode: str, secret_len: int) -> Target:
    env = target_env({"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"}, secret_len, 16)
    return Target(Path(command[0]), [*command[1:], mode], env, TIMEOUT)


def test_a_single_scenario_program_speaks_the_whole_protocol(sdk):
    secret, canary = fresh(33), fresh(16)

    def probe(t, name, addr, probes):
        if name == "held":
            probes["first"] = read_mem(t.pid, int(addr, 16), 16)

    run = drive(start(sdk[1], "full", len(secret)), secret, canary, probe)
    assert run.rc == 0, run.stderr
    assert run.probes["first"] == secret[:16]       # read straight into the program's own buffer
    assert run.derived == [("mask", bytes(b ^ 0x5A for b in secret))]
    assert run.notes == ["parts=2 head=16"]
    assert [name for name, _ in run.checkpoints] == ["held", "gone"] and run.checkpoints[1][1] == "-"
    assert run.lines[-1] == "done"


@pytest.mark.parametrize("mode", ["short", "bad_label"])
def test_a_misuse_after_start_is_an_error_line_and_exit_70(sdk, mode):
    language, command = sdk
    t = start(command, mode, 32)
    try:
        assert t.readline() == "ready 1"
        t.send(fresh(16) + fresh(32))
        line = t.readline()
        rc = t.wait()
    finally:
        t.kill()
    expected = SDKS[language].short_read if mode == "short" else SDKS[language].bad_label
    assert (line, rc) == (expected, 70), t.stderr


def test_the_sdk_before_start_stops_the_program_without_a_word_on_the_channel(sdk):
    language, command = sdk
    t = start(command, "before_start", 32)
    try:
        line = t.readline()
        rc = t.wait()
    finally:
        t.kill()
    assert line is None and SDKS[language].before_start_status(rc), (rc, t.stderr)
    assert SDKS[language].before_start_message in t.stderr, t.stderr


def test_collect_runs_a_collection_and_announces_the_same_checkpoint_again(sdk):
    """`collect` instead of `continue`: the program collects (C has nothing to collect) and stops at the same
    checkpoint, at the same address, as often as asked; `continue` then goes on as usual."""
    t = start(sdk[1], "full", 32)
    try:
        assert t.readline() == "ready 1"
        t.send(fresh(16) + fresh(32))
        assert t.readline() == "derived mask 32"
        t.read_exact(32)
        assert t.readline() == "note parts=2 head=16"
        held = t.readline()
        assert held.startswith("checkpoint held 0x"), held
        again = []
        for _ in range(3):
            t.send(b"collect\n")
            again.append(t.readline())
        assert again == [held] * 3, (again, t.stderr)
        t.send(b"continue\n")
        assert t.readline() == "checkpoint gone -"
        t.send(b"collect\n")
        assert t.readline() == "checkpoint gone -"
        t.send(b"continue\n")
        assert t.readline() == "done" and t.wait() == 0, t.stderr
    finally:
        t.kill()
