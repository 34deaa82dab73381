"""Terminal snapshot methods against real processes: kernel-core (SIGABRT + the kernel's core file) and
exit (ptrace exit stop after the target's own exit-time wipes). Helpers are compiled here with gcc (and go)."""
from __future__ import annotations

import os
import resource
import shutil
import signal
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest
from target_driver import read_stdout_line

from remanence.model import GapKind, NoImageCause, RegionKind, iter_region_chunks
from remanence.snapshot import CAP_SYS_RESOURCE, SnapshotError, has_capability
from remanence.snapshot import kernelcore
from remanence.snapshot.elfcore import read_core_layout
from remanence.process import describe_status
from remanence.snapshot.exitstop import ExitStop, exit_unavailable
from remanence.snapshot.kernelcore import (CoreFacts, core_pattern_glob, core_pattern_regex, escape_component,
                                         expand_core_pattern, find_core, kernel_core_unavailable, pattern_unusable,
                                         take_kernel_core)

PAGE = os.sysconf("SC_PAGE_SIZE")


# --- helpers: building and driving targets -------------------------------------------------------------

# Reads a 32-byte marker M and a 32-byte register marker R from stdin. M goes to malloc memory and to a
# MADV_DONTDUMP page, R into xmm6:xmm7 only (its buffer is zeroed in the same asm block), then the main
# thread blocks in a raw read(2) syscall so nothing touches those registers. An idle second thread makes
# two register sets. argv[1]: "hard0" sets RLIMIT_CORE to {0, 0} first (as memguard does); "nodump" calls
# prctl(PR_SET_DUMPABLE, 0). Prints "<heap> <dontdump>" then "ready".
KCORE_C = r"""
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <unistd.h>

static int idle_pipe[2];
static void *idle_thread(void *arg) { char c; (void)arg; (void)!read(idle_pipe[0], &c, 1); return NULL; }

static int read_all(unsigned char *buf, size_t n) {
    size_t got = 0;
    while (got < n) { ssize_t r = read(0, buf + got, n - got); if (r <= 0) return -1; got += r; }
    return 0;
}

static void hold_in_registers_and_block(unsigned char *reg_marker) {
    char c;
    long ret;
    __asm__ volatile(
        "movdqu (%[m]), %%xmm6\n\t"
        "movdqu 16(%[m]), %%xmm7\n\t"
        "movq $0, (%[m])\n\tmovq $0, 8(%[m])\n\tmovq $0, 16(%[m])\n\tmovq $0, 24(%[m])\n\t"
        "syscall"
        : "=a"(ret)
        : "a"(0L), "D"(0L), "S"(&c), "d"(1L), [m] "r"(reg_marker)
        : "rcx", "r11", "memory", "xmm6", "xmm7");
    (void)ret;
}

int main(int argc, char **argv) {
    long page = sysconf(_SC_PAGESIZE);
    if (argc > 1 && strcmp(argv[1], "hard0") == 0) {
        struct rlimit zero = {0, 0};
        if (setrlimit(RLIMIT_CORE, &zero) != 0) return 7;
    }
    if (argc > 1 && strcmp(argv[1], "nodump") == 0 && prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0) return 8;
    volatile unsigned char *heap = malloc(64);
    volatile unsigned char *dont_dump = mmap(NULL, page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    unsigned char marker[32], reg_marker[32];
    pthread_t tid;
    if (!heap || dont_dump == MAP_FAILED) return 2;
    if (madvise((void *)dont_dump, page, MADV_DONTDUMP) != 0) return 3;
    if (pipe(idle_pipe) != 0 || pthread_create(&tid, NULL, idle_thread, NULL) != 0) return 4;
    if (read_all(marker, 32) || read_all(reg_marker, 32)) return 5;
    for (int i = 0; i < 32; i++) { heap[i] = marker[i]; dont_dump[i] = marker[i]; marker[i] = 0; }
    printf("%lx %lx\nready\n", (unsigned long)heap, (unsigned long)dont_dump);
    fflush(stdout);
    hold_in_registers_and_block(reg_marker);
    return 0;
}
"""

