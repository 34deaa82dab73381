"""The C SDK (targets/sdk/c) in a single-scenario program of the kind a user writes: no registry, the secret read
in two parts into two buffers of the program's own, a derived value, a checkpoint without an address, and the
mistakes the SDK must refuse. The built-in C target (tests/test_c_target.py) covers the registry and the rest of
the conversation. Real programs, compiled here and driven over fd 3 with no harness code."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from target_driver import Target, drive, fresh, read_mem, target_env

from remanence.targets import TARGETS_DIR

SDK = TARGETS_DIR / "sdk" / "c"
TIMEOUT = 10.0

PROGRAM = r"""
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

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler")


@pytest.fixture(scope="module")
def program(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("c-sdk")
    (folder / "main.c").write_text(PROGRAM)
    binary = folder / "sdk-demo"
    subprocess.run(["cc", "-std=gnu11", "-O2", "-Wall", "-Wextra", "-Werror", f"-I{SDK}", "-o", str(binary),
                    str(folder / "main.c"), str(SDK / "remanence.c")], check=True)
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


def test_the_sdk_before_rem_start_aborts_without_a_word_on_the_channel(program):
    t = start(program, "before_start", 32)
    try:
        line = t.readline()
        rc = t.wait()
    finally:
        t.kill()
    assert line is None and rc < 0, t.stderr
    assert b"rem_checkpoint() called before rem_start()" in t.stderr
