"""Carrying out a plan: start each target, snapshot and scan at every checkpoint, judge, clean up."""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from .command import CANARY_ENV, CommandProcess, CommandUnavailable
from .model import Expect, Hit, Outcome, ScanResult, Secret, Snapshot
from .paths import inside
from .plan import Plan, PlannedRun
from .progress import CheckpointReached, Note, PlanStarted, RunFinished, RunStarted, Sink, SnapshotEvent
from .process import TargetError, TargetProcess, command_line, describe_status
from .results import Results, RunRecord, utc_now
from .schedule import MemoryGauge, run_all
from .scan.context import HitContext, hit_context, mask_secret, secret_material
from .scan.engine import ScanError, scan_snapshot
from .scenario import CheckpointSpec
from .secretgen import make_canary, make_secret
from .snapshot import SnapshotError, dispose_snapshot, held_still, resume, scratch
from .snapshot.exitstop import ExitStop
from .snapshot.methods import Occasion, Timing, method as snapshot_method
from .verdict import CRASH_SUBJECT, Kind, ProcessView, Step, Verdict, judge_death, judge_processes, process_name
from .workspace import workspace

DERIVED_PREFIX = "derived:"
STARTUP_TIMEOUT_S = 30.0
EXIT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class RunOptions:
    out_dir: Path
    keep_snapshots: bool = False
    timeout_s: float | None = None       # overrides each scenario's timeout
    follow: bool = False                 # snapshot every process of each target's tree (as `follow = true` does)
    jobs: int = 1                        # runs at once (schedule.run_all bounds them by memory too)


class _Control:
    """The positive control of one run: has the secret been seen where the scenario put it?"""

    def __init__(self) -> None:
        self.note = ""

    @property
    def established(self) -> bool:
        return bool(self.note)

    def observe(self, method: str, checkpoint: str, snapshot: Snapshot, hits, intended_address: int | None) -> None:
        if self.established:
            return
        intended = snapshot.region_at(intended_address) if intended_address is not None else None
        for hit in hits:
            if hit.full and (intended_address is None or hit.region == intended):
                self.note = f"planted copy seen by {method} at {checkpoint}"
                return


