"""command targets: the user's own, unmodified program, driven the way people test it by hand.

The secret reaches the program on stdin, typed at its prompt on a pseudo-terminal, or in a private file;
checkpoints are triggers (its output matches a pattern, a delay, it goes idle, its exit) instead of
protocol announcements. The positive control is a random canary in the program's environment (the
initial stack keeps it for the program's life) plus proof that the program consumed the secret.
The program's output is kept in memory and only ever shown with every encoding of the secret masked:
a terminal echoes what is typed.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import re
import select
import shutil
import struct
import termios
import threading
import time
from pathlib import Path

from .model import Secret
from .process import TARGET_PATH, SpawnedGroup, TargetError, describe_status, spawn_in, start_time, stat_fields
from .scan.context import mask_secret, secret_material
from .scenario import SECRET_FILE_PLACEHOLDER, CommandSpec, Trigger

CANARY_ENV = "REMANENCE_CANARY"
OUTPUT_KEEP = 1 << 20          # bytes of output kept for patterns and the report (older output is dropped)
POLL_S = 0.05
_IN_ACCESS, _IN_OPEN, _IN_NONBLOCK, _IN_CLOEXEC = 0x1, 0x20, 0o4000, 0o2000000


class CommandUnavailable(Exception):
    """The program cannot be started here (not found, not executable)."""


def resolve_program(spec: CommandSpec) -> str:
    """The executable argv[0] names: a path (relative to the scenario's cwd) or a name on PATH."""
    program = spec.argv[0]
    if "/" in program:
        # Not resolve(): a venv's bin/python is a symlink, and only started by that name is it the venv's.
        path = Path(os.path.abspath(spec.cwd / program))
        if not path.is_file() or not os.access(path, os.X_OK):
            raise CommandUnavailable(f"{program!r} is not an executable file (looked in {spec.cwd})")
        return str(path)
    found = shutil.which(program, path=os.environ.get("PATH", TARGET_PATH))
    if found is None:
        raise CommandUnavailable(f"{program!r} not found on PATH")
    return found


def script_argument(argv: tuple[str, ...] | list[str], cwd: Path) -> str | None:
    """argv[1] when it names a file in `cwd`: the script an interpreter (python3 login.py) runs."""
    return argv[1] if len(argv) > 1 and Path(cwd, argv[1]).is_file() else None


def program_file(spec: CommandSpec) -> Path | None:
    """The file that is the user's program, where its results point: the script an interpreter runs, else the
    executable; None when it cannot be found."""
    if (script := script_argument(spec.argv, spec.cwd)) is not None and "/" not in spec.argv[0]:
        return (spec.cwd / script).resolve()
    try:
        return Path(resolve_program(spec))
    except CommandUnavailable:
        return None


def _bytes_waiting(fd: int) -> int:
    return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]


class _FileWatch:
    """inotify on the secret file: has the program read it? (Python has no inotify: libc through ctypes.)"""

    def __init__(self, path: Path):
        self._libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self._libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if self.fd < 0 or self._libc.inotify_add_watch(self.fd, str(path).encode(), _IN_ACCESS | _IN_OPEN) < 0:
            raise OSError(ctypes.get_errno(), "inotify on the secret file failed")
        self.opened = self.read = False

    def poll(self) -> None:
        try:
            data = os.read(self.fd, 4096)
        except BlockingIOError:
            return
        for offset in range(0, len(data), 16):   # struct inotify_event: wd, mask, cookie, len (+ name, none here)
            mask = struct.unpack_from("iIII", data, offset)[1]
            self.opened |= bool(mask & _IN_OPEN)
            self.read |= bool(mask & _IN_ACCESS)

    def close(self) -> None:
        os.close(self.fd)


