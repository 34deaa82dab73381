"""Carrying out a plan: start each target, snapshot and scan at every checkpoint, judge, clean up."""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .model import Outcome, ScanResult, Secret, Snapshot
from .plan import Plan, PlannedRun
from .process import TargetError, TargetProcess, describe_status
from .results import Results, RunRecord
from .scan.engine import ScanError, scan_snapshot
from .scenario import CheckpointSpec
from .secretgen import make_canary, make_secret
from .snapshot import SnapshotError, take_snapshot
from .verdict import Verdict, judge

Progress = Callable[[str], None]
STARTUP_TIMEOUT_S = 30.0
EXIT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class RunOptions:
    out_dir: Path
    keep_snapshots: bool = False
    timeout_s: float | None = None       # overrides each scenario's timeout


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


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
    def __init__(self, options: RunOptions, progress: Progress = lambda message: None):
        self.options = options
        self.progress = progress

    def run(self, plan: Plan) -> Results:
        results = Results(runs=[], started_at=_now())
        try:
            for planned in plan.runs:
                record = RunRecord(planned.scenario, planned.repetition, planned.scenario.secret)
                results.runs.append(record)
                self._run_one(planned, record)
        except KeyboardInterrupt:
            results.interrupted = True
            self.progress("interrupted: target killed, writing what we have")
        results.finished_at = _now()
        return results

    # --- one run -----------------------------------------------------------

    def _run_one(self, planned: PlannedRun, record: RunRecord) -> None:
        scenario = planned.scenario
        if planned.skip_reason:
            record.skip_reason = planned.skip_reason
            self._close_unreached(planned, record, list(scenario.checkpoints), Outcome.SKIP, planned.skip_reason)
            return
        secret, canary = make_secret(scenario.secret), make_canary()
        record.secret_fingerprint, record.canary_fingerprint = secret.fingerprint, canary.fingerprint
        timeout = self.options.timeout_s or scenario.timeout_s
        workdir = Path(tempfile.mkdtemp(prefix="remanence-"))  # private (0700): snapshots land here
        started = time.monotonic()
        pending = list(scenario.checkpoints)
        self.progress(f"{planned.run_id}: starting {scenario.target} target")
        try:
            with TargetProcess(planned.program.binary, scenario.entry, len(secret.value), len(canary.value),
                               workdir / "target.log", workdir, planned.program.env) as target:
                record.pid = target.pid
                try:
                    target.expect_ready(STARTUP_TIMEOUT_S)
                    target.send_secrets(canary.value, secret.value)
                    control = _Control()
                    while True:
                        event = target.next_event(timeout)
                        if event.kind == "note":
                            record.notes.append(event.text)
                        elif event.kind == "error":
                            record.error = f"target reported: {event.text}"
                            break
                        elif event.kind == "done":
                            if pending:
                                record.error = f"target finished without reaching checkpoint {pending[0].name!r}"
                            target.wait_exit(EXIT_TIMEOUT_S)
                            break
                        else:
                            expected = pending[0].name if pending else None
                            if event.text != expected:
                                record.error = (f"target reached checkpoint {event.text!r}, the scenario expects "
                                                + (f"{expected!r} next" if expected else "no more checkpoints"))
                                break
                            spec = pending.pop(0)
                            record.verdicts += self._checkpoint(planned, spec, target.pid, event.address, secret, canary,
                                                                control, workdir)
                            target.resume()
                except TargetError as e:
                    record.error = str(e)
                finally:
                    target.kill()
                    record.exit = None if target.status is None else describe_status(target.status)
                    record.target_output = target.log_tail()
        finally:
            record.duration_s = time.monotonic() - started
            if pending:
                reason = record.error or "the run was interrupted"
                self._close_unreached(planned, record, pending, Outcome.ERROR, f"checkpoint never reached: {reason}")
            shutil.rmtree(workdir, ignore_errors=True)

    def _close_unreached(self, planned: PlannedRun, record: RunRecord, checkpoints: list[CheckpointSpec],
                         outcome: Outcome, reason: str) -> None:
        for spec in checkpoints:
            for method in planned.methods:
                expectation = spec.for_method(method)
                record.verdicts.append(Verdict(planned.scenario.name, planned.repetition, spec.name, method,
                                               expectation.expect, expectation.why, outcome, reason))

    # --- one checkpoint ----------------------------------------------------

    def _checkpoint(self, planned: PlannedRun, spec: CheckpointSpec, pid: int, address: int | None,
                    secret: Secret, canary: Secret, control: _Control, workdir: Path) -> list[Verdict]:
        taken: list[tuple[str, Snapshot | None, ScanResult | None, str | None]] = []
        for method in planned.methods:
            if method in planned.method_skips:
                taken.append((method, None, None, planned.method_skips[method]))
                continue
            self.progress(f"{planned.run_id}: {spec.name}: {method} snapshot")
            try:
                snapshot = take_snapshot(method, pid, workdir)
                scan = scan_snapshot(snapshot, [secret, canary])
            except (SnapshotError, ScanError, EOFError) as e:
                taken.append((method, None, None, f"{method} failed: {e}"))
                continue
            secret_hits = [h for h in scan.hits if h.secret == secret.label]
            control.observe(method, spec.name, snapshot, secret_hits, address)
            taken.append((method, snapshot, scan, None))
            self.progress(f"{planned.run_id}: {spec.name}: {method}: {scan.bytes_scanned / (1 << 20):.1f} MiB scanned "
                          f"in {scan.duration_s:.2f} s, {len(secret_hits)} hit(s)")
        verdicts = []
        for method, snapshot, scan, problem in taken:
            expectation = spec.for_method(method)
            verdict = Verdict(planned.scenario.name, planned.repetition, spec.name, method, expectation.expect,
                              expectation.why, Outcome.ERROR, problem or "", intended_address=address)
            if snapshot is None:
                verdict.outcome = Outcome.SKIP if method in planned.method_skips else Outcome.ERROR
            else:
                verdict.canary_seen = any(h.secret == canary.label and h.full for h in scan.hits)
                verdict.outcome, verdict.reason, verdict.findings = judge(
                    expectation=expectation, snapshot=snapshot,
                    secret_hits=[h for h in scan.hits if h.secret == secret.label],
                    canary_seen=verdict.canary_seen,
                    intended_address=address, control_established=control.established, control_note=control.note,
                    intended_flags=spec.intended_region)
                verdict.snapshot, verdict.scan_bytes, verdict.scan_duration_s = snapshot, scan.bytes_scanned, scan.duration_s
                self._dispose(snapshot, planned, spec.name)
            verdicts.append(verdict)
        return verdicts

    def _dispose(self, snapshot: Snapshot, planned: PlannedRun, checkpoint: str) -> None:
        """Delete the snapshot file, or keep it (0600, in a 0700 folder) when asked."""
        if not self.options.keep_snapshots:
            snapshot.path.unlink(missing_ok=True)
            return
        folder = self.options.out_dir / "snapshots" / planned.run_id.replace("#", "-")
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(folder.parent, 0o700)
        kept = folder / f"{checkpoint}.{snapshot.method}{snapshot.path.suffix or '.img'}"
        shutil.move(snapshot.path, kept)
        os.chmod(kept, 0o600)
        snapshot.path = kept
