"""The `remanence` console script: Ctrl-C and SIGTERM are handled from its first instruction.

Importing the CLI (rich, jinja2, hyperscan) takes about half a second; an interrupt in that time must end
in one line and exit 130 like any other, so this module imports nothing heavy before the handlers are set.
"""
from __future__ import annotations

import contextlib
import signal
import sys
import threading

EXIT_INTERRUPTED = 130
INTERRUPT_SIGNALS = (signal.SIGINT, signal.SIGTERM)


# Every interrupt signal received. Python drops an exception raised where it cannot propagate (a weakref
# callback inside importlib, a __del__) with an "Exception ignored" message: such an interrupt is still acted on.
_received: list[int] = []
# While the main thread is inside interrupts_held(): how deep, and the interrupts that came meanwhile.
_holding = 0
_held: list[int] = []


def raise_interrupt(signum, frame):
    """A signal handler: the signal ends the work like Ctrl-C does (once any hold is over)."""
    _received.append(signum)
    if _holding:
        _held.append(signum)
        return
    raise KeyboardInterrupt


def _quiet_about_dropped_interrupts(unraisable) -> None:
    if not isinstance(unraisable.exc_value, KeyboardInterrupt):   # a dropped interrupt is in _received
        sys.__unraisablehook__(unraisable)


def handle_interrupts() -> None:
    """Ctrl-C and SIGTERM (a CI cancel) both raise KeyboardInterrupt: the runner kills targets, reports get written."""
    sys.unraisablehook = _quiet_about_dropped_interrupts
    for signum in INTERRUPT_SIGNALS:
        signal.signal(signum, raise_interrupt)


@contextlib.contextmanager
def interrupts_deferred():
    """Hold Ctrl-C/SIGTERM while the body runs (report files are being written); yields a list that holds the
    signals received, so the caller can end with exit 130 once the files are complete."""
    received: list[int] = []
    previous = {signum: signal.signal(signum, lambda signum, frame: received.append(signum))
                for signum in INTERRUPT_SIGNALS}
    try:
        yield received
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def interrupts_held():
    """Ctrl-C/SIGTERM wait while the body runs, then end the work as usual: for instructions an exception must not
    cut in two, such as a lock taken and not yet given back inside concurrent.futures (a KeyboardInterrupt there
    leaves it taken for good, and the next wait() hangs), or a run's thread started and not yet recorded. Holds the
    handler raise_interrupt, which the CLI and the pytest plugin install; handlers run on the main thread only, so
    elsewhere there is nothing to hold."""
    global _holding
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _holding += 1
    try:
        yield
    finally:
        due = _holding == 1 and bool(_held)
        if due:
            _held.clear()
        _holding -= 1
        if due:
            raise KeyboardInterrupt


def interrupted_message() -> int:
    print("remanence: interrupted", file=sys.stderr, flush=True)
    return EXIT_INTERRUPTED


def main(argv: list[str] | None = None) -> int:
    handle_interrupts()
    try:
        from .cli import main as cli_main
        from .results import EXIT_FAIL
        if _received:   # came while importing, and was dropped there
            raise KeyboardInterrupt
        code = cli_main(argv)
    except KeyboardInterrupt:
        return interrupted_message()
    # An interrupt dropped later still counts: FAIL (1) wins over it, it wins over the rest (1 > 130 > 3 > 0).
    return interrupted_message() if _received and code not in (EXIT_FAIL, EXIT_INTERRUPTED) else code


if __name__ == "__main__":
    sys.exit(main())
