"""kernel-core: make the kernel dump the target's core (SIGABRT) and read that core.

This is what a crash leaves on disk: the kernel honours MADV_DONTDUMP and the target's coredump_filter, and
writes every thread's register sets (NT_PRSTATUS, NT_FPREGSET, NT_X86_XSTATE) as notes. It ends the target.

The harness owns the target's waitpid; this module never reaps it: the caller passes `wait_for_exit`.
"No core produced" is not an error: the returned Snapshot has no regions, `not_produced` says
`no core produced: <reason>` and `not_produced_cause` says whose doing it was. The program's own policy (it
lowered its hard RLIMIT_CORE to 0, it is not dumpable, a Go program without GOTRACEBACK=crash exits) is a
finding. The kernel unable to write the core (a read-only or unwritable folder, a full disk, a size limit, a
pipe core_pattern) is BLOCKED, and no cause established is UNKNOWN: neither proves anything about the program.
"""
from __future__ import annotations

import contextlib
import errno
import glob
import os
import re
import resource
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..model import NoImageCause, RegionKind, Snapshot
from . import CAP_SYS_RESOURCE, SnapshotError, has_capability
from ..process import signal_name
from .elfcore import CoreFormatError, CoreTruncated, snapshot_from_core
from .procmaps import read_mappings
from ..verdict import mib

METHOD = "kernel-core"
NO_CORE_PREFIX = "no core produced: "
CORE_PATTERN = Path("/proc/sys/kernel/core_pattern")
CORE_USES_PID = Path("/proc/sys/kernel/core_uses_pid")
SUID_DUMPABLE = Path("/proc/sys/fs/suid_dumpable")
_ULONG_MAX = (1 << 64) - 1           # how the kernel prints RLIM_INFINITY for %c
_MTIME_SLACK_S = 2.0                 # file timestamps are coarse (jiffies); accept a core this much "older"
_folder_locks: dict[str, threading.Lock] = {}
_folder_locks_guard = threading.Lock()


# --- core_pattern ----------------------------------------------------------------------------------------

def read_core_pattern() -> tuple[str, bool]:
    """(core_pattern, core_uses_pid). OSError when /proc/sys/kernel/core_pattern cannot be read."""
    pattern = CORE_PATTERN.read_text().rstrip("\n")
    try:
        uses_pid = CORE_USES_PID.read_text().strip() not in ("", "0")
    except OSError:
        uses_pid = False
    return pattern, uses_pid


def pattern_unusable(pattern: str) -> str | None:
    """Why cores written per `pattern` cannot be collected by the harness, or None."""
    if pattern.startswith("|"):
        return f"core_pattern pipes cores to {pattern!r}: the harness cannot collect them"
    if pattern.startswith("@"):
        return f"core_pattern sends cores to the socket {pattern!r}: the harness cannot collect them"
    if not pattern.strip():
        return "core_pattern is empty: the kernel writes no core file"
    return None


def kernel_core_unavailable() -> str | None:
    """None if this machine can produce kernel cores the harness can find, else why not."""
    if not os.path.exists("/proc/self/status"):
        return "/proc is not mounted"
    try:
        pattern, _ = read_core_pattern()
    except OSError as exc:
        return f"cannot read {CORE_PATTERN}: {exc.strerror or exc}"
    return pattern_unusable(pattern)


@dataclass(frozen=True)
class CoreFacts:
    """What the kernel substitutes for each core_pattern specifier. None / () = unknown: matched loosely.
    Multi-valued fields (thread ids, thread names) list every thread that may be the dumping one."""

    pid: int                                  # %p: thread-group id in the target's own pid namespace
    global_pid: int | None = None             # %P: thread-group id in the initial pid namespace
    tids: tuple[int, ...] = ()                # %i: thread ids in the target's own pid namespace
    global_tids: tuple[int, ...] = ()         # %I
    uid: int | None = None                    # %u: real uid (initial user namespace)
    gid: int | None = None                    # %g
    signal: int | None = None                 # %s
    time: int | None = None                   # %t: seconds since the epoch
    hostname: str | None = None               # %h
    comms: tuple[str, ...] = ()               # %e: the dumping thread's comm
    exe: str | None = None                    # %E / %f: the executable's path
    core_limit: int | None = None             # %c: soft RLIMIT_CORE (RLIM_INFINITY -> ULONG_MAX)
    dumpable: int | None = None               # %d: 0, 1 or 2
    cpu: int | None = None                    # %C


def escape_component(value: str) -> str:
    """cn_esc_printf: '/' becomes '!', a whole "." or ".." gets a '!' first character, "" becomes "!"."""
    if value in (".", ".."):
        value = "!" + value[1:]
    if value == "":
        value = "!"
    return value.replace("/", "!")


