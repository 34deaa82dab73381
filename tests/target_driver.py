"""Drives a target program over the protocol of targets/PROTOCOL.md, as the harness does, with
no harness code: shared by the target and SDK tests."""

from __future__ import annotations

import os
import re
import select
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest


def target_env(base: dict[str, str], secret_len: int, canary_len: int, **overrides) -> dict[str, str]:
    """`base` plus the protocol's lengths; an override of None removes a variable."""
    env = {**base, "REMANENCE_PROTOCOL": "1", "REMANENCE_SECRET_LEN": str(secret_len),
           "REMANENCE_CANARY_LEN": str(canary_len)}
    for k, v in overrides.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env


class Target:
    """One target process with the child end of a socketpair as its fd 3, in
    a private temporary working directory."""

    def __init__(self, binary: Path, argv: list[str], env: dict[str, str], timeout: float):
        self.timeout = timeout  # default wait for a line or for the exit
        self.sock, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        cfd = child.fileno()

        def put_on_fd3() -> None:
            if cfd == 3:
                os.set_inheritable(3, True)
            else:
                os.dup2(cfd, 3, inheritable=True)

        self.cwd = tempfile.TemporaryDirectory(prefix="remanence-target-test-")
        self.out = tempfile.TemporaryFile()
        self.err = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [str(binary), *argv],
            stdin=subprocess.DEVNULL,
            stdout=self.out,
            stderr=self.err,
            env=env,
            cwd=self.cwd.name,
            close_fds=False,
            preexec_fn=put_on_fd3,
            start_new_session=True,
        )
        child.close()
        self.buf = b""
        self.stdout = self.stderr = b""
        self.derived: dict[str, bytes] = {}   # values sent with `derived <label> <n>`, so far

    @property
    def pid(self) -> int:
        return self.proc.pid

    def readline(self, timeout: float | None = None) -> str | None:
        """Next line from the target (without '\\n'), or None at EOF."""
        timeout = self.timeout if timeout is None else timeout
        while b"\n" not in self.buf:
            ready, _, _ = select.select([self.sock], [], [], timeout)
            if not ready:
                self.kill()
                pytest.fail(f"timed out waiting for a line from the target; got {self.buf!r}")
            chunk = self.sock.recv(4096)
            if not chunk:
                return None
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode("ascii")

    def read_exact(self, n: int) -> bytes:
        """Exactly n raw bytes following a line (part may already be buffered)."""
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            assert chunk, f"EOF inside a derived value ({len(self.buf)} of {n} bytes)"
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        self.sock.close()

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def wait(self, timeout: float | None = None) -> int:
        timeout = self.timeout if timeout is None else timeout
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            self.proc.wait()
            pytest.fail("target did not exit")
        self.sock.close()
        for f, attr in ((self.out, "stdout"), (self.err, "stderr")):
            f.seek(0)
            setattr(self, attr, f.read())
            f.close()
        self.cwd.cleanup()
        return rc


@dataclass
class Run:
    rc: int
    lines: list[str]
    checkpoints: list[tuple[str, str]]
    notes: list[str]
    stdout: bytes
    stderr: bytes
    probes: dict = field(default_factory=dict)
    derived: list[tuple[str, bytes]] = field(default_factory=list)   # in the order sent


DERIVED_LINE = re.compile(r"derived ([a-z0-9_]{1,64}) ([0-9]+)")


def drive(t: Target, secret: bytes, canary: bytes, on_checkpoint=None, crash: bool = False) -> Run:
    """Full conversation with a started target; on_checkpoint(target, name, addr, probes)
    runs while the target is stopped at a checkpoint (t.derived holds the derived values sent so far).
    `crash`: the target is expected to die after a checkpoint, so its channel ends without `done`."""
    lines, checkpoints, notes, probes, derived = [], [], [], {}, []
    try:
        assert t.readline() == "ready 1"
        t.send(canary + secret)
        while True:
            line = t.readline()
            if line is None and crash and checkpoints:
                break
            assert line is not None, f"EOF before done; lines so far: {lines}"
            lines.append(line)
            if line.startswith("checkpoint "):
                _, name, addr = line.split(" ")
                checkpoints.append((name, addr))
                if on_checkpoint is not None:
                    on_checkpoint(t, name, addr, probes)
                t.send(b"continue\n")
            elif line.startswith("derived "):
                m = DERIVED_LINE.fullmatch(line)
                assert m and 1 <= int(m[2]) <= 4096, line
                t.derived[m[1]] = t.read_exact(int(m[2]))
                derived.append((m[1], t.derived[m[1]]))
            elif line.startswith("note "):
                notes.append(line[len("note "):])
            elif line == "done":
                break
            else:
                pytest.fail(f"unexpected line from target: {line!r}")
        rc = t.wait()
    finally:
        t.kill()
    return Run(rc, lines, checkpoints, notes, t.stdout, t.stderr, probes, derived)


