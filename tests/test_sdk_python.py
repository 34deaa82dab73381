"""remanence.sdk (harness/sdk.py) against targets/PROTOCOL.md: small programs written on it, run with this
interpreter over a socketpair passed as fd 3, as the harness does (no harness code drives them). The rules every
target follows (a bad environment, EOF on fd 3, a missing fd 3, a reply other than `continue`) are checked on the
Python target, written on this SDK, by test_protocol_conformance.py; here, what the SDK's API does."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from target_driver import (Target, after_bad_environment, dies_before_ready, drive, fresh, read_mem,
                           readable_memory_contains, target_env)

TIMEOUT = 30.0
HEADER = "import ctypes, sys\nfrom remanence import sdk\n"
ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LC_ALL": "C"}


def program(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "prog.py"
    path.write_text(HEADER + textwrap.dedent(body))
    return path


def start(path: Path, secret_len: int = 32, canary_len: int = 16, argv: tuple[str, ...] = (), **env) -> Target:
    return Target(Path(sys.executable), ["-s", str(path), *argv], target_env(ENV, secret_len, canary_len, **env),
                  TIMEOUT)


# The secret in three kinds of caller storage; each checkpoint reports where it is.
INTO_CALLERS_BUFFERS = """
    n = sdk.start()
    assert n == sdk.secret_len() == 32
    whole = bytearray(n)
    sdk.read_secret_into(memoryview(whole)[:8])       # a memoryview slice: the first 8 bytes
    raw = (ctypes.c_ubyte * 8)()
    sdk.read_secret_into(raw)                         # a ctypes array: the next 8
    rest = bytearray(16)
    sdk.read_secret_into(rest)                        # a bytearray: the last 16
    sdk.note("parts=3 kinds=memoryview,ctypes,bytearray")
    sdk.checkpoint("first", sdk.address_of(whole))
    sdk.checkpoint("middle", sdk.address_of(raw))
    sdk.checkpoint("last", sdk.address_of(rest))
    sdk.checkpoint("nowhere", None)
    sdk.done()
