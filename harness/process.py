"""A running target: spawned in its own session, spoken to over fd 3 (targets/PROTOCOL.md), always reaped."""
from __future__ import annotations

import ctypes
import os
import select
import signal
import socket
import time
import re
from dataclasses import dataclass, field
from pathlib import Path

PROTOCOL_VERSION = "1"
CONTROL_FD = 3
MAX_LINE = 4096
MAX_DERIVED = 4096
DERIVED_LINE = re.compile(r"([a-z0-9_]{1,64}) ([0-9]{1,4})")
TARGET_PATH = "/usr/local/bin:/usr/bin:/bin"


class TargetError(Exception):
    """The target broke the protocol, crashed, or timed out. The process group is already killed."""


@dataclass(frozen=True)
class TargetEvent:
    kind: str                 # "checkpoint", "note", "derived", "done", "error"
    text: str                 # the rest of the line (checkpoint name, note body, derived label, error message)
    address: int | None = None
    data: bytes = field(default=b"", repr=False)   # a derived value's bytes: never in a log


PR_SET_PDEATHSIG = 1
# The harness's own long-lived children that belong to no run (the workspace's sentinel): never a run's orphan.
HARNESS_HELPERS: set[int] = set()
_libc = ctypes.CDLL(None, use_errno=True)


def die_with_parent() -> None:
    """In a child before exec (a subprocess preexec_fn): SIGKILL it when the harness dies, even when it is
    stopped, so a killed harness leaves no target, gdb or build step behind."""
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def stat_fields(path: str) -> list[str]:
    """The fields of a /proc/PID[/task/TID]/stat file after the command name, the state first (OSError when the
    process is gone). The name may itself hold parentheses and spaces: it ends at the last ')'."""
    with open(path, "rb") as f:
        return f.read().rpartition(b")")[2].decode().split()


def signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def describe_status(status: int) -> str:
    """A wait status (waitpid's, or PTRACE_GETEVENTMSG's at PTRACE_EVENT_EXIT) in words."""
    if os.WIFEXITED(status):
        return f"exit status {os.WEXITSTATUS(status)}"
    if os.WIFSIGNALED(status):
        return f"killed by {signal_name(os.WTERMSIG(status))}" + (" (core dumped)" if os.WCOREDUMP(status) else "")
    return f"status {status:#x}"


def spawn_in(cwd: Path, argv: list[str], env: dict, actions: list, cgroup_procs: str | None = None) -> int:
    """Start argv in a new session, in `cwd`, with posix_spawn-style file `actions` (OPEN, DUP2); it dies with
    the harness (PR_SET_PDEATHSIG, even when stopped) and joins the cgroup whose `cgroup.procs` is given, so
    whatever it starts can be found and killed. fork and exec by hand: posix_spawn can set neither."""
    errors_r, errors_w = os.pipe()          # close-on-exec: end of file means the exec succeeded
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(errors_r)
            os.setsid()
            die_with_parent()
            if os.getppid() != parent:      # the harness died before the signal was armed
                os._exit(127)
            if cgroup_procs:
                with open(cgroup_procs, "w") as procs:
                    procs.write("0")
            os.chdir(cwd)
            for action in actions:
                if action[0] == os.POSIX_SPAWN_OPEN:
                    _, fd, path, flags, mode = action
                    opened = os.open(path, flags, mode)
                    if opened != fd:
                        os.dup2(opened, fd)
                        os.close(opened)
                    else:
                        os.set_inheritable(fd, True)
                else:
                    _, source, fd = action
                    os.dup2(source, fd)
            os.execvpe(argv[0], argv, env)
        except OSError as e:
            os.write(errors_w, str(e.errno or 0).encode())
        finally:
            os._exit(127)
    os.close(errors_w)
    try:
        failure = b""
        while chunk := os.read(errors_r, 16):
            failure += chunk
    finally:
        os.close(errors_r)
    if failure:
        os.waitpid(pid, 0)
        code = int(failure)
        raise OSError(code, os.strerror(code), argv[0])
    return pid