# Reads a 32-byte KEPT and a 32-byte WIPED marker into malloc memory. atexit() wipes WIPED. Prints
# "ready" and waits for one command byte:
#   'x' return 3 from main (exit -> atexit wipe -> exit_group)
#   'i' raise SIGINT; its handler wipes WIPED and _exit(7)s (memguard's CatchInterrupt style)
#   't' a second thread calls exit(5) while the main thread blocks (atexit runs in that thread)
#   'p' answer "pong" and wait for the next byte
EXIT_C = r"""
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static volatile unsigned char *kept, *wiped;
static int go_pipe[2];

static void wipe(void) { for (int i = 0; i < 32; i++) wiped[i] = 0; }
static void on_sigint(int sig) { (void)sig; wipe(); _exit(7); }
static void *exiter(void *arg) { char c; (void)arg; (void)!read(go_pipe[0], &c, 1); exit(5); return NULL; }

static int read_all(volatile unsigned char *buf, size_t n) {
    size_t got = 0;
    while (got < n) { ssize_t r = read(0, (void *)(buf + got), n - got); if (r <= 0) return -1; got += r; }
    return 0;
}

int main(void) {
    pthread_t tid;
    kept = malloc(32);
    wiped = malloc(32);
    if (!kept || !wiped || read_all(kept, 32) || read_all(wiped, 32)) return 2;
    if (atexit(wipe) != 0 || signal(SIGINT, on_sigint) == SIG_ERR) return 3;
    if (pipe(go_pipe) != 0 || pthread_create(&tid, NULL, exiter, NULL) != 0) return 4;
    printf("ready\n");
    fflush(stdout);
    char c;
    while (read(0, &c, 1) == 1) {
        if (c == 'p') { printf("pong\n"); fflush(stdout); continue; }
        if (c == 'x') return 3;
        if (c == 'i') { kill(getpid(), SIGINT); for (;;) pause(); }
        if (c == 't') { (void)!write(go_pipe[1], "g", 1); for (;;) pause(); }
    }
    return 9;
}
"""

# Go target. Reads KEPT and WIPED (32 bytes each) from stdin into heap slices, prints "ready", then one
# command byte: 'x' wipe WIPED, os.Exit(3); 'i' raise SIGINT: a signal.Notify handler goroutine wipes WIPED
# and os.Exit(4)s; 's' the main goroutine (locked to the leader thread) spins while another goroutine runs
# runtime.GC() ten times (each stop-the-world preempts the leader with SIGURG), then os.Exit(6);
# 'r' holds a third 32-byte marker (read next) in X6:X7 of the leader thread and spins (for kernel-core).
GO_MAIN = r"""
package main

import (
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"syscall"
)

var sink uint64

func holdInRegs(p *byte)

func init() { runtime.LockOSThread() }

func spin() {
	x := uint64(1)
	for {
		x = x*6364136223846793005 + 1442695040888963407
		sink = x
	}
}

func wipe(b []byte) {
	for i := range b {
		b[i] = 0
	}
}

func main() {
	kept := make([]byte, 32)
	wiped := make([]byte, 32)
	if _, err := io.ReadFull(os.Stdin, kept); err != nil {
		os.Exit(20)
	}
	if _, err := io.ReadFull(os.Stdin, wiped); err != nil {
		os.Exit(21)
	}
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGINT)
	go func() {
		<-ch
		wipe(wiped)
		os.Exit(4)
	}()
	fmt.Println("ready")
	cmd := make([]byte, 1)
	if _, err := io.ReadFull(os.Stdin, cmd); err != nil {
		os.Exit(22)
	}
	switch cmd[0] {
	case 'i':
		syscall.Kill(os.Getpid(), syscall.SIGINT)
		select {}
	case 's':
		go func() {
			for i := 0; i < 10; i++ {
				runtime.GC()
			}
			wipe(wiped)
			os.Exit(6)
		}()
		spin()
	case 'r':
		regs := make([]byte, 32)
		if _, err := io.ReadFull(os.Stdin, regs); err != nil {
			os.Exit(23)
		}
		fmt.Println("holding")
		holdInRegs(&regs[0])
	}
	wipe(wiped)
	runtime.KeepAlive(kept)
	os.Exit(3)
}
"""

GO_ASM = r"""
#include "textflag.h"

// func holdInRegs(p *byte): X6:X7 = p[0:32], zero p[0:32], spin forever.
TEXT ·holdInRegs(SB), NOSPLIT, $0-8
	MOVQ p+0(FP), AX
	MOVOU (AX), X6
	MOVOU 16(AX), X7
	MOVQ $0, (AX)
	MOVQ $0, 8(AX)
	MOVQ $0, 16(AX)
	MOVQ $0, 24(AX)
loop:
	PAUSE
	JMP loop
"""


def _build_c(tmp_path_factory, name: str, source: str) -> Path:
    build = tmp_path_factory.mktemp(name)
    (build / f"{name}.c").write_text(source)
    subprocess.run(["gcc", "-O0", "-pthread", "-o", str(build / name), str(build / f"{name}.c")], check=True)
    return build / name


@pytest.fixture(scope="session")
def kcore_binary(tmp_path_factory) -> Path:
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc")
    return _build_c(tmp_path_factory, "kcore", KCORE_C)


@pytest.fixture(scope="session")
def exit_binary(tmp_path_factory) -> Path:
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc")
    return _build_c(tmp_path_factory, "exiter", EXIT_C)


