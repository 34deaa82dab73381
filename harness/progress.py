"""Progress of a run: the runner's typed events, and the sinks that show them on stderr.

The runner (and the CLI, for its own notes) hands every event to one callable. Each event has the plain line it
stands for (`str(event)`), so a sink that only logs needs nothing else. The CLI's sinks:

- plain (stderr is not a terminal): one line per event, as CI logs and scripts read them;
- live (stderr is a terminal): a rich display of runs done of the total, the runs under way (several with -j) at
  their checkpoint and method, and an ETA; notes (waiting for memory, files written) print above it, and with -v
  every event's line does too;
- quiet (-q): nothing (errors are printed where they happen, not through progress).
"""
from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Union

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text


@dataclass(frozen=True)
class PlanStarted:
    runs: int

    def __str__(self) -> str:
        return f"{self.runs} run(s) planned"


@dataclass(frozen=True)
class RunStarted:
    run_id: str
    target: str

    def __str__(self) -> str:
        return f"{self.run_id}: starting {self.target} target"


@dataclass(frozen=True)
class CheckpointReached:
    run_id: str
    checkpoint: str

    def __str__(self) -> str:
        return f"{self.run_id}: {self.checkpoint}: reached"


@dataclass(frozen=True)
class SnapshotEvent:
    """A snapshot begun (`result` None) or taken and scanned (`result`: what it found, or why there is no image).
    `who`: which process, when it is not the target itself."""

    run_id: str
    checkpoint: str
    method: str
    who: str = ""
    result: str | None = None

    def __str__(self) -> str:
        if self.result is None:
            return f"{self.run_id}: {self.checkpoint}: {self.method} snapshot{self.who}"
        return f"{self.run_id}: {self.checkpoint}: {self.method}{self.who}: {self.result}"


@dataclass(frozen=True)
class RunFinished:
    """A run over (judged, skipped or failed): `done` of `total` runs of the plan are now over."""

    run_id: str
    duration_s: float
    outcomes: str          # e.g. "3 PASS, 1 FAIL"
    done: int
    total: int

    def __str__(self) -> str:
        return f"{self.run_id}: finished in {self.duration_s:.1f} s: {self.outcomes or 'no verdicts'} " \
               f"({self.done}/{self.total} runs done)"


@dataclass(frozen=True)
class Note:
    """Anything else worth a line: waiting for memory, an interrupt, a report written."""

    message: str

    def __str__(self) -> str:
        return self.message


Event = Union[PlanStarted, RunStarted, CheckpointReached, SnapshotEvent, RunFinished, Note]
DETAIL = (RunStarted, CheckpointReached, SnapshotEvent, RunFinished)   # what the live display shows instead of a line
Sink = Callable[[Event], None]


def eta_seconds(elapsed_s: float, done: int, total: int) -> float | None:
    """The time left if the runs still to come take, on average, the wall time the finished ones took (with -j the
    wall time per run already counts the runs that went at once). None before any run has finished."""
    if done <= 0:
        return None
    return elapsed_s / done * max(total - done, 0)


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


class Progress:
    """The CLI's sink: plain lines, a live display, or nothing. Call it with events (or a note's text);
    `live()` brackets the runs, and shows the display for its duration only in live mode."""

    def __init__(self, console: Console, quiet: bool = False, verbose: bool = False,
                 clock: Callable[[], float] = time.monotonic):
        self.console, self.quiet, self.verbose, self.clock = console, quiet, verbose, clock
        self.mode = "quiet" if quiet else "live" if console.is_terminal else "plain"
        self._lock = threading.Lock()
        self._live: Live | None = None
        self._started = clock()
        self._total = 0
        self._done = 0
        self._current: dict[str, str] = {}      # run id -> where it is (checkpoint · method)

    def __call__(self, event: Event | str) -> None:
        if isinstance(event, str):
            event = Note(event)
        if self.quiet:
            return
        with self._lock:   # state only: the display's refresh thread takes this lock inside rich's own
            self._follow(event)
            live = self._live
        # In live mode a run's detail never prints without -v, not even when it comes after the display has
        # ended: a run interrupted by Ctrl-C still reports its end while the harness writes its results.
        if self.mode == "plain" or self.verbose or not isinstance(event, DETAIL):
            self.console.print(escape(str(event)), style="dim")
        if live is not None:
            live.refresh()   # every event shows at once: the display never lags the lines above it

    def _follow(self, event: Event) -> None:
        if isinstance(event, PlanStarted):
            self._started, self._total, self._done = self.clock(), event.runs, 0
            self._current.clear()
        elif isinstance(event, RunStarted):
            self._current[event.run_id] = "starting"
        elif isinstance(event, CheckpointReached):
            self._current[event.run_id] = event.checkpoint
        elif isinstance(event, SnapshotEvent) and event.result is None:
            self._current[event.run_id] = f"{event.checkpoint} · {event.method}{event.who}"
        elif isinstance(event, RunFinished):
            self._current.pop(event.run_id, None)
            self._done, self._total = event.done, event.total

    @contextlib.contextmanager
    def live(self) -> Iterator[None]:
        """The live display while the body runs (live mode only); it is erased when the body ends, however it
        ends (Ctrl-C too), so the verdict table and any later line start on a clean terminal."""
        if self.mode != "live":
            yield
            return
        # stderr writes of others (warnings, print) go above the display, not through it.
        live = Live(console=self.console, get_renderable=self.render, transient=True, refresh_per_second=4,
                    redirect_stdout=False, redirect_stderr=True)
        with live:
            with self._lock:
                self._live = live
            try:
                yield
            finally:
                with self._lock:
                    self._live = None

    def render(self) -> Group:
        with self._lock:
            elapsed = self.clock() - self._started
            done, total, current = self._done, self._total, dict(self._current)
        eta = eta_seconds(elapsed, done, total)
        head = Table.grid(padding=(0, 1))
        head.add_row(Text("runs", style="bold"), ProgressBar(total=max(total, 1), completed=done, width=24),
                     Text(f"{done}/{total}", style="bold"), Text(f"elapsed {duration(elapsed)}"),
                     Text(f"ETA ~{duration(eta)} (mean wall time of the {done} finished run(s))" if eta is not None
                          else "ETA after the first run finishes", style="cyan"))
        lines = [Text(f"  {run_id}: {where}", overflow="ellipsis", no_wrap=True) for run_id, where in current.items()]
        return Group(head, *lines)
