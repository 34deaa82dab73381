"""The scheduler: runs at once up to -j, bounded by memory, results in plan order, interrupts end every run."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from remanence import entry
from remanence.process import stat_fields
from remanence.schedule import MIN_HEADROOM, MemoryGauge, run_all


class Recorder:
    """A stand-in for runs: each takes `hold` seconds and records how many were running at once."""

    def __init__(self, hold: float = 0.05):
        self.lock = threading.Lock()
        self.running = 0
        self.most = 0
        self.started: list[int] = []
        self.threads: set[str] = set()
        self.hold = hold

    def __call__(self, item: int) -> None:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
            self.started.append(item)
            self.threads.add(threading.current_thread().name)
        time.sleep(self.hold)
        with self.lock:
            self.running -= 1


def test_runs_start_in_plan_order_and_at_most_jobs_run_at_once():
    work = Recorder()
    run_all(range(12), work, jobs=3, gauge=MemoryGauge(), memory=lambda: 1 << 40)
    assert work.started == list(range(12))
    assert work.most == 3


def test_one_job_runs_everything_on_the_calling_thread():
    work = Recorder(hold=0)
    run_all(range(4), work, jobs=1, gauge=MemoryGauge())
    assert work.threads == {threading.current_thread().name} and work.most == 1


def test_short_memory_lets_only_one_run_at_a_time_and_says_why():
    gauge, told = MemoryGauge(), []
    gauge.observe(3 << 30)        # a checkpoint held 3 GiB of images: the next run wants 6 GiB free
    work = Recorder()
    run_all(range(5), work, jobs=4, gauge=gauge, memory=lambda: 5 << 30, on_wait=told.append)
    assert work.most == 1 and work.started == list(range(5))
    assert len(told) == 1 and "5120 MiB available, 6144 MiB wanted" in told[0]


def test_the_headroom_follows_the_largest_checkpoint_seen():
    gauge = MemoryGauge()
    assert gauge.headroom() == MIN_HEADROOM
    gauge.observe(2 << 30)
    gauge.observe(1 << 20)
    assert gauge.headroom() == 4 << 30


def test_a_failing_run_stops_the_others_and_is_raised():
    stopped = threading.Event()
    started = []

    def work(item: int) -> None:
        started.append(item)
        if item == 1:
            raise RuntimeError("run 1 broke")
        stopped.wait(5)

    with pytest.raises(RuntimeError, match="run 1 broke"):
        run_all(range(10), work, jobs=2, gauge=MemoryGauge(), memory=lambda: 1 << 40, stop=stopped.set)
    assert stopped.is_set() and len(started) < 10


@pytest.mark.e2e
def test_parallel_suite_gives_the_same_verdicts_in_plan_order(tmp_path):
    """-j 2 and -j 1 on the same scenarios: the same verdicts (scenario, checkpoint, method, outcome) in the same order."""
    documents = []
    for jobs in (1, 2):
        out = tmp_path / f"j{jobs}"
        run = subprocess.run([sys.executable, "-m", "remanence", "run", "malloc.*", "stack.*", "--method", "procmem,gcore",
                              "--repeat", "2", "-j", str(jobs), "--out", str(out), "--format", "json"],
                             capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr[-2000:]
        documents.append(json.loads((out / "results.json").read_text()))
    sequential, parallel = ([(v["scenario"], v["repetition"], v["checkpoint"], v["method"], v["outcome"])
                             for v in d["verdicts"]] for d in documents)
    assert parallel == sequential and len(parallel) >= 8
    assert [r["scenario"] for r in documents[1]["runs"]] == [r["scenario"] for r in documents[0]["runs"]]


@pytest.mark.e2e
def test_an_interrupt_with_two_runs_going_kills_both_targets_and_exits_130(tmp_path):
    from suite_run import require
    require("c", "procmem")
    scenarios = tmp_path / "scenarios"
    scenarios.mkdir()
    for number in range(4):     # targets that never reach their checkpoint: the interrupt finds both runs going
        (scenarios / f"hang{number}.toml").write_text(
            f'name = "hang{number}"\ntarget = "c"\nentry = "selftest.hang"\nmethods = ["procmem"]\ntimeout = 120\n'
            '[secret]\nform = "binary"\nlength = 32\n'
            '[[checkpoints]]\nname = "in_use"\nexpect = "observe"\nwhy = "never reached"\n')
    harness = subprocess.Popen([sys.executable, "-m", "remanence", "run", "--scenarios", str(scenarios), "-j", "2",
                                "--out", str(tmp_path / "out"), "--format", "json"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    targets = set()
    for line in harness.stderr:
        if "starting c target" in line:
            targets.add(line.split(":")[0])
        if len(targets) == 2:
            break
    assert len(targets) == 2, "two runs never went at once"
    time.sleep(0.3)
    children = _descendants(harness.pid)
    harness.send_signal(signal.SIGINT)
    harness.communicate(timeout=120)
    assert harness.returncode == 130
    assert [pid for pid in children if _alive(pid)] == []
    document = json.loads((tmp_path / "out" / "results.json").read_text())
    assert document["interrupted"] and [r["scenario"] for r in document["runs"]] == ["hang0", "hang1"]
    assert [(v["scenario"], v["outcome"], v["reason"]) for v in document["verdicts"]] == [
        (name, "ERROR", "checkpoint never reached: the run was interrupted") for name in ("hang0", "hang1")]


def _descendants(pid: int) -> list[int]:
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        for task in os.listdir(f"/proc/{parent}/task"):
            try:
                children = open(f"/proc/{parent}/task/{task}/children").read().split()
            except OSError:
                continue
            found += map(int, children)
            frontier += map(int, children)
    return found


def _alive(pid: int) -> bool:
    try:
        return stat_fields(f"/proc/{pid}/stat")[0] != "Z"
    except OSError:
        return False


def test_an_interrupt_while_a_run_starts_still_waits_for_that_run(monkeypatch):
    """Ctrl-C the moment a run's thread exists (inside the pool's submit): run_all raises it only once that run is
    over, never leaving it going on unseen after the results are written."""
    finished = []

    def work(item: int) -> None:
        time.sleep(0.5)
        finished.append(item)

    real_start = threading.Thread.start

    def start_then_interrupt(thread):
        real_start(thread)
        if threading.current_thread() is threading.main_thread():
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(threading.Thread, "start", start_then_interrupt)
    monkeypatch.setattr(entry, "_received", [])
    previous = signal.signal(signal.SIGINT, entry.raise_interrupt)
    try:
        with pytest.raises(KeyboardInterrupt):
            run_all([1], work, jobs=2, gauge=MemoryGauge(), memory=lambda: 1 << 40)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert finished == [1]


# Ctrl-C the moment wait() has taken a future's lock: a KeyboardInterrupt there would leave the lock taken, the run's
# thread hangs as it sets its result, and so does run_all (a harness hung 20 minutes that way after a Ctrl-C).
INTERRUPTED_INSIDE_WAIT = """
import signal, time
from concurrent.futures import _base
from remanence import entry
from remanence.schedule import MemoryGauge, run_all
take_locks = _base._AcquireFutures.__enter__
interrupted = []
def take_locks_then_interrupt(self):
    take_locks(self)
    if not interrupted:
        interrupted.append(True)
        signal.raise_signal(signal.SIGINT)
_base._AcquireFutures.__enter__ = take_locks_then_interrupt
entry.handle_interrupts()
finished = []
try:
    run_all([1], lambda item: (time.sleep(0.5), finished.append(item)), jobs=2, gauge=MemoryGauge(),
            memory=lambda: 1 << 40)
except KeyboardInterrupt:
    print("interrupted after", finished)
"""


def test_an_interrupt_inside_the_wait_for_runs_neither_hangs_nor_loses_a_run():
    done = subprocess.run([sys.executable, "-c", INTERRUPTED_INSIDE_WAIT], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (0, "interrupted after [1]\n"), done.stderr