def read_mem(pid: int, addr: int, n: int) -> bytes:
    with open(f"/proc/{pid}/mem", "rb", buffering=0) as f:
        f.seek(addr)
        return f.read(n)


def readable_memory_contains(pid: int, needle: bytes) -> list[tuple[int, str]]:
    """(address, mapping name or 'anon') of every copy of needle in the target's readable memory."""
    found = []
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        for line in maps:
            parts = line.split()
            name = parts[5] if len(parts) > 5 else "anon"
            if not parts[1].startswith("r") or name in ("[vvar]", "[vvar_vclock]", "[vsyscall]"):
                continue
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            mem.seek(lo)
            try:
                data = mem.read(hi - lo)
            except OSError:
                continue
            at = data.find(needle)
            while at >= 0:
                found.append((lo + at, name))
                at = data.find(needle, at + 1)
    return found


def smaps_entry(pid: int, addr: int) -> dict[str, str]:
    """The /proc/PID/smaps fields of the mapping containing addr."""
    entry, inside = {}, False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split()[0]
            if re.fullmatch(r"[0-9a-f]+-[0-9a-f]+", head):
                if inside:
                    break
                lo, hi = (int(x, 16) for x in head.split("-"))
                inside = lo <= addr < hi
            elif inside:
                key, _, value = line.partition(":")
                entry[key] = value.strip()
    assert entry, f"no mapping contains {addr:#x}"
    return entry


def fresh(n: int) -> bytes:
    """Random bytes with no zero byte (so 'wiped' and 'secret' never overlap)."""
    return bytes((b % 255) + 1 for b in os.urandom(n))


# --- conformance steps every target must pass; the callers assert on what these return -----------

def scenario_file_names(folder: Path, target: str) -> set[str]:
    """The scenario names of `folder`'s files, each checked to be in `<name>.toml` and to run `target`."""
    names = set()
    for path in folder.glob("*.toml"):
        text = path.read_text()
        m = re.search(r'^name\s*=\s*"([^"]+)"', text, re.M)
        assert m, path
        assert path.name == f"{m[1]}.toml"
        assert re.search(rf'^target\s*=\s*"{target}"', text, re.M), path
        names.add(m[1])
    return names


def dies_before_ready(t: Target) -> int:
    """Exit code of a target that must end before saying anything on the channel (a duplicate registration)."""
    try:
        assert t.readline() is None
        return t.wait()
    finally:
        t.kill()


def after_secret_of_length(t: Target, secret_len: int) -> tuple[str | None, int]:
    """(the target's next line, exit code) once it got a canary and a secret of `secret_len` bytes."""
    try:
        assert t.readline() == "ready 1"
        t.send(fresh(16) + fresh(secret_len))
        line = t.readline()
        return line, t.wait()
    finally:
        t.kill()


def after_bad_environment(t: Target) -> tuple[str | None, int]:
    """(the line after `ready 1`, exit code) of a target started with a broken environment."""
    try:
        assert t.readline() == "ready 1"
        line = t.readline()
        return line, t.wait()
    finally:
        t.kill()


def exit_after_eof(t: Target, stage: str, secret: bytes, canary: bytes) -> tuple[int, str | None]:
    """(exit code, first checkpoint line if reached) when the harness hangs up at `stage`:
    before_canary, mid_canary, mid_secret or at_checkpoint."""
    line = None
    try:
        assert t.readline() == "ready 1"
        if stage == "mid_canary":
            t.send(canary[:5])
        elif stage == "mid_secret":
            t.send(canary + secret[:7])
        elif stage == "at_checkpoint":
            t.send(canary + secret)
            line = t.readline()
        t.close()
        return t.wait(), line
    finally:
        t.kill()


def after_bogus_reply(t: Target, secret: bytes, reply: bytes = b"bogus-reply\n") -> tuple[str, str | None, int]:
    """(first checkpoint line, the target's answer to `reply`, something other than `continue`, exit code)."""
    try:
        assert t.readline() == "ready 1"
        t.send(fresh(16) + secret)
        checkpoint = t.readline()
        t.send(reply)
        line = t.readline()
        return checkpoint, line, t.wait()
    finally:
        t.kill()


def read_stdout_line(proc: subprocess.Popen, timeout: float) -> bytes:
    """One line from a helper program's stdout, byte by byte so nothing after it is consumed."""
    line = b""
    deadline = time.monotonic() + timeout
    while not line.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([proc.stdout], [], [], remaining)[0]:
            raise TimeoutError(f"no line from the target within {timeout}s (got {line!r})")
        byte = proc.stdout.read(1)
        if not byte:
            raise EOFError(f"target closed stdout (exit {proc.poll()})")
        line += byte
    return line