class Runner:
    def __init__(self, options: RunOptions, progress: Sink = lambda event: None):
        self.options = options
        self._progress_lock = threading.Lock()
        self._report = progress
        self._planned = self._done = 0
        self.gauge = MemoryGauge()
        self.stopping = False             # interrupted: running runs give up, no new one starts
        self._active: dict[str, TargetProcess | CommandProcess] = {}

    def progress(self, event) -> None:
        with self._progress_lock:       # runs on several threads: one event at a time
            self._report(event)

    def _finished(self, planned: PlannedRun, record: RunRecord) -> None:
        counts: dict[str, int] = {}
        for verdict in record.verdicts:
            counts[verdict.outcome.value] = counts.get(verdict.outcome.value, 0) + 1
        with self._progress_lock:
            self._done += 1
            self._report(RunFinished(planned.run_id, record.duration_s or 0.0,
                                     ", ".join(f"{n} {outcome}" for outcome, n in counts.items()),
                                     self._done, self._planned))

    def run(self, plan: Plan) -> Results:
        results = Results(runs=[])
        workspace()   # its sentinel is forked now: before any run's thread, and before any secret exists
        self._planned, self._done = len(plan.runs), 0
        self.progress(PlanStarted(len(plan.runs)))

        def started():
            for planned in plan.runs:
                record = RunRecord(planned.scenario, planned.repetition, planned.scenario.secret)
                results.runs.append(record)   # in plan order, whatever order the runs end in
                yield planned, record
        try:
            run_all(started(), lambda item: self._run_one(*item), self.options.jobs, self.gauge,
                    on_wait=lambda message: self.progress(Note(message)), stop=self._stop)
        except KeyboardInterrupt:
            results.interrupted = True
            self.progress(Note("interrupted: target killed, writing what we have"))
        results.finished_at = utc_now()
        return results

    def _stop(self) -> None:
        """Interrupted with runs on other threads: kill their targets, so each run ends at once and says why."""
        self.stopping = True
        for target in list(self._active.values()):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(target.pid, signal.SIGKILL)

    # --- one run -----------------------------------------------------------

    def _run_one(self, planned: PlannedRun, record: RunRecord) -> None:
        try:
            self._carry_out(planned, record)
        finally:
            self._finished(planned, record)

    def _carry_out(self, planned: PlannedRun, record: RunRecord) -> None:
        scenario = planned.scenario
        if planned.skip_reason:
            record.skip_reason = planned.skip_reason
            self._close_unreached(planned, record, list(scenario.checkpoints), Outcome.SKIP, planned.skip_reason)
            return
        if planned.error_reason:
            record.error = planned.error_reason
            self._close_unreached(planned, record, list(scenario.checkpoints), Outcome.ERROR, planned.error_reason)
            return
        # Private (0700), deleted even if we are killed: target logs and kernel cores land here; it is the
        # protocol targets' working folder, so a relative core_pattern puts their cores here too. Made before the
        # secret: the workspace's first use forks its sentinel, which would otherwise keep a copy of it.
        workdir = workspace().run_folder(planned.run_id)
        cgroup = workspace().run_cgroup(workdir)
        follow = scenario.follow or self.options.follow
        # A canary that also rides in the environment (text only) is on the initial stack of every process the
        # target starts: the per-process control when following its tree.
        secret, canary = make_secret(scenario.secret), make_canary(textual=scenario.command is not None or follow)
        record.secret_fingerprint, record.canary_fingerprint = secret.fingerprint, canary.fingerprint
        started = time.monotonic()
        pending = [c for c in scenario.checkpoints if _methods_at(planned, c)]
        self.progress(RunStarted(planned.run_id, scenario.target))
        try:
            with self._start(planned, secret, canary, workdir, cgroup, follow) as target:
                record.pid = target.pid
                self._active[planned.run_id] = target
                if self.stopping:   # interrupted while it started: _stop did not see it
                    target.kill()
                run = (_CommandRun if scenario.command else _Run)(self, planned, record, target, secret, canary,
                                                                   workdir, pending)
                try:
                    run.carry_out()
                except (TargetError, SnapshotError) as e:
                    record.error = None if self.stopping else str(e)
                except (OSError, ValueError, RuntimeError) as e:   # a fault of this run must not end the plan
                    record.error = None if self.stopping else f"internal error: {type(e).__name__}: {e}"
                finally:
                    self._active.pop(planned.run_id, None)
                    run.disarm()
                    target.kill()
                    record.exit = None if target.status is None else describe_status(target.status)
                    record.target_output = target.log_tail()
                    if target.escaped:
                        record.notes.append(f"{len(target.escaped)} process(es) the target started outside its process "
                                            "group (daemons) were still running at the end of the run: killed")
        except TargetError as e:    # it could not even start
            record.error = None if self.stopping else str(e)
        finally:
            record.duration_s = time.monotonic() - started
            if record.exit and record.error:   # a snapshot that failed because the target died says how it died
                for verdict in record.verdicts:
                    if verdict.outcome is Outcome.ERROR and record.exit not in verdict.reason:
                        verdict.reason += f" (the target: {record.exit})"
            if pending:
                reason = record.error or "the run was interrupted"
                self._close_unreached(planned, record, pending, Outcome.ERROR, f"checkpoint never reached: {reason}")
            if cgroup is not None:    # the target's kill ended it already, unless the target never started
                cgroup.end()
            shutil.rmtree(workdir, ignore_errors=True)

    @staticmethod
    def _start(planned: PlannedRun, secret: Secret, canary: Secret, workdir: Path, cgroup,
               follow: bool) -> TargetProcess | CommandProcess:
        if planned.scenario.command:
            try:
                return CommandProcess(planned.scenario.command, secret, canary, workdir, cgroup)
            except (CommandUnavailable, OSError) as e:
                raise TargetError(str(e)) from None
        try:
            program = planned.program
            env = {**program.env, **({CANARY_ENV: canary.value.decode()} if follow else {})}
            return TargetProcess(program.argv(planned.scenario.entry), len(secret.value), len(canary.value),
                                 workdir / "target.log", program.cwd or workdir, env, cgroup)
        except OSError as e:
            raise TargetError(f"cannot start the {planned.scenario.target} target: {e}") from None

    def _close_unreached(self, planned: PlannedRun, record: RunRecord, checkpoints: list[CheckpointSpec],
                         outcome: Outcome, reason: str) -> None:
        for spec in checkpoints:
            if spec.expects_crash and _methods_at(planned, spec):
                record.verdicts.append(Verdict(planned.scenario.name, planned.repetition, spec.name, spec.methods[0],
                                               Expect.CRASH, spec.default.why, outcome, reason, subject=CRASH_SUBJECT))
            for method in _methods_at(planned, spec):
                expectation = spec.for_method(method)
                record.verdicts.append(Verdict(planned.scenario.name, planned.repetition, spec.name, method,
                                               expectation.expect, expectation.why, outcome, reason))
                record.verdicts += [Verdict(planned.scenario.name, planned.repetition, spec.name, method, e.expect, e.why,
                                            outcome, reason, subject=DERIVED_PREFIX + label)
                                    for label, e in spec.derived.items()]


