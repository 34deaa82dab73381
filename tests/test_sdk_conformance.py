"""The C and Go SDKs (targets/sdk/c, targets/sdk/go) in the same single-scenario program of the kind a user
writes: no registry, the secret read in two parts into two buffers of the program's own, a derived value, a
checkpoint without an address, and the mistakes each SDK must refuse. The built-in targets cover the registry
and the rest of the conversation. Real programs, built here on the SDKs and driven over fd 3 with no harness
code; the Python and Node SDKs have tests of their own (test_sdk_python.py, test_node_sdk.py)."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

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


# language: (its compiler, how the program is built, how a call before start ends: exit status test, message)
SDKS = {
    "c": ("cc", build_c, lambda rc: rc < 0, b"rem_checkpoint() called before rem_start()"),
    "go": ("go", build_go, lambda rc: rc == 2, b"remanence: Checkpoint called before Start"),   # a Go panic exits 2
}


@pytest.fixture(scope="module", params=sorted(SDKS))
def sdk(request, tmp_path_factory) -> tuple[str, Path]:
    """(the language, the program built on its SDK)."""
    tool, build, _, _ = SDKS[request.param]
    if shutil.which(tool) is None:
        pytest.skip(f"needs {tool}")
    return request.param, build(tmp_path_factory.mktemp(f"{request.param}-sdk"))


def start(program: Path, mode: str, secret_len: int) -> Target:
    env = target_env({"PATH": os.environ.get("PATH", "/usr/bin:/bin")}, secret_len, 16)
    return Target(program, [mode], env, TIMEOUT)


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


@pytest.mark.parametrize("mode, message", [
    ("short", "error the program did not read the whole secret (16 of 32 bytes)"),
    ("bad_label", "error invalid derived label (must be [a-z0-9_]{1,64})"),
])
def test_a_misuse_after_start_is_an_error_line_and_exit_70(sdk, mode, message):
    t = start(sdk[1], mode, 32)
    try:
        assert t.readline() == "ready 1"
        t.send(fresh(16) + fresh(32))
        line = t.readline()
        rc = t.wait()
    finally:
        t.kill()
    assert (line, rc) == (message, 70)


def test_the_sdk_before_start_stops_the_program_without_a_word_on_the_channel(sdk):
    language, program = sdk
    _, _, ended_as_expected, message = SDKS[language]
    t = start(program, "before_start", 32)
    try:
        line = t.readline()
        rc = t.wait()
    finally:
        t.kill()
    assert line is None and ended_as_expected(rc), t.stderr
    assert message in t.stderr