"""


def test_the_secret_lands_straight_in_the_callers_buffers(tmp_path):
    secret, canary = fresh(32), fresh(48)
    parts = {"first": secret[:8], "middle": secret[8:16], "last": secret[16:]}

    def probe(t, name, addr, probes):
        if addr != "-":
            probes[name] = (read_mem(t.pid, int(addr, 16), len(parts[name])),
                            readable_memory_contains(t.pid, parts[name]))
        probes.setdefault("canary", len(readable_memory_contains(t.pid, canary)))

    run = drive(start(program(tmp_path, INTO_CALLERS_BUFFERS), canary_len=len(canary)), secret, canary, probe)
    assert run.rc == 0, run.stderr
    assert run.lines == ["note parts=3 kinds=memoryview,ctypes,bytearray", *(f"checkpoint {n} {a}" for n, a in
                                                                             run.checkpoints), "done"]
    assert [name for name, _ in run.checkpoints] == ["first", "middle", "last", "nowhere"]
    assert run.checkpoints[-1] == ("nowhere", "-")
    for name, (at_addr, copies) in ((n, run.probes[n]) for n in parts):
        # Each part is at the address reported for its buffer, and nowhere else: recv_into wrote it there.
        assert at_addr == parts[name], name
        assert [at for at, _ in copies] == [int(dict(run.checkpoints)[name], 16)], name
    assert run.probes["canary"] == 1   # kept live until exit
    assert run.stdout == b"" and run.stderr == b""


def test_read_secret_bytes_fills_a_fresh_bytes_object_in_place(tmp_path):
    body = """
        sdk.start()
        key = sdk.read_secret_bytes(32)
        assert type(key) is bytes and len(key) == 32
        sdk.derived("key_again", key)
        sdk.checkpoint("held", sdk.address_of(key))
        sdk.done()
    """
    secret = fresh(32)

    def probe(t, name, addr, probes):
        probes[name] = readable_memory_contains(t.pid, secret)

    run = drive(start(program(tmp_path, body)), secret, fresh(16), probe)
    assert run.rc == 0, run.stderr
    assert run.derived == [("key_again", secret)]
    [(name, addr)] = run.checkpoints
    assert [at for at, _ in run.probes[name]] == [int(addr, 16)]


def test_fail_sends_an_error_line_and_exits_70(tmp_path):
    t = start(program(tmp_path, "sdk.start()\nsdk.read_secret_into(bytearray(32))\nsdk.fail('wipe went wrong')\n"))
    try:
        assert t.readline() == "ready 1"
        t.send(fresh(16) + fresh(32))
        assert t.readline() == "error wipe went wrong"
        assert t.wait() == 70
    finally:
        t.kill()
    assert t.stderr == b"prog.py: error: wipe went wrong\n"


@pytest.mark.parametrize("body, line", [
    ("sdk.start()\nsdk.read_secret_into(bytearray(33))\n", "error asked for 33 secret bytes, only 32 left"),
    ("sdk.start()\nsdk.read_secret_into(bytearray(8))\nsdk.checkpoint('early', None)\n",
     "error checkpoint early reached before the whole secret was read"),
    ("sdk.start()\nsdk.read_secret_into(bytearray(8))\nsdk.derived('early', b'x')\n",
     "error derived value sent before the whole secret was read"),
    ("sdk.start()\nsdk.read_secret_into(bytearray(32))\nsdk.checkpoint('bad name', None)\n",
     "error invalid checkpoint name"),
    ("sdk.start()\nsdk.need_secret_len(16)\n", "error this scenario needs a 16-byte secret, got 32"),
])
def test_misuse_is_an_error_line_and_exit_70(tmp_path, body, line):
    t = start(program(tmp_path, body))
    try:
        assert t.readline() == "ready 1"
        t.send(fresh(16) + fresh(32))
        assert t.readline() == line
        assert t.wait() == 70
    finally:
        t.kill()


def test_a_problem_given_to_start_is_an_error_after_ready(tmp_path):
    line, rc = after_bad_environment(start(program(tmp_path, "sdk.start('nacl is not importable')\n")))
    assert (line, rc) == ("error nacl is not importable", 70)


REGISTRY = """
    @sdk.scenario("b.two")
    def two():
        sdk.read_secret_into(bytearray(sdk.secret_len()))
        sdk.checkpoint("only", None)

    @sdk.scenario("a.one")
    def one():
        sdk.read_secret_into(bytearray(sdk.secret_len()))

    sdk.main()
"""


def test_registry_runs_the_named_scenario(tmp_path):
    run = drive(start(program(tmp_path, REGISTRY), argv=("b.two",)), fresh(32), fresh(16))
    assert run.rc == 0, run.stderr
    assert run.lines == ["checkpoint only -", "done"]


def test_registry_lists_its_names_sorted(tmp_path):
    r = subprocess.run([sys.executable, str(program(tmp_path, REGISTRY)), "--list"], capture_output=True, text=True,
                       timeout=TIMEOUT, env=target_env(ENV, 32, 16))
    assert (r.returncode, r.stdout, r.stderr) == (0, "a.one\nb.two\n", "")


@pytest.mark.parametrize("argv", [["no.such"], [], ["a.one", "extra"]])
def test_registry_unknown_or_missing_name_exits_64(tmp_path, argv):
    r = subprocess.run([sys.executable, str(program(tmp_path, REGISTRY)), *argv], capture_output=True, text=True,
                       timeout=TIMEOUT, env=target_env(ENV, 32, 16))
    assert r.returncode == 64
    assert r.stderr == f"unknown scenario '{argv[0] if argv else ''}'; known: a.one b.two\n"


def test_registry_duplicate_name_exits_1_before_ready(tmp_path):
    body = REGISTRY.replace('@sdk.scenario("a.one")', '@sdk.scenario("b.two")')
    t = start(program(tmp_path, body), argv=("b.two",))
    assert dies_before_ready(t) == 1
    assert b"duplicate scenario registration 'b.two'" in t.stderr