def _specifier_values(spec: str, facts: CoreFacts) -> tuple[str, ...] | None:
    """The text(s) the kernel may put for %<spec>; None when unknown; ("",) for specifiers it drops."""
    def one(value):
        return None if value is None else (str(value),)

    if spec == "%":
        return ("%",)
    if spec == "p":
        return (str(facts.pid),)
    if spec == "P":
        return one(facts.global_pid)
    if spec == "i":
        return tuple(str(t) for t in facts.tids) or None
    if spec == "I":
        return tuple(str(t) for t in facts.global_tids) or None
    if spec == "u":
        return one(facts.uid)
    if spec == "g":
        return one(facts.gid)
    if spec == "d":
        return one(facts.dumpable)
    if spec == "s":
        return one(facts.signal)
    if spec == "t":
        return one(facts.time)
    if spec == "h":
        return None if facts.hostname is None else (escape_component(facts.hostname),)
    if spec == "e":
        return tuple(dict.fromkeys(escape_component(c) for c in facts.comms)) or None
    if spec == "E":
        return None if facts.exe is None else (escape_component(facts.exe),)
    if spec == "f":
        return None if facts.exe is None else (escape_component(facts.exe.rsplit("/", 1)[-1]),)
    if spec == "c":
        if facts.core_limit is None:
            return None
        return (str(_ULONG_MAX if facts.core_limit in (resource.RLIM_INFINITY, _ULONG_MAX) else facts.core_limit),)
    if spec == "C":
        return one(facts.cpu)
    return ("",)                              # unknown specifiers and %F (pipes only) expand to nothing


_NUMERIC = frozenset("pPiIugdstcC")


def _tokens(pattern: str):
    """Split a file core_pattern the way format_corename walks it: ("lit", text) and ("spec", letter)."""
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c != "%":
            yield "lit", c
            i += 1
            continue
        if i + 1 >= len(pattern):        # a single % at the end is dropped
            return
        yield "spec", pattern[i + 1]
        i += 2


def _pid_in_pattern(pattern: str) -> bool:
    return any(kind == "spec" and value == "p" for kind, value in _tokens(pattern))


def expand_core_pattern(pattern: str, facts: CoreFacts, core_uses_pid: bool = False) -> str:
    """The core file name the kernel makes from `pattern` (a file pattern, not a pipe).
    ValueError when a specifier it uses is unknown or ambiguous in `facts` (see core_pattern_regex)."""
    if pattern_unusable(pattern):
        raise ValueError(pattern_unusable(pattern))
    out = []
    for kind, value in _tokens(pattern):
        if kind == "lit":
            out.append(value)
            continue
        values = _specifier_values(value, facts)
        if values is None or len(values) != 1:
            raise ValueError(f"%{value} cannot be expanded exactly: "
                             + ("unknown" if values is None else f"any of {', '.join(values)}"))
        out.append(values[0])
    if core_uses_pid and not _pid_in_pattern(pattern):
        out.append(f".{facts.pid}")
    return "".join(out)


def core_pattern_regex(pattern: str, facts: CoreFacts, core_uses_pid: bool = False, loose: bool = False) -> re.Pattern:
    """A regex for the core's path: known specifiers match their value(s), unknown ones any value
    (digits for numbers, any text without '/' otherwise). loose=True treats every specifier but %p and %% as
    unknown (for when the facts guessed wrong, e.g. a different pid or user namespace)."""
    out = []
    for kind, value in _tokens(pattern):
        if kind == "lit":
            out.append(re.escape(value))
            continue
        values = _specifier_values(value, facts)
        if loose and value not in "p%" and values != ("",):
            values = None
        if values is None:
            out.append(r"\d+" if value in _NUMERIC else r"[^/]+")
        else:
            out.append("(?:" + "|".join(re.escape(v) for v in values) + ")" if len(values) > 1 else re.escape(values[0]))
    if core_uses_pid and not _pid_in_pattern(pattern):
        out.append(re.escape(f".{facts.pid}"))
    return re.compile("".join(out))


def core_pattern_glob(pattern: str, core_uses_pid: bool = False, pid: int | None = None) -> str:
    """A glob over every name `pattern` can produce (each specifier a '*'), to list candidates."""
    out = []
    for kind, value in _tokens(pattern):
        if kind == "lit":
            out.append(glob.escape(value))
        elif value == "%":
            out.append(glob.escape("%"))
        else:
            out.append("*")
    if core_uses_pid and not _pid_in_pattern(pattern):
        out.append(f".{pid}" if pid is not None else ".*")
    return re.sub(r"\*+", "*", "".join(out))


def existing_cores(pattern: str, cwd: Path, core_uses_pid: bool, pid: int) -> frozenset[tuple[str, int, int]]:
    """(path, inode, mtime_ns) of files that could be taken for the core, listed before the signal."""
    name = core_pattern_glob(pattern, core_uses_pid, pid)
    found = set()
    for path in glob.glob(name if name.startswith("/") else os.path.join(str(cwd), name)):
        try:
            st = os.lstat(path)
        except OSError:
            continue
        found.add((path, st.st_ino, st.st_mtime_ns))
    return frozenset(found)