def alive(pid: int) -> bool:
    """Running or stopped: a zombie holds no memory any more."""
    try:
        return stat_fields(f"/proc/{pid}/stat")[0] not in "ZX"
    except (OSError, IndexError):
        return False


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (stat field 22): a pid and its start time name one
    process, even after the pid is reused."""
    try:
        return int(stat_fields(f"/proc/{pid}/stat")[19])
    except (OSError, IndexError, ValueError):
        return None


def children(pid: int) -> list[int]:
    """The children of every thread of `pid` (/proc/PID/task/*/children)."""
    found = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found += [int(child) for child in f.read().split()]
        except OSError:
            continue
    return found


def descendants(roots: list[int]) -> list[int]:
    """`roots` and every process below them, in the order found (parents before their children)."""
    found, queue = [], list(roots)
    while queue:
        pid = queue.pop(0)
        if pid not in found:
            found.append(pid)
            queue += children(pid)
    return found


def command_line(pid: int, limit: int = 200) -> bytes:
    """What `ps` shows as the process's command: its argv joined by spaces, else [its name] (a process whose
    argv is gone); empty when the process is gone. The caller masks secret material out of it."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read(limit + 1).rstrip(b"\0").replace(b"\0", b" ")
        if argv:
            return argv[:limit]
        with open(f"/proc/{pid}/comm", "rb") as f:
            return b"[" + f.read().strip() + b"]"
    except OSError:
        return b""


def reap(pids, timeout: float = 5.0) -> None:
    """Wait until each of `pids` (killed already) is gone, reaping those that are or become our children: an orphan
    becomes our child (we are the subreaper) only once its parent has died, so none is left a zombie of ours."""
    deadline = time.monotonic() + timeout
    unreaped = set(pids)
    while unreaped and time.monotonic() < deadline:
        for pid in list(unreaped):
            try:
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    unreaped.discard(pid)
            except ChildProcessError:
                if not os.path.exists(f"/proc/{pid}"):
                    unreaped.discard(pid)
        if unreaped:
            time.sleep(0.01)


class SpawnedGroup:
    """A child we spawned as the leader of its own session: polled and reaped here only, killed with its whole
    process group and whatever else it started (its run's cgroup: daemons in sessions of their own). Subclasses
    set `pid`, `status` and `cgroup` and close their own ends in `_release`."""

    pid: int
    status: int | None
    cgroup = None        # workspace.RunCgroup, where the machine has cgroup2
    escaped: list[int] = []   # processes it started outside its process group (daemons), killed with it
    since: int | None = None  # the leader's start time (start_time), taken when it was spawned

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.kill()

    def wait_exit(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() > deadline:
                self.kill()
                raise TargetError(f"did not exit within {timeout:.0f} s; process group killed")
            time.sleep(0.01)
        return self.status

    def processes(self) -> list[int]:
        """Every live process of the run, the leader first: the members of its cgroup where it has one, else the
        leader's descendants plus the orphans of the run reparented to us, the subreaper (our children started
        since the leader, but for HARNESS_HELPERS: the harness starts nothing else while a run goes on), and theirs."""
        if self.cgroup is not None:
            others = sorted(p for p in self.cgroup.members() if p != self.pid)
        else:
            orphans = [p for p in children(os.getpid()) if p != self.pid and p not in HARNESS_HELPERS
                       and self.since is not None and (start_time(p) or -1) >= self.since]
            others = [p for p in descendants([self.pid, *orphans]) if p != self.pid]
        return [self.pid] + [p for p in others if alive(p)]

    def poll(self) -> int | None:
        if self.status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid and not os.WIFSTOPPED(status):
                self.status = status
        return self.status

    def adopt_status(self, status: int) -> None:
        """The wait status collected by someone else who waited for this child (the exit-stop tracer)."""
        if self.status is None:
            self.status = status

    def kill(self) -> None:
        """Kill the whole process group and reap the leader, then anything else the run started. Safe to call
        more than once."""
        self.escaped = self.escaped or self._outside_group()
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        while self.status is None:
            _, status = os.waitpid(self.pid, 0)
            if not os.WIFSTOPPED(status):  # a ptrace stop is not the end
                self.status = status
        if self.cgroup is not None:
            self.cgroup.end()
        else:   # no cgroup to kill: the daemons found through /proc
            for pid in self.escaped:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            reap(self.escaped)
        self._release()

    def _outside_group(self) -> list[int]:
        """The run's processes that left the leader's process group (daemons: setsid, double fork)."""
        outside = []
        for pid in self.processes()[1:]:
            try:
                if os.getpgid(pid) != self.pid:
                    outside.append(pid)
            except ProcessLookupError:
                pass
        return outside

    def _release(self) -> None:
        """Close what we hold of the child (sockets, pipes): called once it is reaped."""



class TargetProcess(SpawnedGroup):
    """One target run. Use as a context manager: leaving it always kills and reaps the whole process group."""

    def __init__(self, argv: tuple[str, ...], secret_len: int, canary_len: int, log_path: Path,
                 cwd: Path, extra_env: dict[str, str] | None = None, cgroup=None):
        self.log_path, self.cgroup = log_path, cgroup
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock = parent
        self._buffer = b""
        self.status: int | None = None
        # A fixed, minimal environment: results must not depend on the caller's (LD_BIND_NOW alone changes
        # whether the dynamic linker spills vector registers holding a key onto the stack).
        env = {"PATH": TARGET_PATH, "LC_ALL": "C", "REMANENCE_PROTOCOL": PROTOCOL_VERSION,
               "REMANENCE_SECRET_LEN": str(secret_len), "REMANENCE_CANARY_LEN": str(canary_len), **(extra_env or {})}
        # dup2 onto itself would keep close-on-exec set, so make sure the source is not already fd 3.
        source_fd = child.fileno() if child.fileno() != CONTROL_FD else os.dup(child.fileno())
        actions = [
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, str(log_path), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600),
            (os.POSIX_SPAWN_DUP2, 1, 2),
            (os.POSIX_SPAWN_DUP2, source_fd, CONTROL_FD),
        ]
        try:
            self.pid = spawn_in(cwd, list(argv), env, actions, cgroup and cgroup.procs_file)
            self.since = start_time(self.pid)
        finally:
            if source_fd != child.fileno():
                os.close(source_fd)
            child.close()

    # --- protocol -----------------------------------------------------------

    def expect_ready(self, timeout: float) -> None:
        line = self._read_line(timeout, "the ready line")
        if line != f"ready {PROTOCOL_VERSION}":
            self.kill()
            raise TargetError(f"expected 'ready {PROTOCOL_VERSION}', got {line[:80]!r}")

    def send_secrets(self, canary: bytes, secret: bytes) -> None:
        self._send(canary + secret, "sending the secret")

    def next_event(self, timeout: float) -> TargetEvent:
        line = self._read_line(timeout, "the next checkpoint")
        word, _, rest = line.partition(" ")
        if word == "checkpoint":
            name, _, where = rest.partition(" ")
            try:
                address = None if where in ("", "-") else int(where, 16)
            except ValueError:
                self.kill()
                raise TargetError(f"bad checkpoint address {where[:40]!r}") from None
            return TargetEvent("checkpoint", name, address)
        if word == "derived":
            match = DERIVED_LINE.fullmatch(rest)
            if not match or not 1 <= int(match[2]) <= MAX_DERIVED:
                self.kill()
                raise TargetError(f"bad derived line {line[:80]!r}: expected 'derived <label> <1..{MAX_DERIVED}>'")
            return TargetEvent("derived", match[1], data=self._read_bytes(int(match[2]), timeout))
        if word in ("note", "done", "error"):
            return TargetEvent(word, rest)
        self.kill()
        raise TargetError(f"unexpected message {line[:80]!r}")

    def resume(self) -> None:
        self._send(b"continue\n", "resuming it")

    def collect(self) -> None:
        """One full collection of its runtime; it announces the same checkpoint again."""
        self._send(b"collect\n", "asking it to collect")

    def _send(self, data: bytes, doing: str) -> None:
        try:
            self._sock.sendall(data)
        except OSError:       # it died (a crash, the OOM killer): its status says how
            self.kill()
            raise TargetError(self._ended(doing)) from None

    def _ended(self, doing: str) -> str:
        tail = self.log_tail()
        return f"target ended ({describe_status(self.status)}) while {doing}" + (f"; its output: {tail}" if tail else "")

    def _release(self) -> None:
        self._sock.close()

    def log_tail(self, limit: int = 800) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-limit:].strip()
        except OSError:
            return ""

    def _read_bytes(self, count: int, timeout: float) -> bytes:
        self._fill(lambda: len(self._buffer) >= count, timeout, "a derived value")
        data, self._buffer = self._buffer[:count], self._buffer[count:]
        return data

    def _read_line(self, timeout: float, waiting_for: str) -> str:
        self._fill(lambda: b"\n" in self._buffer, timeout, waiting_for)
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode("ascii", errors="replace")

    def _fill(self, enough, timeout: float, waiting_for: str) -> None:
        deadline = time.monotonic() + timeout
        while not enough():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.kill()
                raise TargetError(f"timed out after {timeout:.0f} s waiting for {waiting_for}; process group killed")
            ready, _, _ = select.select([self._sock], [], [], min(remaining, 0.2))
            if not ready:
                continue
            try:
                data = self._sock.recv(MAX_LINE)
            except OSError:
                data = b""
            if not data:
                self.kill()
                raise TargetError(self._ended(f"waiting for {waiting_for}"))
            self._buffer += data
            if len(self._buffer) > MAX_LINE + MAX_DERIVED and not enough():
                self.kill()
                raise TargetError("protocol line too long")
