"""The Node SDK (targets/sdk/node) beyond what the built-in Node target exercises: secrets read in pieces into
any typed array, derived values, checkpoints without an address, and a misused or crashing program ending in
an `error` line. Small programs written here require the SDK from its source folder and are driven over fd 3
as the harness drives them."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from target_driver import Target, after_secret_of_length, dies_before_ready, drive, fresh, read_mem, target_env

SDK_DIR = Path(__file__).resolve().parents[1] / "targets" / "sdk" / "node"
TIMEOUT = 60.0

pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="node not found on PATH")


def start_program(tmp_path: Path, body: str, secret_len: int = 32) -> Target:
    program = tmp_path / "program.js"
    program.write_text(f"'use strict'\nconst sdk = require({json.dumps(str(SDK_DIR))})\n{body}\n")
    env = target_env({"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"}, secret_len, 16)
    return Target(shutil.which("node"), [str(program)], env, TIMEOUT)


@pytest.mark.parametrize("array", ["Uint8Array", "Uint32Array"])
def test_secret_in_pieces_into_a_typed_array_derived_value_and_no_address(tmp_path, array):
    t = start_program(tmp_path, f"const Storage = {array}\n" + """
const n = sdk.start()
const words = new Storage((n + 4) / Storage.BYTES_PER_ELEMENT)   // small: its bytes start inside V8's heap
const address = sdk.locate(words)
if (address === null) sdk.fail('not found')
sdk.readSecret(words, 4, 10)                  // byte offsets, in two pieces
sdk.readSecret(words, 14)
sdk.checkpoint('in_use', address + 4)
const bytes = new Uint8Array(words.buffer, 4, n)
sdk.derived('reversed', Buffer.from(bytes).reverse())
sdk.note({ length: n })
sdk.checkpoint('elsewhere', null)
sdk.done()
""")
    secret = fresh(32)

    def probe(t, name, addr, probes):
        if name == "in_use":
            probes["key"] = read_mem(t.pid, int(addr, 16), len(secret))

    run = drive(t, secret, fresh(16), probe)
    assert run.rc == 0, run.stderr
    assert run.probes["key"] == secret
    assert [name for name, _ in run.checkpoints] == ["in_use", "elsewhere"]
    assert run.checkpoints[1][1] == "-"
    assert run.derived == [("reversed", secret[::-1])]
    assert run.notes == ["length=32"]


@pytest.mark.parametrize("body, line", [
    ("sdk.readSecret(Buffer.alloc(n)); throw new Error('boom')", "error uncaught exception: boom"),
    ("sdk.readSecret(Buffer.alloc(n)); Promise.reject(new Error('later'))", "error unhandled rejection: later"),
    ("sdk.readSecret(Buffer.alloc(n), 0, 8); sdk.checkpoint('early', null)",
     "error checkpoint early reached before the whole secret was read"),
    ("sdk.readSecret(Buffer.alloc(n + 1), 0, n + 1)", "error asked for 33 secret bytes, only 32 left"),
    ("sdk.readSecret(Buffer.alloc(8))", "error readSecret: 32 bytes at offset 0 do not fit a 8-byte buffer"),
    ("sdk.readSecret(Buffer.alloc(n)); sdk.checkpoint('x', -1)",
     "error a checkpoint address must be a non-negative integer (number or bigint), or null"),
])
def test_a_misused_or_crashing_program_ends_with_an_error_line(tmp_path, body, line):
    t = start_program(tmp_path, f"const n = sdk.start()\n{body}")
    assert after_secret_of_length(t, 32) == (line, 70)


def test_nothing_is_written_on_fd3_before_start(tmp_path):
    t = start_program(tmp_path, "sdk.fail('too early')")
    assert dies_before_ready(t) == 70
    assert b"too early" in t.stderr


def test_a_one_byte_buffer_is_located_even_when_its_first_marker_is_the_commonest_byte(tmp_path):
    """A zero marker occurs once per zero byte of the heap: more candidates than a JS call takes arguments."""
    t = start_program(tmp_path, """
const random = Math.random
let first = true
Math.random = () => { if (first) { first = false; return 0 } return random() }
const n = sdk.start()
const key = Buffer.alloc(n)
const address = sdk.locate(key, m => m.name === '[heap]')
if (address === null) sdk.fail('not found')
Math.random = random
sdk.readSecret(key)
sdk.checkpoint('in_use', address)
sdk.done()
""", secret_len=1)
    secret = fresh(1)

    def probe(t, name, addr, probes):
        probes["key"] = read_mem(t.pid, int(addr, 16), 1)

    run = drive(t, secret, fresh(16), probe)
    assert run.rc == 0, run.stderr
    assert run.probes["key"] == secret