def _methods_at(planned: PlannedRun, spec: CheckpointSpec) -> tuple[str, ...]:
    """The checkpoint's methods in the scenario's order, except that one ending the target comes after the rest."""
    return tuple(sorted((m for m in spec.methods if m in planned.methods),
                        key=lambda m: snapshot_method(m).timing is Timing.ENDS_TARGET))


def _missing_notes(required: tuple[str, ...], notes: list[str]) -> list[str]:
    noted = {token for note in notes for token in note.split()}
    return [r for r in required if r not in noted]


class _Run:
    """One target's life: its checkpoints in order, then (if the scenario asks) its exit."""

    def __init__(self, runner: Runner, planned: PlannedRun, record: RunRecord, target: TargetProcess,
                 secret: Secret, canary: Secret, workdir: Path, pending: list[CheckpointSpec]):
        self.runner, self.planned, self.record, self.target = runner, planned, record, target
        self.secret, self.canary, self.workdir, self.pending = secret, canary, workdir, pending
        self.control = _Control()
        self.secret_material = secret_material(secret)
        # Values the target derived from the secret (`derived <label> <n>`), scanned for and masked like it.
        self.derived: dict[str, Secret] = {}
        self.derived_controls: dict[str, _Control] = {}
        self.timeout = runner.options.timeout_s or planned.scenario.timeout_s
        self.exit_stop: ExitStop | None = None
        self.crash_let_go = False        # an expected crash: the target was sent `continue` to commit it
        self.crash_timed_out = False     # ... and was still running when the scenario's timeout ran out

    def carry_out(self) -> None:
        self.target.expect_ready(STARTUP_TIMEOUT_S)
        self.target.send_secrets(self.canary.value, self.secret.value)
        # Every checkpoint the target announces, in order, even one where no selected method snapshots.
        announced = [c for c in self.planned.scenario.checkpoints if not c.is_exit]
        exit_spec = next((c for c in self.pending if c.is_exit), None)
        if exit_spec and not announced:
            self._arm_exit_stop()
        for spec in announced:
            event = self._next(("checkpoint",))
            if event.text != spec.name:
                raise TargetError(f"target reached checkpoint {event.text!r}, the scenario expects {spec.name!r} next")
            if spec in self.pending:
                self.pending.remove(spec)
                if spec.repeat:
                    self._steps(spec, event.address)
                else:
                    self.record.verdicts += self._checkpoint(spec, event.address)
            elif spec.expects_crash:   # no method selected takes its core: nothing to judge there
                self.target.kill()
            if self.target.status is not None:   # kernel-core (or the expected crash) ended it
                return
            if spec is announced[-1] and exit_spec:
                self._arm_exit_stop()  # only now: gdb cannot attach to a process we trace
            self.target.resume()
        if exit_spec:
            self._exit(exit_spec)
            return
        self._next(("done",))
        self.target.wait_exit(EXIT_TIMEOUT_S)

    def _steps(self, spec: CheckpointSpec, address: int | None) -> None:
        """A repeating checkpoint: its snapshots, then again after each full collection the target runs (held at the
        checkpoint), or every S seconds (the target left running, unheld, between steps)."""
        repeat, first = spec.repeat, time.monotonic()
        for index in range(repeat.steps):
            if index and repeat.collections:
                self.target.collect()
                event = self._next(("checkpoint",))
                if event.text != spec.name:
                    raise TargetError(f"target announced {event.text!r} after a collection, not {spec.name!r} again")
            elif index:
                due = first + index * repeat.every
                while not self.runner.stopping and time.monotonic() < due:
                    time.sleep(min(0.2, due - time.monotonic()))
                if self.runner.stopping:
                    return
            step = Step(spec.name, index + 1, repeat.steps, repeat.label(index), round(time.monotonic() - first, 3))
            self.record.verdicts += self._checkpoint(spec.step(index), address, step)

    def _arm_exit_stop(self) -> None:
        self.exit_stop = ExitStop(self.target.pid)
        self.exit_stop.arm()

    def disarm(self) -> None:
        if self.exit_stop is not None:
            self.exit_stop.release()
            if self.exit_stop.exit_status is not None:
                self.target.adopt_status(self.exit_stop.exit_status)
            self.exit_stop = None

    def _next(self, wanted: tuple[str, ...]):
        """The next event of a wanted kind; notes are recorded on the way, anything else ends the run."""
        while True:
            event = self.target.next_event(self.timeout)
            if event.kind == "note":
                self.record.notes.append(event.text)
            elif event.kind == "derived":
                self.derived[event.text] = Secret(DERIVED_PREFIX + event.text, event.data)
                self.derived_controls.setdefault(event.text, _Control())
                self.secret_material = secret_material(self.secret) + [
                    m for value in self.derived.values() for m in secret_material(value)]
            elif event.kind == "error":
                raise TargetError(f"target reported: {event.text}")
            elif event.kind in wanted:
                return event
            elif event.kind == "done":
                raise TargetError(f"target finished without reaching checkpoint {self.pending[0].name!r}")
            else:
                raise TargetError(f"target reached checkpoint {event.text!r}, the scenario expects no more checkpoints")

    def _exit(self, spec: CheckpointSpec) -> None:
        """The target runs to its end under the exit stop; snapshot it there, then let it go."""
        self._snapshot_at_exit(spec)
        self._next(("done",))
        self.target.wait_exit(EXIT_TIMEOUT_S)

    def _snapshot_at_exit(self, spec: CheckpointSpec) -> None:
        stop = self.exit_stop
        if not stop.wait_for_exit_stop(self.timeout):
            ended = describe_status(stop.exit_status) if stop.exit_status is not None else "no status"
            raise SnapshotError(f"the target ended without stopping at its exit ({ended})")
        self.pending.remove(spec)
        self.record.verdicts += self._checkpoint(spec, None)
        self.disarm()

    @property
    def following(self) -> bool:
        return self.planned.scenario.follow or self.runner.options.follow

    def _hold(self, spec: CheckpointSpec):
        """Keep the target (and, when following, every process of its tree) still for the checkpoint's snapshots;
        yields the processes to snapshot, the target first. At the exit checkpoint the exit stop holds it."""
        if spec.is_exit:
            return contextlib.nullcontext([self.target.pid])
        return held_still(self.target.pid, self.target.processes if self.following else None)

    def _let_crash(self) -> None:
        """An expected crash: tell the target to go on to its illegal act. It runs already: the kernel-core capture
        resumed it (its `resume_target`), or the checkpoint's hold ended."""
        self.crash_let_go = True
        self.target.resume()

    def _wait_crash(self, timeout: float) -> int:
        try:
            return self.target.wait_exit(timeout)
        except TargetError as e:      # it was killed: still running after the timeout
            self.crash_timed_out = True
            raise TimeoutError(str(e)) from None

    def _death_verdict(self, spec: CheckpointSpec) -> Verdict:
        """How the target expected to crash at `spec` died: let go by the kernel-core capture, else let go here."""
        if not self.crash_let_go:
            self._let_crash()
            with contextlib.suppress(TimeoutError):
                self._wait_crash(self.timeout)
        outcome, reason, _, kind = judge_death(None if self.crash_timed_out else self.target.status,
                                               spec.signal_numbers, self.timeout)
        return Verdict(self.planned.scenario.name, self.planned.repetition, spec.name, spec.methods[0], Expect.CRASH,
                       spec.default.why, outcome, reason, subject=CRASH_SUBJECT, kind=kind)

    def _capture(self, method: str, pid: int, command: str, earlier: list[_Capture], crash: bool = False) -> _Capture:
        """`method`'s snapshot of `pid`, scanned; an image taken earlier at this checkpoint that is identical by
        `method`'s own rules serves it instead of a second one."""
        for capture in earlier:
            if capture.snapshot.pid == pid and method in capture.snapshot.serves:
                return capture.serving(method)
        # Held: _hold keeps it stopped for a live method (the exit stop holds it at the exit).
        occasion = Occasion(pid, held=True, keep=self.runner.options.keep_snapshots, workdir=self.workdir,
                            wait_exit=self.target.wait_exit, resume_target=lambda: resume(self.target.pid),
                            exit_stop=self.exit_stop)
        if crash:
            occasion.crash, occasion.wait_exit, occasion.timeout = self._let_crash, self._wait_crash, self.timeout

        def inspect(snapshot: Snapshot) -> tuple[ScanResult, dict]:
            """Scan, and read each finding's surroundings, while the image is as captured."""
            snapshot.pid, snapshot.command = pid, command
            if snapshot.not_produced is not None:
                return ScanResult([], 0, 0.0, 0), {}
            scan = scan_snapshot(snapshot, [self.secret, self.canary, *self.derived.values()])
            contexts = {hit: hit_context(snapshot, hit, self.secret_material)
                        for hit in scan.hits if hit.secret != self.canary.label}
            return scan, contexts

        snapshot, (scan, contexts) = snapshot_method(method).capture(occasion, inspect)
        # Only a canary in memory proves the memory was captured (a note holds no heap or stack).
        canary_seen = any(h.secret == self.canary.label and h.full and h.address is not None for h in scan.hits)
        return _Capture(snapshot, scan, canary_seen, contexts)

    def _command(self, pid: int) -> str:
        """The process's command line for reports, with anything of the secret (or a derived value) masked."""
        return mask_secret(command_line(pid), self.secret_material).decode("utf-8", errors="replace")

    def _checkpoint(self, spec: CheckpointSpec, address: int | None, step: Step | None = None) -> list[Verdict]:
        """Take every snapshot first, so the positive control may come from any method at this checkpoint; then judge.
        `step`: where these snapshots lie in a repeating checkpoint's series."""
        planned = self.planned
        self.runner.progress(CheckpointReached(planned.run_id, step.shown if step else spec.name))
        self._establish_control(spec)
        with self._hold(spec) as held:
            processes = held if self.following and not spec.is_exit else self.target.processes()
            commands = {pid: self._command(pid) for pid in processes}
            taken: list[_Taken] = []
            for method in _methods_at(planned, spec):
                taken.append(self._take_all(spec, method, processes, commands, address,
                                            [c for t in taken for c in t.captures]))
        # What this checkpoint held in memory at once: its images in scratch files (a streamed procmem holds none).
        self.runner.gauge.observe(sum(c.snapshot.captured_bytes for t in taken for c in t.captures
                                      if c.served_from is None and scratch.is_scratch(c.snapshot.path)))
        missing = _missing_notes(spec.require_notes, self.record.notes)
        verdicts = [self._death_verdict(spec)] if spec.expects_crash else []
        for t in taken:
            expectation = spec.for_method(t.method)
            verdict = Verdict(planned.scenario.name, planned.repetition, spec.name, t.method, expectation.expect,
                              expectation.why, Outcome.ERROR, t.problem or "", intended_address=address)
            if t.snapshot is None:
                verdict.outcome = Outcome.SKIP if t.method in planned.method_skips else Outcome.ERROR
            else:
                self._judge_into(verdict, expectation, t, self.secret.label, self.control, address, spec.intended_region)
                if missing and verdict.outcome != Outcome.ERROR:
                    verdict.outcome, verdict.kind = Outcome.FAIL, Kind.MISSING_NOTES
                    verdict.reason = f"the target did not note {', '.join(missing)} (its notes: {'; '.join(self.record.notes) or 'none'}); " + verdict.reason
            verdicts.append(verdict)
            verdicts += self._derived_verdicts(spec, t)
        for verdict in verdicts if step else ():
            verdict.step, verdict.checkpoint = step, step.shown
        name = f"{spec.name}.step{step.index}" if step else spec.name
        for t in taken:
            for capture in t.captures:
                if capture.served_from is not None:   # its image is the other method's: freed or kept with it
                    capture.snapshot.path = capture.served_from.snapshot.path
                    continue
                self._dispose(capture.snapshot, name if capture is t.captures[0]
                              else f"{name}.pid{capture.snapshot.pid}")
        return verdicts

    def _take_all(self, spec: CheckpointSpec, method: str, processes: list[int], commands: dict[int, str],
                  address: int | None, earlier: list[_Capture]) -> _Taken:
        """One method's snapshots at a checkpoint: of every process when following (a live method), else of the
        target alone; `processes` beyond the target, when not snapshotted, are noted in the verdicts. `earlier`:
        this checkpoint's captures so far, whose images may serve this method too."""
        planned, progress = self.planned, self.runner.progress
        followed = processes if self.following and snapshot_method(method).live else processes[:1]
        t = _Taken(method, unfollowed=[(pid, commands[pid]) for pid in processes if pid not in followed])
        if method in planned.method_skips:
            t.problem = planned.method_skips[method]
            return t
        for pid in followed:
            who = "" if pid == self.target.pid else f" of {process_name(pid, commands[pid])}"
            progress(SnapshotEvent(planned.run_id, spec.name, method, who))
            try:
                capture = self._capture(method, pid, commands[pid], earlier, crash=spec.expects_crash)
            except (SnapshotError, ScanError, EOFError) as e:
                for earlier in t.captures:
                    dispose_snapshot(earlier.snapshot, None, "")
                t.captures, t.problem = [], f"{method} failed{who}: {e}"
                return t
            t.captures.append(capture)
            snapshot, scan = capture.snapshot, capture.scan
            secret_hits = [h for h in scan.hits if h.secret == self.secret.label]
            if pid == self.target.pid:    # the planted copy: where the target put it, in the target itself
                self.control.observe(method, spec.name, snapshot, secret_hits, address)
            for label, control in self.derived_controls.items():
                control.observe(method, spec.name, snapshot, [h for h in scan.hits if h.secret == DERIVED_PREFIX + label], None)
            progress(SnapshotEvent(planned.run_id, spec.name, method, who, result=(
                snapshot.not_produced or
                (f"the {snapshot.served_by} image serves it, " if snapshot.served_by else
                 f"{scan.bytes_scanned / (1 << 20):.1f} MiB scanned in {scan.duration_s:.2f} s, ")
                + f"{len(secret_hits)} hit(s)")))
        return t

    def _establish_control(self, spec: CheckpointSpec) -> None:
        """Protocol targets need nothing here: their control is the planted copy seen in a snapshot."""

    def _derived_verdicts(self, spec: CheckpointSpec, t: "_Taken") -> list[Verdict]:
        """One verdict per derived value the checkpoint has an expectation for, judged like the secret's."""
        verdicts = []
        for label, expectation in spec.derived.items():
            verdict = Verdict(self.planned.scenario.name, self.planned.repetition, spec.name, t.method, expectation.expect,
                              expectation.why, Outcome.ERROR, t.problem or "", subject=DERIVED_PREFIX + label)
            if t.method in self.planned.method_skips:
                verdict.outcome = Outcome.SKIP
            elif label not in self.derived:
                verdict.reason = f"the target never sent the derived value {label!r} (derived so far: {', '.join(self.derived) or 'none'})"
            elif t.snapshot is not None:
                self._judge_into(verdict, expectation, t, DERIVED_PREFIX + label, self.derived_controls[label], None, {})
            verdicts.append(verdict)
        return verdicts

    def _judge_into(self, verdict: Verdict, expectation, t: "_Taken", subject: str, control: _Control,
                    address: int | None, flags: dict[str, bool]) -> None:
        """Judge one subject's hits in a method's snapshots (of every process followed) and fill the verdict: outcome,
        reason, findings with their masked context, and what was scanned."""
        views = [ProcessView(c.snapshot, [h for h in c.scan.hits if h.secret == subject], c.canary_seen) for c in t.captures]
        verdict.canary_seen = all(view.canary_seen for view in views)
        verdict.outcome, verdict.reason, findings, verdict.kind = judge_processes(
            expectation=expectation, views=views, intended_address=address, control_established=control.established,
            control_note=control.note, intended_flags=flags)
        contexts = {hit: context for c in t.captures for hit, context in c.contexts.items()}
        verdict.findings = [replace(f, context=contexts[f.hit]) for f in findings]
        verdict.snapshot = t.snapshot
        verdict.scan_bytes = sum(c.scan.bytes_scanned for c in t.captures)
        verdict.scan_duration_s = sum(c.scan.duration_s for c in t.captures)
        if self.following:
            verdict.processes = views
        self._note_unfollowed(verdict, t)

    def _note_unfollowed(self, verdict: Verdict, t: "_Taken") -> None:
        """Processes of the tree this method did not snapshot: a verdict about the target alone says so, and an
        absence (or a missing expected copy) in the target alone proves nothing about the tree."""
        if not t.unfollowed:
            return
        names = ", ".join(process_name(pid, command) for pid, command in t.unfollowed)
        if not snapshot_method(t.method).live:
            verdict.reason += f" ({t.method} covers the target process only, not its {len(t.unfollowed)} other process(es): {names})"
            return
        verdict.reason += f"; the target's other process(es) were not snapshotted: {names} (follow = true, or --follow, snapshots them)"
        if verdict.outcome == Outcome.PASS and verdict.expect == Expect.ABSENT or \
                verdict.outcome == Outcome.FAIL and verdict.expect == Expect.PRESENT and not verdict.findings:
            verdict.outcome, verdict.kind = Outcome.INCONCLUSIVE, Kind.NOT_FOLLOWED

    def _dispose(self, snapshot: Snapshot, checkpoint: str) -> None:
        options = self.runner.options
        keep_in = inside(options.out_dir, Path("snapshots") / self.planned.run_id.replace("#", "-")) \
            if options.keep_snapshots else None
        dispose_snapshot(snapshot, keep_in, checkpoint)