@pytest.fixture(scope="session")
def go_binary(tmp_path_factory) -> Path:
    go = shutil.which("go")
    if go is None:
        pytest.skip("needs go")
    build = tmp_path_factory.mktemp("gotarget")
    (build / "go.mod").write_text("module gotarget\n\ngo 1.21\n")
    (build / "main.go").write_text(GO_MAIN)
    (build / "regs_amd64.s").write_text(GO_ASM)
    env = dict(os.environ, CGO_ENABLED="0", GOFLAGS="-mod=mod", GOPROXY="off", GOTOOLCHAIN="local")
    if "HOME" not in env and "GOCACHE" not in env:
        env["GOCACHE"] = str(build / "cache")
    result = subprocess.run([go, "build", "-o", str(build / "gotarget"), "."], cwd=build, env=env,
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"go build failed: {result.stderr[-500:]}")
    return build / "gotarget"


def _read_line(proc: subprocess.Popen, timeout: float = 10.0) -> bytes:
    return read_stdout_line(proc, timeout)


class Child:
    """A target started in its own session with `cwd` as working directory; the test owns waitpid."""

    def __init__(self, args, cwd: Path, env=None, stderr=subprocess.DEVNULL, **popen_kwargs):
        self.proc = subprocess.Popen([str(a) for a in args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=stderr, bufsize=0, cwd=cwd, env=env, start_new_session=True, **popen_kwargs)
        self.pid = self.proc.pid
        self.status: int | None = None

    def send(self, data: bytes) -> None:
        self.proc.stdin.write(data)

    def line(self, timeout: float = 10.0) -> bytes:
        return _read_line(self.proc, timeout)

    def wait_for_exit(self, timeout: float) -> int:
        """What the runner passes to take_kernel_core: reap the child and return its raw wait status."""
        deadline = time.monotonic() + timeout
        while True:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = status
                self.proc.returncode = os.waitstatus_to_exitcode(status)   # Popen must not wait again
                return status
            if time.monotonic() > deadline:
                raise TimeoutError(f"process {self.pid} still running after {timeout}s")
            time.sleep(0.005)

    def kill(self) -> None:
        if self.status is None and self.proc.returncode is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                self.wait_for_exit(10)
            except (ChildProcessError, TimeoutError):
                pass
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if f:
                f.close()


@pytest.fixture
def children():
    started: list[Child] = []

    def start(*args, **kwargs) -> Child:
        child = Child(*args, **kwargs)
        started.append(child)
        return child

    yield start
    for child in started:
        child.kill()


def hits(snapshot, marker: bytes) -> list:
    """Regions of `snapshot` holding `marker` (each listed once per copy)."""
    found = []
    for region in snapshot.regions:
        for _, data in iter_region_chunks(snapshot.path, region, 1 << 20, overlap=len(marker) - 1):
            at = data.find(marker)
            while at >= 0:
                found.append(region)
                at = data.find(marker, at + 1)
    return found


def private_dir(tmp_path: Path, name: str = "core") -> Path:
    path = tmp_path / name
    path.mkdir(mode=0o700)
    return path


# --- core_pattern expansion: pure functions -----------------------------------------------------------

FACTS = CoreFacts(pid=4242, global_pid=104242, tids=(4242,), global_tids=(104242,), uid=1000, gid=100,
                  signal=6, time=1700000000, hostname="box", comms=("my/prog",), exe="/usr/bin/prog",
                  core_limit=resource.RLIM_INFINITY, dumpable=1, cpu=3)


@pytest.mark.parametrize("pattern, uses_pid, expected", [
    ("core", False, "core"),
    ("core", True, "core.4242"),
    ("core.%p", True, "core.4242"),                      # %p in the pattern: no .PID appended
    ("core.%P", True, "core.104242.4242"),              # only %p counts, not %P
    ("%%p", True, "%p.4242"),                            # %%p is a literal "%p": no pid in the pattern
    ("/var/crash/%e.%p.%t", False, "/var/crash/my!prog.4242.1700000000"),
    ("c-%i-%I-%u-%g-%s-%d-%C", False, "c-4242-104242-1000-100-6-1-3"),
    ("c-%c", False, "c-18446744073709551615"),
    ("%E", False, "!usr!bin!prog"),
    ("%f@%h", False, "prog@box"),
    ("core%", False, "core"),                            # a lone trailing % is dropped
    ("a%zb%F", False, "ab"),                             # unknown specifiers (and %F outside pipes) vanish
])
def test_expand_core_pattern(pattern, uses_pid, expected):
    assert expand_core_pattern(pattern, FACTS, uses_pid) == expected
    assert core_pattern_regex(pattern, FACTS, uses_pid).fullmatch(expected)


@pytest.mark.parametrize("value, expected", [("a/b", "a!b"), (".", "!"), ("..", "!."), ("", "!"), ("...", "...")])
def test_escape_component_like_cn_esc_printf(value, expected):
    assert escape_component(value) == expected


def test_expand_refuses_unknown_or_ambiguous_values_and_regex_matches_them():
    facts = CoreFacts(pid=10, tids=(10, 11), comms=("main", "worker"))
    with pytest.raises(ValueError, match="%t cannot be expanded exactly: unknown"):
        expand_core_pattern("core.%t", facts)
    with pytest.raises(ValueError, match="%i cannot be expanded exactly: any of 10, 11"):
        expand_core_pattern("core.%i", facts)
    regex = core_pattern_regex("core.%e.%i.%t", facts)
    assert regex.fullmatch("core.worker.11.1700000000")
    assert not regex.fullmatch("core.worker.12.1700000000")
    assert not regex.fullmatch("core.other.11.1700000000")
    assert not regex.fullmatch("core.main.10.17000x")
    assert core_pattern_regex("core.%i", facts, loose=True).fullmatch("core.99")
    assert core_pattern_glob("/x/core.%e.%p%%", False) == "/x/core.*.*%"
    assert core_pattern_glob("core", True, 10) == "core.10"


@pytest.mark.parametrize("pattern, reason", [
    ("|/usr/lib/systemd/systemd-coredump %P %u %g %s %t %c %h", "core_pattern pipes cores to '|/usr/lib/systemd/systemd-coredump"),
    ("@/run/coredump.socket", "core_pattern sends cores to the socket '@/run/coredump.socket'"),
    ("", "core_pattern is empty"),
])
def test_pattern_unusable(pattern, reason):
    assert pattern_unusable(pattern).startswith(reason)
    with pytest.raises(ValueError):
        expand_core_pattern(pattern, FACTS)


def test_kernel_core_unavailable_reads_core_pattern(tmp_path, monkeypatch):
    fake = tmp_path / "core_pattern"
    fake.write_text("|/usr/lib/systemd/systemd-coredump %P %u %g %s %t %c %h\n")
    monkeypatch.setattr(kernelcore, "CORE_PATTERN", fake)
    assert kernel_core_unavailable() == ("core_pattern pipes cores to '|/usr/lib/systemd/systemd-coredump %P %u %g %s "
                                         "%t %c %h': the harness cannot collect them")
    fake.write_text("core.%p\n")
    assert kernel_core_unavailable() is None
    monkeypatch.setattr(kernelcore, "CORE_PATTERN", tmp_path / "missing")
    assert kernel_core_unavailable().startswith(f"cannot read {tmp_path / 'missing'}")


def test_find_core_exact_wildcard_and_stale(tmp_path):
    now = time.time()
    facts = CoreFacts(pid=77, tids=(77, 78), comms=("prog",))
    (tmp_path / "core.prog.77").write_bytes(b"x")
    assert find_core("core.%e.%p", facts, tmp_path, False, now) == (tmp_path / "core.prog.77", f"exact name {tmp_path}/core.prog.77")
    # %i is ambiguous (two threads) and %t unknown: the regex picks the right file, not the other pid's.
    (tmp_path / "dump-78-1700000000").write_bytes(b"x")
    (tmp_path / "dump-79-1700000000").write_bytes(b"x")
    path, how = find_core("dump-%i-%t", facts, tmp_path, False, now)
    assert path == tmp_path / "dump-78-1700000000" and how.startswith("matched with unknown specifiers")
    # A core older than the signal is somebody else's.
    old = tmp_path / "core.77"
    old.write_bytes(b"x")
    os.utime(old, (now - 3600, now - 3600))
    path, how = find_core("core", facts, tmp_path, True, now)
    assert path is None and "core.77" in how
    # An absolute pattern is not relative to the cwd.
    elsewhere = tmp_path / "crash"
    elsewhere.mkdir()
    (elsewhere / "c.77").write_bytes(b"x")
    assert find_core(f"{elsewhere}/c.%p", facts, tmp_path / "nowhere", False, now)[0] == elsewhere / "c.77"
    # A file that was already there, unchanged, before the signal is not the new core, however recent.
    before = kernelcore.existing_cores(f"{elsewhere}/c.%p", tmp_path, False, 77)
    assert [p for p, _, _ in before] == [str(elsewhere / "c.77")]
    assert find_core(f"{elsewhere}/c.%p", facts, tmp_path, False, now, before)[0] is None
    (elsewhere / "c.77").unlink()
    (elsewhere / "c.77").write_bytes(b"new")            # the kernel unlinks and recreates it
    os.utime(elsewhere / "c.77", ns=(time.time_ns() + 10**9,) * 2)
    assert find_core(f"{elsewhere}/c.%p", facts, tmp_path, False, now, before)[0] == elsewhere / "c.77"


# --- kernel-core against real processes ------------------------------------------------------------------

needs_kernel_cores = pytest.mark.skipif(kernel_core_unavailable() is not None,
                                        reason=f"kernel cores unavailable: {kernel_core_unavailable()}")


def start_kcore(children, binary: Path, core_dir: Path, mode: str | None = None):
    child = children([binary] + ([mode] if mode else []), cwd=core_dir)
    marker, reg_marker = os.urandom(32), os.urandom(32)
    child.send(marker + reg_marker)
    heap, dont_dump = (int(x, 16) for x in child.line().split())
    assert child.line() == b"ready\n"
    time.sleep(0.05)                       # let the main thread enter its read(2)
    return child, marker, reg_marker, heap, dont_dump


@needs_kernel_cores
def test_kernel_core_of_c_target(kcore_binary, tmp_path, children):
    core_dir = private_dir(tmp_path)
    child, marker, reg_marker, heap, dont_dump = start_kcore(children, kcore_binary, core_dir)
    tids = {int(t) for t in os.listdir(f"/proc/{child.pid}/task")}
    assert len(tids) == 2
    started = time.monotonic()
    snap = take_kernel_core(child.pid, core_dir, child.wait_for_exit)
    elapsed = time.monotonic() - started
    assert os.WIFSIGNALED(child.status) and os.WTERMSIG(child.status) == signal.SIGABRT and os.WCOREDUMP(child.status)
    assert snap.method == "kernel-core" and snap.not_produced is None
    # Found, moved into core_dir under our own name, private.
    assert snap.path.parent == core_dir and snap.path.name.startswith(f"kernel-core-{child.pid}-")
    assert stat.S_IMODE(snap.path.stat().st_mode) == 0o600
    assert sorted(p.name for p in core_dir.iterdir()) == [snap.path.name]
    assert read_core_layout(snap.path).machine == "EM_X86_64"
    # malloc memory: in the heap region at its address.
    heap_hits = [r for r in hits(snap, marker) if r.kind != RegionKind.REGISTERS]
    assert [r.kind for r in heap_hits] == [RegionKind.HEAP] and heap_hits[0].contains(heap)
    # The MADV_DONTDUMP page: not in the core, listed as an EXCLUDED gap.
    assert snap.region_at(dont_dump) is None
    gaps = [g for g in snap.gaps if g.start <= dont_dump < g.start + g.size]
    assert [(g.kind, g.reason, g.dont_dump) for g in gaps] == [(GapKind.EXCLUDED, "MADV_DONTDUMP", True)]
    # Every thread's register sets, with the thread id; xmm6:xmm7 of the main thread hold the register marker.
    registers = [r for r in snap.regions if r.kind == RegionKind.REGISTERS]
    assert {r.thread for r in registers} == tids
    assert {"NT_PRSTATUS", "NT_FPREGSET"} <= {r.register_set for r in registers if r.thread == child.pid}
    reg_hits = hits(snap, reg_marker)
    assert reg_hits and all(r.kind == RegionKind.REGISTERS and r.thread == child.pid for r in reg_hits)
    assert {r.register_set for r in reg_hits} & {"NT_FPREGSET", "NT_X86_XSTATE"}
    notes = "\n".join(snap.notes)
    assert f"coredump_filter: {Path('/proc/self/coredump_filter').read_text().strip()}" in notes   # inherited
    assert "-> ('unlimited', 'unlimited')" in notes and "killed by SIGABRT (core dumped)" in notes
    assert elapsed < 30


@needs_kernel_cores
def test_kernel_core_hard_limit_zero(kcore_binary, tmp_path, children):
    """The target set RLIMIT_CORE to {0, 0} (as memguard does): root without CAP_SYS_RESOURCE cannot raise
    it, so no core, with the exact reason; with CAP_SYS_RESOURCE the harness raises it and gets a core."""
    core_dir = private_dir(tmp_path)
    child, marker, *_ = start_kcore(children, kcore_binary, core_dir, "hard0")
    assert resource.prlimit(child.pid, resource.RLIMIT_CORE) == (0, 0)
    snap = take_kernel_core(child.pid, core_dir, child.wait_for_exit)
    assert os.WIFSIGNALED(child.status) and os.WTERMSIG(child.status) == signal.SIGABRT
    if has_capability(CAP_SYS_RESOURCE):
        assert os.WCOREDUMP(child.status) and snap.regions and hits(snap, marker)
    else:
        assert not os.WCOREDUMP(child.status)
        assert snap.not_produced == ("no core produced: the program set its own core limit to 0, and it could not be "
                                     "raised: EPERM (raising a hard limit needs CAP_SYS_RESOURCE, which the harness lacks)")
        assert snap.regions == [] and not snap.path.exists() and snap.path.parent == core_dir
        assert list(core_dir.iterdir()) == []
        assert "killed by SIGABRT, no core dumped" in "\n".join(snap.notes)


@needs_kernel_cores
def test_kernel_core_not_dumpable(kcore_binary, tmp_path, children):
    """A root target's dumpability cannot be read from outside: no core, everything writable, cause unknown."""
    core_dir = private_dir(tmp_path)
    child, *_ = start_kcore(children, kcore_binary, core_dir, "nodump")
    snap = take_kernel_core(child.pid, core_dir, child.wait_for_exit)
    assert os.WIFSIGNALED(child.status) and not os.WCOREDUMP(child.status)
    assert snap.not_produced.startswith("no core produced: killed by SIGABRT, no core dumped, and no cause was "
                                        "established: dumpable: not observable")
    assert snap.not_produced_cause == NoImageCause.UNKNOWN
    assert snap.regions == [] and list(core_dir.iterdir()) == []


NOBODY = 65534


@pytest.fixture(scope="session")
def public_kcore_binary(kcore_binary):
    """The kcore helper where uid 65534 can execute it (pytest's tmp dirs are 0700 root)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to start a target as another uid")
    import tempfile
    folder = Path(tempfile.mkdtemp(prefix="remanence-public-"))
    folder.chmod(0o755)
    binary = folder / "kcore"
    shutil.copy2(kcore_binary, binary)
    binary.chmod(0o755)
    yield binary
    shutil.rmtree(folder)


@needs_kernel_cores
@pytest.mark.parametrize("mode, raise_soft_limit", [(None, False), (None, True), ("nodump", True)],
                         ids=["soft-0", "soft-raised-at-spawn", "not-dumpable"])
def test_kernel_core_of_target_running_as_another_uid(public_kcore_binary, tmp_path, children, mode, raise_soft_limit):
    """A non-root target: prlimit() on it needs CAP_SYS_RESOURCE even as root, so its soft core limit can only
    be raised when it is started; its dumpability shows in the owner of its /proc files."""
    core_dir = private_dir(tmp_path)
    os.chown(core_dir, NOBODY, NOBODY)    # the kernel writes the core with the target's fsuid, in its cwd
    preexec = (lambda: resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY,) * 2)) if raise_soft_limit else None
    child = children([public_kcore_binary] + ([mode] if mode else []), cwd=core_dir, user=NOBODY, group=NOBODY,
                     extra_groups=[], preexec_fn=preexec)
    marker = os.urandom(32)
    child.send(marker + os.urandom(32))
    child.line()
    assert child.line() == b"ready\n"
    snap = take_kernel_core(child.pid, core_dir, child.wait_for_exit)
    notes = "\n".join(snap.notes)
    assert os.WIFSIGNALED(child.status) and os.WTERMSIG(child.status) == signal.SIGABRT
    if mode == "nodump":
        assert "dumpable: no (" in notes
        assert snap.not_produced == "no core produced: killed by SIGABRT, no core dumped (process not dumpable)"
        return
    assert f"dumpable: yes (/proc/{child.pid} files owned by the target's uid {NOBODY})" in notes
    if has_capability(CAP_SYS_RESOURCE) or raise_soft_limit:
        assert os.WCOREDUMP(child.status) and hits(snap, marker)
        st = snap.path.stat()
        assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o600, os.getuid())
    else:
        assert snap.not_produced == ("no core produced: RLIMIT_CORE soft limit is 0 and could not be raised: EPERM "
                                 "(prlimit on a process of another uid needs CAP_SYS_RESOURCE, which the harness "
                                 "lacks; start the target with its soft core limit raised)")


@needs_kernel_cores
def test_kernel_core_of_vanished_process_is_an_error(kcore_binary, tmp_path, children):
    core_dir = private_dir(tmp_path)
    child, *_ = start_kcore(children, kcore_binary, core_dir)
    os.kill(child.pid, signal.SIGKILL)
    child.wait_for_exit(10)
    with pytest.raises(SnapshotError, match="does not exist|exited"):
        take_kernel_core(child.pid, core_dir, child.wait_for_exit)


@needs_kernel_cores
def test_kernel_core_timeout_is_an_error(kcore_binary, tmp_path, children):
    core_dir = private_dir(tmp_path)
    child, *_ = start_kcore(children, kcore_binary, core_dir)

    def never(timeout):
        raise TimeoutError("still running")

    with pytest.raises(SnapshotError, match=rf"process {child.pid} did not exit within"):
        take_kernel_core(child.pid, core_dir, never)


@needs_kernel_cores
def test_kernel_core_of_go_target(go_binary, tmp_path, children):
    """GOTRACEBACK=crash: the runtime prints its goroutines and re-raises SIGABRT: a core. Without it, the
    Go program exits with status 2: no core, and the reason says so."""
    for env_value, expect_core in (("crash", True), (None, False)):
        core_dir = private_dir(tmp_path, f"core-{env_value}")
        env = {k: v for k, v in os.environ.items() if k != "GOTRACEBACK"}
        if env_value:
            env["GOTRACEBACK"] = env_value
        child = children([go_binary], cwd=core_dir, env=env)
        kept, wiped = os.urandom(32), os.urandom(32)
        child.send(kept + wiped)
        assert child.line() == b"ready\n"
        snap = take_kernel_core(child.pid, core_dir, child.wait_for_exit)
        if expect_core:
            assert os.WCOREDUMP(child.status) and hits(snap, kept) and hits(snap, wiped)
            assert len({r.thread for r in snap.regions if r.kind == RegionKind.REGISTERS}) >= 2
            assert "GOTRACEBACK in its environment: crash" in "\n".join(snap.notes)
        else:
            assert os.WIFEXITED(child.status) and os.WEXITSTATUS(child.status) == 2
            assert snap.not_produced == ("no core produced: exited with status 2 instead of dumping core "
                                     "(is GOTRACEBACK=crash set?)")


@needs_kernel_cores
def test_go_crash_leaves_interrupted_registers_in_the_signal_frame(go_binary, tmp_path, children):
    """Measured: a marker held in X6:X7 of the Go leader thread when SIGABRT arrives is not in that thread's
    register notes (they show the runtime's own state at its re-raise) but in memory: the signal frame the
    kernel pushed on the gsignal stack. Scanning only registers would miss it; scanning memory finds it."""
    core_dir = private_dir(tmp_path)
    child = children([go_binary], cwd=core_dir, env=dict(os.environ, GOTRACEBACK="crash"))
    regs = os.urandom(32)
    child.send(os.urandom(64) + b"r" + regs)
    assert child.line() == b"ready\n" and child.line() == b"holding\n"
    time.sleep(0.1)
    snap = take_kernel_core(child.pid, core_dir, child.wait_for_exit)
    assert os.WCOREDUMP(child.status)
    found = hits(snap, regs)
    assert found, "the register marker is nowhere in the core"
    assert all(r.kind == RegionKind.ANONYMOUS for r in found)


# --- exit ---------------------------------------------------------------------------------------------------

needs_ptrace = pytest.mark.skipif(exit_unavailable() is not None, reason=f"exit unavailable: {exit_unavailable()}")


def start_exiter(children, binary: Path, tmp_path: Path):
    child = children([binary], cwd=tmp_path)
    kept, wiped = os.urandom(32), os.urandom(32)
    child.send(kept + wiped)
    assert child.line() == b"ready\n"
    return child, kept, wiped


def exit_snapshot(child, command: bytes, workdir: Path, timeout: float = 30):
    stop = ExitStop(child.pid)
    stop.arm()
    try:
        child.send(command)
        assert stop.wait_for_exit_stop(timeout) is True
        state = Path(f"/proc/{child.pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
        assert state == b"t"                   # held in a ptrace stop
        snap = stop.snapshot()
    finally:
        stop.release()
    return stop, snap


@needs_ptrace
@pytest.mark.parametrize("command, code, reinjected", [(b"x", 3, None), (b"i", 7, signal.SIGINT), (b"t", 5, None)],
                         ids=["atexit", "sigint-handler", "thread-calls-exit"])
def test_exit_stop_after_wipes(exit_binary, tmp_path, children, command, code, reinjected):
    child, kept, wiped = start_exiter(children, exit_binary, tmp_path)
    stop, snap = exit_snapshot(child, command, tmp_path / "work")
    assert snap.method == "exit" and stat.S_IMODE(snap.path.stat().st_mode) == 0o600
    assert [r.kind for r in hits(snap, kept)] == [RegionKind.HEAP]
    assert hits(snap, wiped) == []
    assert os.WIFEXITED(stop.exit_code) and os.WEXITSTATUS(stop.exit_code) == code
    assert snap.notes[0].startswith(f"exit reached: exit status {code}")
    if reinjected:
        assert stop.reinjected[reinjected] == 1 and f"{signal.Signals(reinjected).name} x1" in "\n".join(snap.notes)
    # PROT_NONE and friends as in procmem: [vvar] a KERNEL gap, the leader's register sets appended.
    assert any(g.name == "[vvar]" and g.kind == GapKind.KERNEL for g in snap.gaps)
    registers = {r.register_set for r in snap.regions if r.kind == RegionKind.REGISTERS}
    assert {"NT_PRSTATUS", "NT_FPREGSET"} <= registers
    assert all(r.thread == child.pid for r in snap.regions if r.kind == RegionKind.REGISTERS)
    # Released: the caller still reaps the real status.
    assert stop.exit_status is None
    assert child.wait_for_exit(10) and os.WIFEXITED(child.status) and os.WEXITSTATUS(child.status) == code


@needs_ptrace
def test_exit_stop_when_a_non_leader_thread_exits_reports_threads(exit_binary, tmp_path, children):
    child, kept, wiped = start_exiter(children, exit_binary, tmp_path)
    assert len(os.listdir(f"/proc/{child.pid}/task")) == 2
    stop, snap = exit_snapshot(child, b"t", tmp_path / "work")
    assert snap.notes[1].startswith(f"threads at the exit stop: leader {child.pid}")
    assert child.wait_for_exit(10) == 5 << 8


@needs_ptrace
def test_exit_stop_survives_a_group_stop(exit_binary, tmp_path, children):
    child, kept, wiped = start_exiter(children, exit_binary, tmp_path)
    stop = ExitStop(child.pid)
    stop.arm()
    try:
        os.kill(child.pid, signal.SIGSTOP)
        with pytest.raises(SnapshotError, match="did not reach its exit within 0.3s"):
            stop.wait_for_exit_stop(0.3)
        # SIGSTOP is process-directed: the leader either takes it (a signal-delivery-stop, passed on) or joins
        # the group-stop the other thread started; either way one group-stop, held with PTRACE_LISTEN.
        assert stop.group_stops == 1 and stop.reinjected[signal.SIGSTOP] <= 1
        state = Path(f"/proc/{child.pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
        assert state in (b"t", b"T")
        os.kill(child.pid, signal.SIGCONT)
        child.send(b"x")
        assert stop.wait_for_exit_stop(10)
        snap = stop.snapshot()
        assert hits(snap, kept) and not hits(snap, wiped)
    finally:
        stop.release()
    assert child.wait_for_exit(10) == 3 << 8


@needs_ptrace
def test_exit_release_before_exit_detaches_a_running_target(exit_binary, tmp_path, children):
    child, kept, wiped = start_exiter(children, exit_binary, tmp_path)
    stop = ExitStop(child.pid)
    stop.arm()
    with pytest.raises(SnapshotError, match="is not in its exit stop"):
        stop.snapshot()
    with pytest.raises(SnapshotError, match="did not reach its exit"):
        stop.wait_for_exit_stop(0.2)
    stop.release()
    status = Path(f"/proc/{child.pid}/status").read_text()
    assert "TracerPid:\t0" in status
    child.send(b"p")
    assert child.line() == b"pong\n"       # running normally again, untraced
    child.send(b"x")
    assert child.wait_for_exit(10) == 3 << 8


@needs_ptrace
def test_exit_stop_calls_must_come_from_the_arming_thread(exit_binary, tmp_path, children):
    child, *_ = start_exiter(children, exit_binary, tmp_path)
    stop = ExitStop(child.pid)
    stop.arm()
    errors = []
    worker = threading.Thread(target=lambda: errors.append(pytest.raises(RuntimeError, stop.wait_for_exit_stop, 1)))
    worker.start()
    worker.join()
    assert errors and "thread that called arm()" in str(errors[0].value)
    stop.release()
    child.send(b"x")
    assert child.wait_for_exit(10) == 3 << 8


@needs_ptrace
def test_exit_arm_errors(tmp_path):
    proc = subprocess.Popen(["true"])
    proc.wait()
    with pytest.raises(SnapshotError, match="does not exist"):
        ExitStop(proc.pid).arm()


def test_describe_status():
    assert describe_status(3 << 8) == "exit status 3"
    assert describe_status(signal.SIGINT) == "killed by SIGINT"
    assert describe_status(signal.SIGABRT | 0x80) == "killed by SIGABRT (core dumped)"


@needs_ptrace
@pytest.mark.parametrize("command, code", [(b"x", 3), (b"i", 4), (b"s", 6)], ids=["os-exit", "sigint-notify", "sigurg"])
def test_exit_stop_of_go_target(go_binary, tmp_path, children, command, code):
    """Go: SIGURG preemption signals and the self-sent SIGINT are passed on; the runtime gets to its exit."""
    child = children([go_binary], cwd=tmp_path)
    kept, wiped = os.urandom(32), os.urandom(32)
    child.send(kept + wiped)
    assert child.line() == b"ready\n"
    started = time.monotonic()
    stop, snap = exit_snapshot(child, command, tmp_path / "work", timeout=60)
    assert os.WIFEXITED(stop.exit_code) and os.WEXITSTATUS(stop.exit_code) == code
    assert hits(snap, kept) and not hits(snap, wiped)
    if command == b"i":
        assert stop.reinjected[signal.SIGINT] == 1
    if command == b"s":
        assert stop.reinjected[signal.SIGURG] >= 1
    # Go reserves over a GiB it never touches: such memory is not read at all but recorded as untouched.
    untouched = sum(g.size for g in snap.gaps if g.kind == GapKind.UNTOUCHED)
    assert untouched > 512 << 20 and snap.captured_bytes < 256 << 20
    assert snap.path.stat().st_size == snap.captured_bytes
    assert child.wait_for_exit(10) == code << 8
    assert time.monotonic() - started < 60
