"""Independent runs at once: at most `jobs` of them, and none more while memory is short.

A run's memory is its snapshots: at one checkpoint it may hold a few images of its target at once (a gcore of an
idle Go program is 1.3 GB), in memory files. So a further run starts only while the machine's available memory
leaves room for the largest checkpoint seen so far; the first run always starts, so a plan never waits forever.
Each run lives on one thread from start to end (ptrace, which the exit method uses, belongs to the thread that
attached). Results keep the plan's order whatever order runs finish in.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Callable, Iterable, TypeVar

from .entry import interrupts_held

T = TypeVar("T")

MAX_JOBS = 64
MIN_HEADROOM = 1 << 30          # memory a further run needs free before any run has taken a snapshot
POLL_S = 0.2


def default_jobs() -> int:
    """The cores this process may use."""
    return len(os.sched_getaffinity(0))


def available_memory() -> int:
    """MemAvailable from /proc/meminfo, in bytes (a very large number where it cannot be read)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 1 << 62


class MemoryGauge:
    """The most memory one checkpoint of a run has held in images, as runs report it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.largest_checkpoint = 0

    def observe(self, image_bytes: int) -> None:
        with self._lock:
            self.largest_checkpoint = max(self.largest_checkpoint, image_bytes)

    def headroom(self) -> int:
        """What must stay available for one more run to start."""
        return max(MIN_HEADROOM, 2 * self.largest_checkpoint)


def run_all(items: Iterable[T], work: Callable[[T], None], jobs: int, gauge: MemoryGauge,
            memory: Callable[[], int] = available_memory, on_wait: Callable[[str], None] = lambda message: None,
            stop: Callable[[], None] = lambda: None) -> None:
    """`work(item)` for every item, started in order, at most `jobs` at once and a further one only while
    `memory()` ≥ the gauge's headroom; an item is taken from `items` only when its run can start. With one job
    everything happens on the calling thread. An exception of `work`, or a KeyboardInterrupt, calls `stop` (the
    running ones' cue to give up), waits for the running ones and is raised here."""
    if jobs <= 1:
        for item in items:
            work(item)
        return
    pending = iter(items)
    running: set[Future] = set()
    exhausted = told = False
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="run") as pool:
        try:
            while running or not exhausted:
                room = len(running) < jobs
                if not exhausted and (not running or room and memory() >= gauge.headroom()):
                    # Interrupts wait for the pool's own code (submit, wait) to finish, at most POLL_S: one inside
                    # submit() would lose the future while its run goes on unseen, one inside wait() can leave a
                    # future's lock taken, so that its run and run_all hang.
                    with interrupts_held():
                        item = next(pending, _END)
                        exhausted = item is _END
                        if not exhausted:
                            running.add(pool.submit(work, item))
                    continue
                if not exhausted and room and not told:
                    on_wait(f"waiting for memory before the next run: {memory() >> 20} MiB available, "
                            f"{gauge.headroom() >> 20} MiB wanted (twice the largest checkpoint so far)")
                    told = True
                with interrupts_held():
                    done, running = wait(running, timeout=POLL_S, return_when=FIRST_COMPLETED)
                    for future in done:
                        future.result()
        except BaseException:
            stop()
            with interrupts_held():
                wait(running)
            raise


_END = object()