class _CommandRun(_Run):
    """A user's program: deliver the secret, then each checkpoint when its trigger fires, then (maybe) its exit.
    After the last checkpoint a program that is still running is killed."""

    def carry_out(self) -> None:
        target: CommandProcess = self.target
        triggered = [c for c in self.planned.scenario.checkpoints if not c.is_exit]   # each counts from the one before
        exit_spec = next((c for c in self.pending if c.is_exit), None)
        if exit_spec and not triggered:
            self._arm_exit_stop()    # before the secret goes in: the program may be done with it at once
        since = target.deliver(self.timeout)
        self.record.notes.append(f"secret {target.delivered}")
        for spec in triggered:
            since = target.wait_for(spec.trigger, since, self.timeout, f"checkpoint {spec.name!r}")
            if spec in self.pending:        # not when --method leaves it no snapshot (e.g. --method exit)
                self.pending.remove(spec)
                self.record.verdicts += self._checkpoint(spec, None)
                if target.status is not None:   # kernel-core ended it
                    return
            if spec is triggered[-1] and exit_spec:
                self._arm_exit_stop()
        if exit_spec:
            self._snapshot_at_exit(exit_spec)
            target.wait_exit(EXIT_TIMEOUT_S)

    def _establish_control(self, spec: CheckpointSpec) -> None:
        """The program's memory is only worth searching once it took the secret in: proof of that is the
        planted-copy control here (the canary in its environment is the per-snapshot one)."""
        if self.control.established:
            return
        if proof := self.target.consumed():
            self.control.note = proof
        else:
            self.record.notes.append(f"at {spec.name}: {self.target.unconsumed_reason()}")