class CommandProcess(SpawnedGroup):
    """One run of the user's program. Use as a context manager: leaving it kills and reaps its process group."""

    def __init__(self, spec: CommandSpec, secret: Secret, canary: Secret, workdir: Path, cgroup=None):
        self.spec, self.secret, self.cgroup = spec, secret, cgroup
        self.status: int | None = None
        self._output = bytearray()
        self._output_base = 0              # absolute offset of _output[0]
        self._output_lock = threading.Lock()
        self._last_output_at = time.monotonic()
        self._material = secret_material(secret)
        self._stdin_probe: int | None = None     # a read end of the program's stdin pipe or its terminal
        self._stdin_w: int | None = None
        self._watch: _FileWatch | None = None
        self._master: int | None = None
        self._own_fds: set[int] = set()
        self.delivered = ""
        program = resolve_program(spec)
        secret_file = workdir / "secret"
        if spec.delivery == "file":
            fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(secret.value)
            self._watch = _FileWatch(secret_file)

        def fill(text: str) -> str:
            return text.replace(SECRET_FILE_PLACEHOLDER, str(secret_file))

        # A fixed, minimal environment (as for the built-in targets) with HOME in our private folder; the canary
        # rides in it: the kernel copies it onto the initial stack, ordinary memory every method must see.
        env = {"PATH": TARGET_PATH, "LC_ALL": "C", "HOME": str(workdir),
               **{k: fill(v) for k, v in spec.env.items()}, CANARY_ENV: canary.value.decode()}
        argv = [program, *(fill(a) for a in spec.argv[1:])]
        child_fds: list[int] = []
        if spec.delivery == "prompt":
            self._master, slave = os.openpty()
            env.setdefault("TERM", "dumb")
            # Opened by the new session leader, the terminal becomes its controlling tty (/dev/tty works).
            actions = [(os.POSIX_SPAWN_OPEN, 0, os.ttyname(slave), os.O_RDWR, 0),
                       (os.POSIX_SPAWN_DUP2, 0, 1), (os.POSIX_SPAWN_DUP2, 0, 2)]
            self._stdin_probe, output_fd = slave, self._master
        else:
            output_fd, output_w = os.pipe()
            child_fds.append(output_w)
            if spec.delivery == "stdin":
                stdin_r, self._stdin_w = os.pipe()
                self._stdin_probe = stdin_r
                actions = [(os.POSIX_SPAWN_DUP2, stdin_r, 0)]
            else:
                actions = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0)]
            actions += [(os.POSIX_SPAWN_DUP2, output_w, 1), (os.POSIX_SPAWN_DUP2, output_w, 2)]
        self._own_fds = {fd for fd in (output_fd, self._stdin_probe, self._stdin_w) if fd is not None}
        try:
            self.pid = spawn_in(spec.cwd, argv, env, actions, cgroup and cgroup.procs_file)
            self.since = start_time(self.pid)
        except OSError as e:
            self._close_all()
            raise CommandUnavailable(f"cannot start {argv[0]}: {e.strerror or e}") from None
        finally:
            for fd in child_fds:
                os.close(fd)
        self._output_fd = output_fd
        self._reader = threading.Thread(target=self._read_output, name="command-output", daemon=True)
        self._reader.start()

    # --- delivery --------------------------------------------------------------------------------------------

    def deliver(self, timeout: float) -> int:
        """Give the program the secret: piped on stdin, typed when the prompt appears, or (already) in its file.
        Returns the output offset the first trigger counts from: the end of the prompt, else the very start
        (a program given its secret at start may answer before we look)."""
        payload = self.secret.value + (b"\n" if self.spec.newline else b"")
        if self.spec.delivery == "stdin":
            os.write(self._stdin_w, payload)   # at most 4 KiB + 1: fits the pipe, never blocks
            self._close(self._stdin_w)         # end of input, as with `prog < file`
            self.delivered = "piped on stdin"
            return 0
        if self.spec.delivery == "prompt":
            prompt_end = self.wait_for(Trigger("output", pattern=self.spec.prompt), 0, timeout, "its prompt")
            os.write(self._master, payload)
            self.delivered = f"typed at the prompt /{self.spec.prompt}/"
            return prompt_end
        self.delivered = "written to the file the program was given"
        return 0

    def consumed(self) -> str | None:
        """How we know the program took the secret in, or None if it has not (yet)."""
        if self._watch is not None:
            self._watch.poll()
            return "the program read the secret file" if self._watch.read else None
        try:
            waiting = _bytes_waiting(self._stdin_probe)
        except OSError:
            return None
        return None if waiting else f"the program read the secret ({self.delivered})"

    def unconsumed_reason(self) -> str:
        if self._watch is not None:
            return "the program never read the secret file" + (" (it opened it)" if self._watch.opened else "")
        try:
            return f"{_bytes_waiting(self._stdin_probe)} byte(s) of the secret are still unread on its {'terminal' if self._master else 'stdin'}"
        except OSError:
            return "the program did not take the secret in"

    # --- triggers --------------------------------------------------------------------------------------------

    @property
    def output_offset(self) -> int:
        with self._output_lock:
            return self._output_base + len(self._output)

    def wait_for(self, trigger: Trigger, since: int, timeout: float, what: str) -> int:
        """Block until `trigger` fires, counting from output offset `since` and from now; returns the output offset
        reached. TargetError (process group killed) if the program ends first or the timeout passes.
        The timeout bounds the program's response; the trigger's own wait (delay=S, idle=S) comes on top of it."""
        started = time.monotonic()
        deadline = started + trigger.seconds + timeout
        pattern = re.compile(trigger.pattern.encode("utf-8")) if trigger.kind == "output" else None
        cpu, still_since = self._cpu_ticks(), started
        while True:
            now = time.monotonic()
            if pattern is not None:
                with self._output_lock:
                    window = self._output[max(0, since - self._output_base):]
                    match = pattern.search(window)
                    if match:
                        return max(since, self._output_base) + match.end()
            elif trigger.kind == "delay" and now - started >= trigger.seconds:
                return self.output_offset
            elif trigger.kind == "idle":
                ticks = self._cpu_ticks()
                if ticks != cpu or self._last_output_at > still_since:
                    cpu, still_since = ticks, now
                elif now - still_since >= trigger.seconds:
                    return self.output_offset
            if self.poll() is not None:
                self.kill()
                raise TargetError(f"the program ended ({describe_status(self.status)}) before {what} ({trigger.describe()})"
                                  + self._output_note())
            if now > deadline:
                self.kill()
                waited = f"{timeout:g} s" + (f" + the trigger's {trigger.seconds:g} s" if trigger.seconds else "")
                raise TargetError(f"timed out after {waited} waiting for {what} ({trigger.describe()}); "
                                  "process group killed" + self._output_note())
            time.sleep(POLL_S)

    def _cpu_ticks(self) -> int | None:
        try:
            fields = stat_fields(f"/proc/{self.pid}/stat")
        except OSError:
            return None
        return int(fields[11]) + int(fields[12])   # utime + stime of the whole process

    # --- output ----------------------------------------------------------------------------------------------

    def _read_output(self) -> None:
        while True:
            try:
                ready, _, _ = select.select([self._output_fd], [], [], 0.2)
                if not ready:
                    if self.status is not None:
                        return
                    continue
                data = os.read(self._output_fd, 65536)
            except OSError as e:   # EIO: the terminal's other side is gone; EBADF: closed by kill()
                if e.errno not in (errno.EIO, errno.EBADF):
                    raise
                return
            if not data:
                return
            with self._output_lock:
                self._output += data
                self._last_output_at = time.monotonic()
                if len(self._output) > OUTPUT_KEEP:
                    drop = len(self._output) - OUTPUT_KEEP
                    del self._output[:drop]
                    self._output_base += drop

    def masked_output(self) -> str:
        """The program's output with every form of the secret (and anything 4+ bytes long of it) masked."""
        with self._output_lock:
            text = bytes(self._output)
        return mask_secret(text, self._material).decode("utf-8", errors="replace").replace("\r\n", "\n")

    def log_tail(self, limit: int = 800) -> str:
        return self.masked_output()[-limit:].strip()

    def _output_note(self) -> str:
        tail = self.log_tail(300)
        return f"; its output: {tail}" if tail else "; it printed nothing"

    # --- lifecycle ---------------------------------------------------------------------------------------------

    def _release(self) -> None:
        self._reader.join(timeout=1.0)   # it stops at end of output, or within 0.2 s once the status is known
        self._close_all()

    def _close(self, fd: int | None) -> None:
        if fd in self._own_fds:
            self._own_fds.discard(fd)
            os.close(fd)

    def _close_all(self) -> None:
        for fd in list(self._own_fds):
            self._close(fd)
        if self._watch is not None:
            self._watch.close()
            self._watch = None
