"""The harness's private workspace: one work folder and one cgroup per harness process, cleaned up even when
the harness is killed.

- The work folder (`$TMPDIR/remanence-<pid>-<start time>-<random>`, 0700) holds each run's folder: target
  logs, kernel cores, a command target's secret file. Snapshots themselves live in memory (scratch.py).
- Every process a run starts joins that run's cgroup (cgroup2: `cgroup.kill` ends a whole tree, daemons that
  setsid or double-fork included), and the harness is a child subreaper, so such daemons become its
  children and are reaped at the end of their run.
- A sentinel process, started with the workspace in a session of its own, waits for the harness to go away
  (end of file on a pipe only the harness holds) and then kills what is left in the cgroups and deletes the
  work folder: a SIGKILLed harness leaves neither a process nor a secret on disk.
- At start, work folders and cgroups of remanence processes that no longer exist (a sentinel killed too)
  are removed.
"""
from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import re
import secrets
import shutil
import signal
import tempfile
import time
from pathlib import Path

from .process import HARNESS_HELPERS, reap, start_time, stat_fields

CGROUP2_ROOTS = (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup"))
PREFIX = "remanence-"
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NAME = 15
_PF_EXITING = 0x4                   # a task's flags in /proc/PID/stat: do_exit has begun
_OWNED = re.compile(re.escape(PREFIX) + r"(\d+)-(\d+)-[0-9a-f]{8}")
_libc = ctypes.CDLL(None, use_errno=True)


def _owner_gone(name: str) -> bool:
    """Whether the process named in a work folder's name has ended: exited, or killed and exiting or not yet reaped.
    Its locks are released while it exits, before it is a zombie (seen: the swap lock taken while the killed owner
    still read 'R', with PF_EXITING set)."""
    match = _OWNED.fullmatch(name)
    if not match:
        return False
    try:
        fields = stat_fields(f"/proc/{match[1]}/stat")
    except OSError:
        return True
    return int(fields[19]) != int(match[2]) or fields[0] in ("Z", "X") or bool(int(fields[6]) & _PF_EXITING)


def abandoned(path: Path) -> bool:
    """Whether `path` lies in the work folder of a remanence process that no longer exists."""
    return any(_owner_gone(folder.name) for folder in path.parents)


def _cgroup2_root() -> Path | None:
    for root in CGROUP2_ROOTS:
        if (root / "cgroup.procs").exists() and (root / "cgroup.subtree_control").exists() \
                and os.access(root, os.W_OK):
            return root
    return None


def _cgroup_procs(group: Path) -> list[int]:
    try:
        return [int(p) for p in (group / "cgroup.procs").read_text().split()]
    except OSError:
        return []


def kill_cgroup(group: Path, reap_them: bool, timeout: float = 5.0) -> None:
    """SIGKILL every process in `group` and its sub-groups, wait until they are gone (reaping those that are our
    children if `reap_them`), remove the groups."""
    for sub in sorted((p for p in group.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True) + [group]:
        members = _cgroup_procs(sub)
        if members:
            try:
                (sub / "cgroup.kill").write_text("1")
            except OSError:
                for pid in members:   # a kernel before 5.14: no cgroup.kill
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
        if reap_them:
            reap(members, timeout)
        deadline = time.monotonic() + timeout
        while True:
            try:
                sub.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.01)


class RunCgroup:
    """The cgroup of one run: everything the run starts, and everything those start."""

    def __init__(self, path: Path):
        self.path = path
        self.procs_file = str(path / "cgroup.procs")

    def members(self) -> list[int]:
        """Every process in the run's cgroup now."""
        return _cgroup_procs(self.path)

    def end(self) -> None:
        """Kill whatever is left of the run (daemons its programs started) and reap it."""
        kill_cgroup(self.path, reap_them=True)


class Workspace:
    def __init__(self) -> None:
        remove_stale()
        me = os.getpid()
        self.name = f"{PREFIX}{me}-{start_time(me)}-{secrets.token_hex(4)}"
        self.root = Path(tempfile.gettempdir()) / self.name
        root = _cgroup2_root()
        cgroup = root / self.name if root is not None else None
        # The sentinel before the folder and the cgroup: a harness killed between their creation and its start
        # would leave them behind (it cleans up whichever of them exists).
        self._sentinel, self._lifeline = _start_sentinel(self.root, cgroup)
        HARNESS_HELPERS.add(self._sentinel)
        try:
            self.root.mkdir(mode=0o700)
        except BaseException:
            self._stop_sentinel()
            raise
        self.cgroup: Path | None = None
        if cgroup is not None:
            try:
                cgroup.mkdir()
                self.cgroup = cgroup
            except OSError:
                pass
        self.cgroup_problem = None if self.cgroup else "no writable cgroup2 hierarchy: daemons a run starts are not tracked"
        # Orphans of our targets (daemons that double-fork) become our children, to be reaped at their run's end.
        _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        self._runs = 0

    def run_folder(self, label: str) -> Path:
        """A new private (0700) folder for one run."""
        self._runs += 1
        folder = self.root / f"{self._runs}-{re.sub(r'[^A-Za-z0-9._-]', '_', label)[:60]}"
        folder.mkdir(mode=0o700)
        return folder

    def run_cgroup(self, folder: Path) -> RunCgroup | None:
        if self.cgroup is None:
            return None
        path = self.cgroup / folder.name
        try:
            path.mkdir()
        except OSError:
            return None
        return RunCgroup(path)

    def close(self) -> None:
        if self.cgroup is not None:
            kill_cgroup(self.cgroup, reap_them=True)
        shutil.rmtree(self.root, ignore_errors=True)
        self._stop_sentinel()

    def _stop_sentinel(self) -> None:
        os.close(self._lifeline)        # the sentinel sees end of file, finds nothing left, and exits
        try:
            os.waitpid(self._sentinel, 0)
        except ChildProcessError:
            pass
        HARNESS_HELPERS.discard(self._sentinel)


def _start_sentinel(root: Path, cgroup: Path | None) -> tuple[int, int]:
    """Fork the sentinel; returns (its pid, the write end of its lifeline)."""
    # Loaded now, not when the harness is gone: an import then (the package upgraded meanwhile) could fail.
    from .snapshot.swap import release_swap_under
    lifeline_r, lifeline_w = os.pipe()
    pid = os.fork()
    if pid:
        os.close(lifeline_r)
        return pid, lifeline_w
    try:   # the sentinel: nothing here may raise out into the harness's code
        os.setsid()   # out of the harness's process group: a Ctrl-C or a group kill aimed at it passes us by
        _libc.prctl(PR_SET_NAME, b"remanence-watch", 0, 0, 0)    # what ps and top show
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
            signal.signal(sig, signal.SIG_IGN)
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.closerange(3, lifeline_r)
        os.closerange(lifeline_r + 1, os.sysconf("SC_OPEN_MAX"))
        while os.read(lifeline_r, 1):
            pass
        # Each step whatever became of the one before: a folder left is a secret on disk.
        with contextlib.suppress(Exception):
            if cgroup is not None:
                kill_cgroup(cgroup, reap_them=False)
        with contextlib.suppress(Exception):
            release_swap_under(root)
        shutil.rmtree(root, ignore_errors=True)
    finally:
        os._exit(0)


def _release_swap(folder: Path) -> None:
    """A swap file swapped on in the folder (the swap method's) cannot be deleted: swap it off first."""
    from .snapshot.swap import release_swap_under
    release_swap_under(folder)


def remove_stale() -> list[str]:
    """Remove work folders and cgroups left by remanence processes that no longer exist; returns their names."""
    removed = []
    for entry in Path(tempfile.gettempdir()).glob(PREFIX + "*"):
        if entry.is_dir() and not entry.is_symlink() and _owner_gone(entry.name):
            _release_swap(entry)
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(str(entry))
    root = _cgroup2_root()
    for group in root.glob(PREFIX + "*") if root else ():
        if _owner_gone(group.name):
            kill_cgroup(group, reap_them=False)
            removed.append(str(group))
    return removed


_current: Workspace | None = None


def workspace() -> Workspace:
    """The current workspace, started on first use; it ends with the command (session) or at exit."""
    global _current
    if _current is None:
        _current = Workspace()
        atexit.register(_current.close)
    return _current


@contextlib.contextmanager
def session():
    """One command: whatever workspace it starts is gone, with every process and file of its runs, when it ends."""
    global _current
    try:
        yield
    finally:
        if _current is not None:
            ending, _current = _current, None
            atexit.unregister(ending.close)
            ending.close()