@dataclass
class _Capture:
    """One process's snapshot by one method, what its scan found and the surroundings of the subjects' hits."""

    snapshot: Snapshot
    scan: ScanResult
    canary_seen: bool
    contexts: dict[Hit, HitContext]
    served_from: _Capture | None = None   # the capture whose image this one is (one dump serving two methods)

    def serving(self, method: str) -> _Capture:
        """This image as `method`'s too: same bytes, same hits, no second dump or scan."""
        why = self.snapshot.serves[method]
        snapshot = replace(self.snapshot, method=method, serves={}, served_by=self.snapshot.method, served_why=why,
                           duration_s=0.0, notes=[f"served by the {self.snapshot.method} dump taken a moment before: {why}",
                                                  *self.snapshot.notes])
        return _Capture(snapshot, replace(self.scan, duration_s=0.0), self.canary_seen, self.contexts, self)


@dataclass
class _Taken:
    """One method's snapshots at a checkpoint (the target's first, then the other processes followed), before judging."""

    method: str
    captures: list[_Capture] = field(default_factory=list)
    unfollowed: list[tuple[int, str]] = field(default_factory=list)   # (pid, command) of the tree's other processes
    problem: str | None = None

    @property
    def snapshot(self) -> Snapshot | None:
        return self.captures[0].snapshot if self.captures else None