def find_core(pattern: str, facts: CoreFacts, cwd: Path, core_uses_pid: bool, not_before: float,
              preexisting: frozenset[tuple[str, int, int]] = frozenset()) -> tuple[Path | None, str]:
    """The core file the kernel wrote per `pattern` (a relative pattern is relative to the target's cwd):
    a regular file modified at or after `not_before` (epoch seconds) and not unchanged since `preexisting`
    (see existing_cores). Returns (path or None, how it was matched)."""
    def resolve(name: str) -> str:
        return name if name.startswith("/") else os.path.join(str(cwd), name)

    def fresh(path: str) -> os.stat_result | None:
        try:
            st = os.lstat(path)
        except OSError:
            return None
        if (path, st.st_ino, st.st_mtime_ns) in preexisting:
            return None
        return st if stat.S_ISREG(st.st_mode) and st.st_mtime >= not_before - _MTIME_SLACK_S else None

    try:
        exact = resolve(expand_core_pattern(pattern, facts, core_uses_pid))
    except ValueError:
        exact = None
    if exact is not None and fresh(exact):
        return Path(exact), f"exact name {exact}"
    candidates = glob.glob(resolve(core_pattern_glob(pattern, core_uses_pid, facts.pid)))
    for loose in (False, True):
        regex = core_pattern_regex(pattern, facts, core_uses_pid, loose)
        full = re.compile(re.escape(str(cwd).rstrip("/") + "/") + regex.pattern if not pattern.startswith("/") else regex.pattern)
        matches = [(st.st_mtime, c) for c in candidates if full.fullmatch(c) and (st := fresh(c))]
        if matches:
            path = max(matches)[1]
            how = "matched with unknown specifiers as wildcards" if not loose else \
                "matched loosely (every specifier but %p a wildcard)"
            return Path(path), f"{how}: {path}" + (f" (newest of {len(matches)})" if len(matches) > 1 else "")
    return None, f"nothing matched {resolve(core_pattern_glob(pattern, core_uses_pid, facts.pid))!r} modified since the signal"


# --- facts about the live target ------------------------------------------------------------------------

def _status_fields(pid: int) -> dict[str, list[str]]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.split()
    return fields


def _identity_id_map(path: str) -> bool:
    try:
        lines = Path(path).read_text().split("\n")
    except OSError:
        return False
    return [line.split() for line in lines if line.strip()] == [["0", "0", "4294967295"]]


def _same_namespace(pid: int, kind: str) -> bool:
    try:
        return os.stat(f"/proc/{pid}/ns/{kind}").st_ino == os.stat(f"/proc/self/ns/{kind}").st_ino
    except OSError:
        return False


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def _threads(pid: int) -> list[tuple[int, str | None]]:
    try:
        tids = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return []
    return [(tid, (_read(f"/proc/{pid}/task/{tid}/comm") or "").rstrip("\n") or None) for tid in tids]


def gather_facts(pid: int) -> tuple[CoreFacts, Path | None]:
    """Facts for core_pattern expansion read from /proc before the signal, and the target's cwd."""
    status = _status_fields(pid)
    ns_tgid = [int(x) for x in status.get("NStgid", [str(pid)])]
    threads = _threads(pid)
    global_tids, tids = [], []
    for tid, _ in threads:
        try:
            ns_pid = [int(x) for x in _status_fields_task(pid, tid).get("NSpid", [str(tid)])]
        except OSError:
            continue
        tids.append(ns_pid[-1])
        global_tids.append(ns_pid[0])
    ids_known = _identity_id_map(f"/proc/{pid}/uid_map")
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        exe = None
    try:
        cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        cwd = None
    try:
        soft, _ = resource.prlimit(pid, resource.RLIMIT_CORE)
    except OSError:
        soft = None
    facts = CoreFacts(
        pid=ns_tgid[-1],
        # /proc shows pids from its own namespace down: its first NStgid value is the global pid only when
        # that namespace is the initial one, which cannot be proven from inside; a likely value (find_core
        # falls back to a loose match when it is wrong).
        global_pid=ns_tgid[0],
        tids=tuple(tids), global_tids=tuple(global_tids),
        uid=int(status["Uid"][0]) if ids_known and "Uid" in status else None,
        gid=int(status["Gid"][0]) if ids_known and "Gid" in status else None,
        hostname=os.uname().nodename if _same_namespace(pid, "uts") else None,
        comms=tuple(c for _, c in threads if c is not None),
        exe=exe, core_limit=soft)
    return facts, cwd


def _status_fields_task(pid: int, tid: int) -> dict[str, list[str]]:
    fields = {}
    for line in Path(f"/proc/{pid}/task/{tid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.split()
    return fields


def dumpable_observation(pid: int) -> tuple[bool | None, str]:
    """(dumpable or None if it cannot be told, how it was told). PR_GET_DUMPABLE only answers for the
    calling process; from outside, a non-dumpable process's /proc/PID files are owned by root. That tells
    only when the target's effective uid is not root."""
    try:
        status = _status_fields(pid)
        euid, egid = int(status["Uid"][1]), int(status["Gid"][1])
        st = os.stat(f"/proc/{pid}/status")
    except (OSError, KeyError, ValueError, IndexError):
        return None, "dumpable: unknown (/proc/PID/status unreadable)"
    if euid == 0 and egid == 0:
        return None, ("dumpable: not observable (the target runs as root, so its /proc files are root-owned "
                      "whether dumpable or not; PR_GET_DUMPABLE answers only the process itself)")
    if (st.st_uid, st.st_gid) == (euid, egid):
        return True, f"dumpable: yes (/proc/{pid} files owned by the target's uid {euid})"
    if (st.st_uid, st.st_gid) == (0, 0):
        return False, f"dumpable: no (/proc/{pid} files owned by root, not the target's uid {euid})"
    return None, f"dumpable: unknown (/proc/{pid}/status owned by {st.st_uid}:{st.st_gid}, target euid {euid})"


def _is_go_binary(exe: str | None) -> bool:
    if not exe:
        return False
    try:
        from elftools.elf.elffile import ELFFile
        with open(exe, "rb") as f:
            elf = ELFFile(f)
            return any(elf.get_section_by_name(n) is not None for n in (".go.buildinfo", ".gopclntab", ".note.go.buildid"))
    except Exception:
        return False


def _environ_value(pid: int, name: str) -> str | None:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    for entry in raw.split(b"\0"):
        key, sep, value = entry.partition(b"=")
        if sep and key == name.encode():
            return value.decode(errors="replace")
    return None


def describe_status(status: int) -> str:
    if os.WIFEXITED(status):
        return f"exited with status {os.WEXITSTATUS(status)}"
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return f"killed by {signal_name(sig)}" + (" (core dumped)" if os.WCOREDUMP(status) else ", no core dumped")
    return f"wait status {status:#x}"


# --- can the kernel write the core, and if it did not, why not? ------------------------------------------

_CAP_DAC_OVERRIDE = 1
_PAGE = resource.getpagesize()       # the kernel writes no core below one page of RLIMIT_CORE (min_coredump)
_DUMPING_SIGNALS = frozenset({signal.SIGABRT, signal.SIGSEGV, signal.SIGQUIT, signal.SIGBUS, signal.SIGILL,
                              signal.SIGFPE, signal.SIGTRAP, signal.SIGSYS, signal.SIGXCPU, signal.SIGXFSZ})


@dataclass(frozen=True)
class CoreWriter:
    """The dumping process's credentials: the kernel creates the core file with them."""

    fsuid: int
    fsgid: int
    groups: frozenset[int]
    capabilities: int                # CapEff

    @classmethod
    def of(cls, pid: int) -> CoreWriter:
        status = _status_fields(pid)
        return cls(int(status["Uid"][3]), int(status["Gid"][3]), frozenset(int(g) for g in status.get("Groups", [])),
                   int(status["CapEff"][0], 16))

    def has(self, capability: int) -> bool:
        return bool(self.capabilities >> capability & 1)

    def may_create_in(self, folder: os.stat_result) -> bool:
        """Write and search permission on the folder, by its mode bits."""
        if self.has(_CAP_DAC_OVERRIDE):
            return True
        shift = 6 if folder.st_uid == self.fsuid else \
            3 if folder.st_gid == self.fsgid or folder.st_gid in self.groups else 0
        return folder.st_mode >> shift & 0o3 == 0o3


def core_folder(pattern: str, facts: CoreFacts, cwd: Path) -> Path | None:
    """The folder the kernel creates the core in (a relative pattern is relative to the target's cwd); None when
    its name uses values not known before the crash."""
    directory = pattern.rpartition("/")[0] or ("/" if pattern.startswith("/") else "")
    if "%" in directory:
        try:
            directory = expand_core_pattern(directory, facts)
        except ValueError:
            return None
    return Path(directory) if directory.startswith("/") else cwd / directory


def dump_size_floor(live) -> int:
    """Bytes the core needs at the least: the resident or swapped anonymous memory it must hold."""
    return sum((m.resident_kb + m.swap_kb) * 1024 for m in live
               if not m.dont_dump and m.kind in (RegionKind.HEAP, RegionKind.STACK, RegionKind.ANONYMOUS))


def _free_bytes(vfs: os.statvfs_result, writer: CoreWriter | None) -> int:
    reserved_too = writer is not None and writer.has(CAP_SYS_RESOURCE)    # root's reserved blocks
    return (vfs.f_bfree if reserved_too else vfs.f_bavail) * vfs.f_frsize


def write_obstacles(pid: int, folder: Path | None, core_soft_limit: int | None, live) -> tuple[list[str], list[str]]:
    """Read before the signal: (what stops the kernel writing `pid`'s core into `folder`, what was checked and
    found fine). OSError when the process is gone. A soft limit of 0 is not judged here (see no_core_cause)."""
    obstacles, checked = [], []
    floor = dump_size_floor(live)
    checked.append(f"the core needs at least {mib(floor)}")
    if core_soft_limit is not None and core_soft_limit not in (0, resource.RLIM_INFINITY):
        if core_soft_limit < _PAGE:
            obstacles.append(f"RLIMIT_CORE soft limit of {core_soft_limit} bytes is below one page: the kernel "
                             f"writes no core")
        elif core_soft_limit < floor:
            obstacles.append(f"RLIMIT_CORE soft limit of {core_soft_limit} bytes cuts the core short")
    file_limit = _limits_from_proc(pid, "Max file size")
    if file_limit is not None and file_limit[0] != resource.RLIM_INFINITY and file_limit[0] < max(floor, _PAGE):
        obstacles.append(f"RLIMIT_FSIZE of {file_limit[0]} bytes cuts the core short")
    writer = CoreWriter.of(pid)
    if folder is None:
        checked.append("the core's folder: not known before the crash (core_pattern uses values known only then)")
        return obstacles, checked
    try:
        st, vfs = os.stat(folder), os.statvfs(folder)
    except OSError as exc:
        obstacles.append(f"the core's folder {folder} cannot be reached: {exc.strerror or exc}")
        return obstacles, checked
    if not stat.S_ISDIR(st.st_mode):
        obstacles.append(f"{folder}, where the core would go, is not a folder")
        return obstacles, checked
    if vfs.f_flag & os.ST_RDONLY:
        obstacles.append(f"{folder} is on a read-only mount")
    else:
        checked.append(f"{folder} on a writable mount")
    if _has_acl(folder):
        checked.append(f"{folder} has an ACL: write permission not judged from its mode")
    elif writer.may_create_in(st):
        checked.append(f"writable by the target's fsuid {writer.fsuid}"
                       + (" (CAP_DAC_OVERRIDE)" if writer.has(_CAP_DAC_OVERRIDE) else ""))
    else:
        obstacles.append(f"{folder} (mode {stat.S_IMODE(st.st_mode):o}, owner {st.st_uid}:{st.st_gid}) is not "
                         f"writable by the target (fsuid {writer.fsuid}, fsgid {writer.fsgid}, no CAP_DAC_OVERRIDE)")
    free = _free_bytes(vfs, writer)
    if free < floor:
        obstacles.append(f"only {mib(free)} free on the file system of {folder}")
    else:
        checked.append(f"{mib(free)} free")
    if vfs.f_files and not vfs.f_favail:
        obstacles.append(f"no free inode on the file system of {folder}")
    return obstacles, checked


def _has_acl(folder: Path) -> bool:
    try:
        os.getxattr(folder, "system.posix_acl_access")
        return True
    except OSError:
        return False


def full_after_the_crash(folder: Path | None) -> list[str]:
    """The disk the core went to filled up while it was written: read after the crash."""
    try:
        full = folder is not None and os.statvfs(folder).f_bavail == 0
    except OSError:
        return []
    return [f"the file system of {folder} is full after the crash"] if full else []


@dataclass(frozen=True)
class NoCoreFacts:
    """What was read before the signal that decides why no core appeared."""

    limit_before: tuple[int, int] | None
    limit_after: tuple[int, int] | None
    limit_problem: str | None
    dumpable: bool | None
    dumpable_note: str
    is_go: bool
    gotraceback: str | None
    obstacles: list[str]
    checked: list[str]


def no_core_cause(status: int, facts: NoCoreFacts) -> tuple[NoImageCause, str]:
    """Why the kernel dumped no core for a process that ended with wait `status` after SIGABRT. POLICY only on
    evidence that the program forbade it; BLOCKED on evidence that the environment stopped it; else UNKNOWN."""
    outcome = describe_status(status)
    if os.WIFEXITED(status):
        reason = outcome + " instead of dumping core"
        if facts.is_go and facts.gotraceback != "crash":
            return NoImageCause.POLICY, reason + " (is GOTRACEBACK=crash set?)"
        if facts.is_go:
            return NoImageCause.POLICY, reason + " (the Go program handled SIGABRT itself?)"
        return NoImageCause.POLICY, reason + " (the program handled SIGABRT itself)"
    if not os.WIFSIGNALED(status):
        return NoImageCause.UNKNOWN, outcome
    if os.WTERMSIG(status) not in _DUMPING_SIGNALS:
        if os.WTERMSIG(status) == signal.SIGKILL:
            return NoImageCause.UNKNOWN, f"{outcome}: that signal does not dump core (the OOM killer? another process?)"
        return NoImageCause.POLICY, f"{outcome}: that signal does not dump core (the program's own signal handling)"
    # The kernel's order: dumpability, then the core limit, then creating the file.
    if facts.dumpable is False:
        return NoImageCause.POLICY, f"{outcome} (process not dumpable)"
    after = facts.limit_after
    if after is None:
        return NoImageCause.UNKNOWN, f"{outcome}; {facts.limit_problem}"
    if after[0] == 0:
        harness_hard = resource.getrlimit(resource.RLIMIT_CORE)[1]
        if after[1] == 0 and harness_hard == 0:
            return NoImageCause.BLOCKED, ("RLIMIT_CORE hard limit is 0 for the harness as well: the environment "
                                         "forbids core dumps (ulimit -Hc 0)")
        # hard 0 below the harness's own: the program lowered it. Otherwise the soft limit of a target of another
        # uid could not be raised: the environment's default, not the program's choice.
        return (NoImageCause.POLICY if after[1] == 0 else NoImageCause.BLOCKED), facts.limit_problem
    if facts.obstacles:
        return NoImageCause.BLOCKED, f"{outcome}: the kernel could not write the core: {'; '.join(facts.obstacles)}"
    return NoImageCause.UNKNOWN, (f"{outcome}, and no cause was established: {facts.dumpable_note}; checked: "
                                  f"RLIMIT_CORE {_limit_text(after[0])}, " + ", ".join(facts.checked))


# --- the method -----------------------------------------------------------------------------------------

def _limits_from_proc(pid: int, name: str = "Max core file size") -> tuple[int, int] | None:
    """A limit from /proc/PID/limits (readable even when prlimit() is refused): RLIMIT_CORE by default."""
    for line in (_read(f"/proc/{pid}/limits") or "").splitlines():
        if line.startswith(name):
            fields = line[len(name):].split()
            try:
                return tuple(resource.RLIM_INFINITY if f == "unlimited" else int(f) for f in fields[:2])
            except ValueError:
                return None
    return None


OWN_LIMIT_ZERO = "the program set its own core limit to 0"


def raise_core_limit(pid: int, program_policy: bool = False) -> tuple[tuple[int, int] | None, tuple[int, int] | None, str | None]:
    """Raise RLIMIT_CORE of `pid` alone to unlimited (or as far as its hard limit lets us). With `program_policy` (a
    crash of the program's own), only the soft limit, up to the hard limit the program left: a hard limit it lowered
    is its policy. Returns (limit before, limit after, why it is not unlimited or None)."""
    inf = resource.RLIM_INFINITY
    if program_policy:
        try:
            before = resource.prlimit(pid, resource.RLIMIT_CORE)
            if before[1] == 0:
                return before, before, OWN_LIMIT_ZERO
            resource.prlimit(pid, resource.RLIMIT_CORE, (before[1], before[1]))
        except ProcessLookupError as exc:
            raise SnapshotError(f"process {pid} does not exist (exited?)") from exc
        except OSError as exc:
            return None, None, f"cannot raise the soft RLIMIT_CORE of process {pid}: {errno.errorcode.get(exc.errno, exc.errno)}"
        return before, (before[1], before[1]), None if before[1] == inf else \
            f"RLIMIT_CORE hard limit is {before[1]} (the program's): the core is cut at that size"
    no_cap = "" if has_capability(CAP_SYS_RESOURCE) else ", which the harness lacks"
    try:
        before = resource.prlimit(pid, resource.RLIMIT_CORE)
    except ProcessLookupError as exc:
        raise SnapshotError(f"process {pid} does not exist (exited?)") from exc
    except OSError as exc:
        # prlimit() on a process whose uids/gids differ from ours needs CAP_SYS_RESOURCE, even to read.
        error = errno.errorcode.get(exc.errno, str(exc.errno))
        before = _limits_from_proc(pid)
        if before is None:
            return None, None, f"cannot read RLIMIT_CORE of process {pid}: {error}"
        why = (f"RLIMIT_CORE of process {pid} cannot be changed: {error} (prlimit on a process of another uid "
               f"needs CAP_SYS_RESOURCE{no_cap}); its own soft limit is {_limit_text(before[0])}")
        if before[0] == 0:
            why = (f"RLIMIT_CORE soft limit is 0 and could not be raised: {error} (prlimit on a process of another "
                   f"uid needs CAP_SYS_RESOURCE{no_cap}; start the target with its soft core limit raised)")
        return before, before, why
    try:
        resource.prlimit(pid, resource.RLIMIT_CORE, (inf, inf))
        return before, (inf, inf), None
    except ProcessLookupError as exc:
        raise SnapshotError(f"process {pid} does not exist (exited?)") from exc
    except OSError as exc:
        first_error = errno.errorcode.get(exc.errno, str(exc.errno))
    hard = before[1]
    could_not = f"could not be raised: {first_error}" + (f" (raising a hard limit needs CAP_SYS_RESOURCE{no_cap})"
                                                          if no_cap else "")
    if hard == 0:      # below the harness's own (inherited from it otherwise): the program lowered it
        return before, before, f"{OWN_LIMIT_ZERO}, and it {could_not}"
    why = f"RLIMIT_CORE hard limit is {_limit_text(hard)} (set by the target) and {could_not}"
    try:
        resource.prlimit(pid, resource.RLIMIT_CORE, (hard, hard))
    except OSError as exc:
        return before, before, why + f"; raising the soft limit to it failed too: {errno.errorcode.get(exc.errno, exc.errno)}"
    return before, (hard, hard), why + ": the core is cut at that size"


def _limit_text(value: int) -> str:
    return "unlimited" if value == resource.RLIM_INFINITY else str(value)


def _private_copy(src: Path, core_dir: Path, pid: int) -> Path:
    """Move the core into core_dir as a new 0600 file (rename when possible, else copy and remove)."""
    fd, name = tempfile.mkstemp(prefix=f"{METHOD}-{pid}-", suffix=".core", dir=core_dir)
    dest = Path(name)
    try:
        try:
            os.close(fd)
            os.replace(src, dest)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            with open(src, "rb") as inp, open(dest, "wb") as out:
                shutil.copyfileobj(inp, out, 8 << 20)
            os.unlink(src)
        os.chmod(dest, 0o600)
        try:                         # a non-root target's core is its own; the copy is the harness's
            os.chown(dest, os.getuid(), os.getgid())
        except OSError:
            pass
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    return dest


def _no_core(core_dir: Path, pid: int, cause: NoImageCause, reason: str, notes: list[str]) -> Snapshot:
    missing = Path(core_dir) / f"{METHOD}-{pid}.no-core"
    missing.unlink(missing_ok=True)
    return Snapshot(method=METHOD, path=missing, regions=[], notes=notes, not_produced=NO_CORE_PREFIX + reason,
                    not_produced_cause=cause)


def take_kernel_core(pid: int, core_dir: Path, wait_for_exit: Callable[[float], int], timeout: float = 120,
                     crash: Callable[[], None] | None = None) -> Snapshot:
    """`_take_kernel_core`, one at a time per folder the core goes to: two runs at once whose cores land in the same
    file (core_pattern `core`, user programs sharing a cwd) would otherwise take each other's."""
    with _one_core_at_a_time_in(_core_folder_key(pid)):
        return _take_kernel_core(pid, core_dir, wait_for_exit, timeout, crash)


def _core_folder_key(pid: int) -> str:
    try:
        pattern, _ = read_core_pattern()
        return os.path.dirname(pattern) if pattern.startswith("/") else os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return ""      # _take_kernel_core says what is wrong; meanwhile one lock for all


def _one_core_at_a_time_in(folder: str) -> threading.Lock:
    with _folder_locks_guard:
        return _folder_locks.setdefault(folder, threading.Lock())


def _take_kernel_core(pid: int, core_dir: Path, wait_for_exit: Callable[[float], int], timeout: float,
                      crash: Callable[[], None] | None) -> Snapshot:
    """SIGABRT the (blocked, live) child `pid` with its core limit raised, wait for it with `wait_for_exit`,
    find the core per core_pattern and move it into `core_dir` (0600). Returns the core's Snapshot, or a
    region-less Snapshot with `not_produced` (`no core produced: <reason>`) and `not_produced_cause`.
    `crash`, instead of SIGABRT: lets the target go on to crash by itself (an expected crash); its core then
    follows the program's own core limit (only the soft limit is raised, up to the hard limit it left)."""
    provocation = "continue" if crash else "SIGABRT"
    core_dir = Path(core_dir)
    started = time.monotonic()
    try:
        pattern, uses_pid = read_core_pattern()
    except OSError as exc:
        raise SnapshotError(f"kernel-core unavailable: cannot read {CORE_PATTERN}: {exc}") from exc
    if unusable := pattern_unusable(pattern):    # the target is left running: nothing to gain from aborting it
        return _finish(_no_core(core_dir, pid, NoImageCause.BLOCKED, unusable, []), started)

    live = read_mappings(pid)        # names and smaps flags; the target is blocked, so they stay valid
    if not live:
        raise SnapshotError(f"process {pid} has no memory mappings (exited?)")
    try:
        facts, cwd = gather_facts(pid)
    except OSError as exc:
        raise SnapshotError(f"process {pid} does not exist (exited?)") from exc
    cwd = cwd or core_dir
    before, after, limit_problem = raise_core_limit(pid, program_policy=crash is not None)
    if after is not None:
        facts = CoreFacts(**{**facts.__dict__, "core_limit": after[0]})
    dumpable, dumpable_note = dumpable_observation(pid)
    coredump_filter = (_read(f"/proc/{pid}/coredump_filter") or "").strip() or "unknown"
    is_go = _is_go_binary(facts.exe)
    gotraceback = _environ_value(pid, "GOTRACEBACK") if is_go else None
    suid_dumpable = (_read(str(SUID_DUMPABLE)) or "?").strip()
    folder = core_folder(pattern, facts, cwd)
    try:
        obstacles, checked = write_obstacles(pid, folder, after[0] if after else None, live)
    except OSError as exc:
        raise SnapshotError(f"process {pid} does not exist (exited?)") from exc
    notes = [
        f"core_pattern {pattern!r}, core_uses_pid {int(uses_pid)}, fs.suid_dumpable {suid_dumpable}; target cwd {cwd}",
        "RLIMIT_CORE (soft, hard): " + (f"{tuple(map(_limit_text, before))} -> {tuple(map(_limit_text, after))}"
                                        if before and after else "unknown")
        + (f"; {limit_problem}" if limit_problem else "")
        + (f"; {OWN_LIMIT_ZERO} (soft and hard)" + ("" if after == before else ": raised by the harness")
           if before == (0, 0) and not (limit_problem or "").startswith(OWN_LIMIT_ZERO) else ""),
        dumpable_note,
        f"coredump_filter: {coredump_filter}",
        "where the core goes: " + "; ".join(obstacles + checked),
    ]
    if is_go:
        notes.append(f"Go program; GOTRACEBACK in its environment: {gotraceback if gotraceback is not None else 'unset'}")

    preexisting = existing_cores(pattern, cwd, uses_pid, facts.pid)
    signal_wall = time.time()
    try:
        crash() if crash else os.kill(pid, signal.SIGABRT)
    except ProcessLookupError as exc:
        raise SnapshotError(f"process {pid} does not exist (exited before SIGABRT)") from exc
    signalled = time.monotonic()
    remaining = max(0.1, timeout - (signalled - started))
    try:
        status = wait_for_exit(remaining)
    except (TimeoutError, subprocess.TimeoutExpired) as exc:
        raise SnapshotError(f"process {pid} did not exit within {remaining:.0f}s of {provocation}") from exc
    exited = time.monotonic()
    outcome = describe_status(status)
    notes.append(f"{outcome}, {exited - signalled:.3f}s after {provocation}")
    obstacles += full_after_the_crash(folder)

    if crash and os.WIFEXITED(status):       # no crash: the program's core policy was never put to the test
        return _finish(_no_core(core_dir, pid, NoImageCause.UNKNOWN, f"{outcome}: the target did not crash", notes),
                       started)
    if not (os.WIFSIGNALED(status) and os.WCOREDUMP(status)):
        cause, reason = no_core_cause(status, NoCoreFacts(before, after, limit_problem, dumpable, dumpable_note,
                                                          is_go, gotraceback, obstacles, checked))
        return _finish(_no_core(core_dir, pid, cause, reason, notes), started)

    facts = CoreFacts(**{**facts.__dict__, "signal": os.WTERMSIG(status)})
    core, how = find_core(pattern, facts, cwd, uses_pid, signal_wall, preexisting)
    if core is None:
        return _finish(_no_core(core_dir, pid, NoImageCause.UNKNOWN,
                                f"{outcome}, but no core file was found: {how}", notes), started)
    notes.append(f"core found by {how}")
    try:
        path = _private_copy(core, core_dir, pid)
    except OSError as exc:
        with contextlib.suppress(OSError):
            core.unlink()            # never leave the target's memory where the harness could not take it
        raise SnapshotError(f"cannot move the core {core} into {core_dir}: {exc}") from exc
    try:
        snapshot = snapshot_from_core(path, METHOD, live)
    except CoreTruncated as exc:
        path.unlink()                # a part of the target's memory that proves nothing either way
        why = "; ".join(obstacles) or "a size limit or a full disk"
        return _finish(_no_core(core_dir, pid, NoImageCause.BLOCKED,
                                f"{outcome}, but the core was cut short at {exc.size} of {exc.needed} bytes: {why}",
                                notes), started)
    except CoreFormatError as exc:
        path.unlink(missing_ok=True)     # never leave a copy of the target's memory we cannot describe
        raise SnapshotError(f"the kernel wrote an unreadable core: {exc}") from exc
    threads = {r.thread for r in snapshot.regions if r.thread is not None}
    if threads and facts.pid not in threads:     # another crash wrote the same file after ours
        path.unlink()
        return _finish(_no_core(core_dir, pid, NoImageCause.UNKNOWN, f"{outcome}, but the core found ({how}) is "
                                f"another process's (threads {', '.join(map(str, sorted(threads)))})", notes), started)
    snapshot.notes[:0] = notes
    return _finish(snapshot, started)


def _finish(snapshot: Snapshot, started: float) -> Snapshot:
    snapshot.duration_s = time.monotonic() - started
    return snapshot
