"""pytest plugin: scenario files as tests (installed with the package, entry point `pytest11: remanence`).

    pytest scenarios/                          # every scenario, one item per checkpoint x method
    pytest scenarios -m "c and procmem"        # markers: remanence, the language, the method ('-' -> '_')
    pytest scenarios -n 4 --dist loadgroup     # pytest-xdist: one worker runs all items of a scenario
    pytest scenarios --remanence-out reports   # also write results.json of the runs done

Collection: every `*.toml` below a directory named `scenarios` (pyproject.toml and remanence.toml
excepted) is a scenario file. Its items are `<checkpoint>[<method>]`, one per method actually taken at
that checkpoint, in file order: `scenarios/c/sodium.live.toml::in_use[gcore-all]`. Ids depend on
nothing but the file, so they are identical across runs and xdist workers. A broken file is a
collection error carrying the ScenarioError text (file and key).

Running: the first item of a scenario file that runs (in its setup) runs the scenario once, all its
repetitions, with only the methods of the items selected in this session for that file (so `-m`/`-k`
deselection means those snapshots are never taken), and keeps the redacted results document on the
file's node for its siblings. Each item then judges its verdicts over all repetitions: PASS passes,
FAIL / INCONCLUSIVE / ERROR fail with a readable text built from the redacted results, and so does
SKIP (no evidence is not a green item) unless skips are allowed (`--remanence-allow-skip`, ini
`remanence_allow_skip = true`): then an item whose verdicts are all SKIP is skipped
(no secret bytes, no hexdumps). A scenario that cannot be planned (e.g. its entry is not registered
in the target) makes its items error at setup with the ScenarioError text.

xdist: items carry `xdist_group(<scenario name>)`, so `--dist loadgroup` (or loadfile / loadscope)
keeps a scenario in one worker and runs it once; under loadgroup their ids get xdist's `@<scenario
name>` suffix (applied here too where pytest >= 9.2 makes xdist's own write ineffective,
pytest-xdist#1386). Other modes stay correct: each worker that gets an item of a scenario runs that
scenario itself (private temp dirs, no cross-worker state), just slower. With --remanence-out the
workers send their results to the controller, which writes one results.json; kept snapshots go to
DIR/<worker>/snapshots.
"""
from __future__ import annotations

import contextlib
import json
import logging
import re
import signal
import threading
from collections import Counter
from pathlib import Path

import pytest

from .document import Document, HitEntry, VerdictEntry, merge, pack
from .entry import INTERRUPT_SIGNALS, raise_interrupt
from .model import Outcome
from .scan.encodings import fragment_text
from .snapshot import machine_facts
from .schedule import MAX_JOBS, default_jobs
from .scenario import COMMAND_TARGET, PROGRAM_TARGET, SNAPSHOT_METHODS, TARGET_KINDS, Scenario, ScenarioError, load_scenario

log = logging.getLogger("remanence")

NOT_SCENARIO_FILES = ("pyproject.toml", "remanence.toml")
SCENARIO_DIR = "scenarios"
_STATE = pytest.StashKey["_State"]()
_WORKEROUTPUT_KEY = "remanence_results"
# The worst outcome decides an item's result and wording; PASS never fails it, SKIP only when skips are not allowed.
_SEVERITY = (Outcome.FAIL, Outcome.ERROR, Outcome.INCONCLUSIVE, Outcome.SKIP)
_HEADLINES = {
    Outcome.FAIL: "the expectation does not hold",
    Outcome.ERROR: "the target or a snapshot failed; an ERROR verdict fails the gate",
    Outcome.INCONCLUSIVE: "the evidence cannot decide; an INCONCLUSIVE verdict fails the gate",
    Outcome.SKIP: "the check could not be done here, so there is no evidence; a SKIP fails unless skips are "
                  "allowed (--remanence-allow-skip, ini remanence_allow_skip = true)",
}
MAX_HITS_SHOWN = 8


def marker_name(word: str) -> str:
    """Marker names must be identifiers: gcore-all -> gcore_all."""
    return re.sub(r"\W", "_", word)


# --- options, markers, session state -------------------------------------------------------------

def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("remanence", "remanence scenario files (scenarios/**/*.toml)")
    group.addoption("--remanence-out", metavar="DIR", type=Path, default=None,
                    help="write results.json of the scenario runs done in this session into DIR")
    group.addoption("--remanence-keep-snapshots", action="store_true", default=False,
                    help="keep snapshot files (mode 0600, they hold the secret) under DIR/snapshots "
                         "(DIR/<worker>/snapshots under xdist); needs --remanence-out")
    group.addoption("--remanence-jobs", metavar="N", type=int, default=None,
                    help="a scenario's repetitions at once (default: the number of cores; 1 in an xdist worker, "
                         "where xdist already runs scenario files side by side)")
    group.addoption("--remanence-allow-skip", action="store_true", default=None,
                    help="items whose verdicts are SKIP (checks this machine cannot do) are skipped instead of failed")
    parser.addini("remanence_allow_skip", type="bool", default=False,
                  help="as --remanence-allow-skip: SKIP verdicts skip their items instead of failing them")


class _State:
    """Per pytest process: options, the redacted results documents of the runs done, the worker id."""

    def __init__(self, config: pytest.Config):
        out = config.getoption("remanence_out")
        # Relative to where pytest was started, whatever the current directory is when a run ends.
        self.out: Path | None = None if out is None else (config.invocation_params.dir / out).resolve()
        self.keep_snapshots: bool = config.getoption("remanence_keep_snapshots")
        option = config.getoption("remanence_allow_skip")
        self.allow_skip: bool = bool(config.getini("remanence_allow_skip") if option is None else option)
        workerinput = getattr(config, "workerinput", None)
        self.worker: str | None = workerinput.get("workerid") if workerinput else None
        jobs = config.getoption("remanence_jobs")
        if jobs is not None and not 1 <= jobs <= MAX_JOBS:
            raise pytest.UsageError(f"--remanence-jobs {jobs} is out of range 1..{MAX_JOBS}")
        self.jobs: int = jobs or (1 if self.worker else default_jobs())
        self.docs: list[Document] = []          # runs done by this process
        self.received: list[Document] = []      # runs done by xdist workers (controller only)
        self._machine: dict | None = None

    @property
    def machine(self) -> dict:
        if self._machine is None:
            self._machine = machine_facts()
        return self._machine

    @property
    def snapshot_dir(self) -> Path:
        # Workers must not share a snapshot folder: under non-group dist modes two of them may run the same scenario.
        return self.out / self.worker if self.worker else self.out


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "remanence: a remanence scenario checkpoint x snapshot method")
    for language in TARGET_KINDS:
        program = {COMMAND_TARGET: "a user's own unmodified program", PROGRAM_TARGET: "a user's own program on an SDK"}.get(
            language, f"the {language} program")
        config.addinivalue_line("markers", f"{language}: remanence scenario whose target is {program}")
    for method in SNAPSHOT_METHODS:
        config.addinivalue_line("markers", f"{marker_name(method)}: remanence item judged on a {method} snapshot")
    if not config.pluginmanager.hasplugin("xdist"):
        # Our items carry it; without xdist nobody registers it and --strict-markers would reject it.
        config.addinivalue_line("markers", "xdist_group(name): pytest-xdist group (used with --dist loadgroup)")
    state = _State(config)
    if state.keep_snapshots and state.out is None:
        raise pytest.UsageError("--remanence-keep-snapshots needs --remanence-out DIR (the snapshots hold the secret)")
    config.stash[_STATE] = state


# --- collection ------------------------------------------------------------------------------------

def is_scenario_file(path: Path) -> bool:
    return path.suffix == ".toml" and path.name not in NOT_SCENARIO_FILES and SCENARIO_DIR in path.parent.parts


def pytest_collect_file(file_path: Path, parent: pytest.Collector):
    if is_scenario_file(file_path):
        return ScenarioFile.from_parent(parent, path=file_path)
    return None


def _source_lines(text: str, scenario: Scenario) -> dict[tuple[str, str], int]:
    """0-based line for each (checkpoint, method): its per_method table if it has one, else its name."""
    lines = text.splitlines()
    headers = [i for i, line in enumerate(lines) if line.strip().replace(" ", "") == "[[checkpoints]]"]
    found: dict[tuple[str, str], int] = {}
    for index, spec in enumerate(scenario.checkpoints):
        start = headers[index] if index < len(headers) else 0
        end = headers[index + 1] if index + 1 < len(headers) else len(lines)
        name_line = next((i for i in range(start, end) if re.match(r"\s*name\s*=", lines[i])), start)
        for method in spec.methods:
            table = re.compile(r"\s*\[\s*checkpoints\s*\.\s*per_method\s*\.\s*[\"']?" + re.escape(method) + r"[\"']?\s*\]")
            found[(spec.name, method)] = next((i for i in range(start, end) if table.match(lines[i])), name_line) \
                if method in spec.per_method else name_line
    return found


class ScenarioFile(pytest.File):
    """One scenario file; runs its scenario at most once per process and keeps the results for its items."""

    scenario: Scenario | None = None
    selected_methods: set[str] | None = None   # methods of this file's items selected in the session
    _run: tuple[str, object] | None = None     # ("ok", redacted Document) or ("error", message)

    def collect(self):
        try:
            self.scenario = load_scenario(self.path)
        except ScenarioError as e:
            raise self.CollectError(f"remanence scenario error: {e}") from None
        lines = _source_lines(self.path.read_text(encoding="utf-8"), self.scenario)
        for spec in self.scenario.checkpoints:
            for method in spec.methods:
                yield ScenarioItem.from_parent(self, name=f"{spec.name}[{method}]", checkpoint=spec.name,
                                               method=method, line=lines.get((spec.name, method), 0))

    def repr_failure(self, excinfo):
        if isinstance(excinfo.value, ScenarioError):
            return f"remanence scenario error: {excinfo.value}"
        return super().repr_failure(excinfo)

    # --- the one run -------------------------------------------------------------------------------

    def document(self, methods: set[str]) -> Document:
        """The redacted results document of this scenario's run, running it on first use."""
        if self._run is None:
            self._run = ("error", "the scenario run did not complete")   # replaced below unless it raises
            try:
                self._run = ("ok", self._run_scenario(methods))
            except ScenarioError as e:
                self._run = ("error", f"remanence scenario error: {e}")
            except Exception as e:
                self._run = ("error", f"the scenario run failed in a sibling item: {type(e).__name__}: {e}")
                raise
            # KeyboardInterrupt (and SystemExit) propagate: the session stops.
        kind, value = self._run
        if kind == "error":
            pytest.fail(value, pytrace=False)
        return value

    def _run_scenario(self, methods: set[str]) -> Document:
        from .plan import make_plan
        from .runner import RunOptions, Runner

        state: _State = self.config.stash[_STATE]
        scenario = self.scenario
        chosen = [m for m in scenario.methods if m in methods]
        plan = make_plan([scenario], chosen)     # targets.py locks each cache entry: xdist workers build it once
        options = RunOptions(out_dir=state.snapshot_dir if state.out else Path("."), keep_snapshots=state.keep_snapshots,
                             jobs=state.jobs)
        log.info("%s: running %d repetition(s) with %s", scenario.name, len(plan.runs), ", ".join(chosen))
        with _harness_interrupts():
            results = Runner(options, progress=log.info).run(plan)
        results.machine = state.machine
        doc = Document.from_results(results)  # redacted; the Results (with unmasked hit contexts) are dropped here
        del results
        state.docs.append(doc)
        if state.out is not None and state.worker is None:
            _write(merge(state.docs, allow_skip=state.allow_skip), state.out)
        if doc.interrupted:
            raise KeyboardInterrupt(f"remanence: {scenario.name} interrupted")
        return doc


class ScenarioItem(pytest.Item):
    def __init__(self, *, checkpoint: str, method: str, line: int, **kwargs):
        super().__init__(**kwargs)
        self.checkpoint, self.method, self.line = checkpoint, method, line
        scenario = self.parent.scenario
        for mark in (pytest.mark.remanence, getattr(pytest.mark, marker_name(scenario.target)),
                     getattr(pytest.mark, marker_name(method)), pytest.mark.xdist_group(scenario.name)):
            self.add_marker(mark)

    @property
    def scenario(self) -> Scenario:
        return self.parent.scenario

    def setup(self) -> None:
        methods = self.parent.selected_methods or {self.method}
        self.parent.document(methods | {self.method})

    def runtest(self) -> None:
        doc = self.parent.document({self.method})
        verdicts = [v for v in doc.verdicts if v.scenario_checkpoint == self.checkpoint and v.method == self.method]
        if not verdicts:
            raise VerdictFailure(f"remanence ERROR: no verdict was recorded for {self.scenario.name} at "
                                 f"{self.checkpoint} with {self.method}")
        outcomes = [v.outcome for v in verdicts]
        allow_skip = self.config.stash[_STATE].allow_skip
        worst = next((o for o in _SEVERITY if o in outcomes and not (o == Outcome.SKIP and allow_skip)), None)
        if worst is not None:
            raise VerdictFailure(self._failure_text(worst, verdicts, doc))
        if all(o == Outcome.SKIP for o in outcomes):
            reason = _one_line("; ".join(dict.fromkeys(v.reason for v in verdicts)))
            try:   # report the skip at the scenario file's line, not at this plugin's
                skipped = pytest.skip.Exception(reason, _use_item_location=True)
            except TypeError:
                skipped = pytest.skip.Exception(reason)
            raise skipped

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, VerdictFailure):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style)

    def reportinfo(self):
        return self.path, self.line, f"{self.scenario.name}: {self.checkpoint} [{self.method}]"

    def _failure_text(self, worst: Outcome, verdicts: list[VerdictEntry], doc: Document) -> str:
        s, first = self.scenario, verdicts[0]
        failing = next(v for v in verdicts if v.outcome == worst)
        tally = Counter(v.outcome.value for v in verdicts)
        out = [f"{worst.value}: {_subject_note(failing)}{_one_line(failing.reason)}",
               f"  scenario: {s.name} ({self.location[0]}:{self.line + 1}), checkpoint {self.checkpoint}, "
               f"method {self.method}",
               f"  verdict:  {worst.value}: {_HEADLINES[worst]}",
               f"  expected: {first.expect}" + (f" (where: {_where(s, self.checkpoint, self.method)})"
                                                if first.expect == "present" else ""),
               f"  why:      {_one_line(first.why)}"]
        if len(verdicts) > 1:
            out.append("  outcomes: " + ", ".join(f"{n}/{len(verdicts)} {o}" for o, n in tally.items()))
        runs = {r.repetition: r for r in doc.runs}
        for v in verdicts:
            out.append(f"  repetition {v.repetition}: {v.outcome.value}: {_subject_note(v)}{_one_line(v.reason)}")
            if v.outcome in (Outcome.PASS, Outcome.SKIP):
                continue
            run = runs.get(v.repetition)
            out.append(f"    canary seen: {_yes_no(v.canary_seen)}; secret {run and run.secret.sha256_prefix or '-'} (sha256 prefix)")
            out += ["    " + line for line in _hit_summary(v.hits)]
            if v.outcome == Outcome.ERROR and run:
                if run.error:
                    out.append(f"    run error: {_one_line(run.error)}")
                if run.exit:
                    out.append(f"    target: {run.exit}")
        return "\n".join(out)


def _subject_note(verdict: VerdictEntry) -> str:
    """An item covers every subject judged at its checkpoint and method: name any but the secret."""
    return "" if verdict.subject == "secret" else f"[{verdict.subject}] "


class VerdictFailure(Exception):
    """An item's verdicts fail the gate; the message is the whole (redacted) failure text."""


def _where(scenario: Scenario, checkpoint: str, method: str) -> str:
    spec = scenario.checkpoint(checkpoint)
    return spec.for_method(method).where if spec else "any"


def _yes_no(value) -> str:
    return "n/a" if value is None else "yes" if value else "no"


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _hit_summary(hits: list[HitEntry]) -> list[str]:
    """Hits grouped by region: encoding, full copy or fragment, address. Never bytes."""
    if not hits:
        return ["hits: none"]
    groups: dict[str, list[str]] = {}
    for h in hits:
        region = h.region
        label = region.name or region.kind
        if region.kind != "registers" and region.name.strip("[]") != region.kind:
            label += f" ({region.kind})"
        marks = [m for m, on in (("intended region", h.in_intended_region), ("guarded", h.guarded)) if on]
        what = "full" if h.full else fragment_text(h.encoding, h.fragment)
        groups.setdefault(label + (f" [{', '.join(marks)}]" if marks else ""), []).append(
            f"{h.encoding} {what}" + (f" at {h.address}" if h.address else ""))
    lines = [f"hits: {len(hits)} in {len(groups)} region(s)"]
    shown = 0
    for label, entries in groups.items():
        if shown >= MAX_HITS_SHOWN:
            break
        take = entries[:MAX_HITS_SHOWN - shown]
        shown += len(take)
        more = f"; and {len(entries) - len(take)} more" if len(entries) > len(take) else ""
        lines.append(f"  {label}: {'; '.join(take)}{more}")
    if shown < len(hits):
        lines.append(f"  ... {len(hits) - shown} more hit(s) in results.json (--remanence-out)")
    return lines


# --- xdist loadgroup ---------------------------------------------------------------------------------

@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """In an xdist worker under --dist loadgroup, make sure our items carry their `@group` suffix.

    xdist groups by a `nodeid@group` suffix that its worker writes into `item._nodeid`; pytest >= 9.2
    keeps node ids in `item._id`, so that write no longer takes effect and every item becomes its own
    group (pytest-xdist#1386): each worker would then run every scenario. Where the suffix is missing we
    apply xdist's own rule (sorted xdist_group names joined by '_'). Once xdist sets it, this does nothing."""
    if not hasattr(config, "workerinput") or not getattr(config.option, "loadgroup", False):
        return
    for item in items:
        if not isinstance(item, ScenarioItem) or item.nodeid.rfind("@") > item.nodeid.rfind("]"):
            continue
        groups = sorted({str(m.args[0] if m.args else m.kwargs.get("name", "default"))
                         for m in item.iter_markers("xdist_group")})
        if groups:
            _set_nodeid(item, f"{item.nodeid}@{'_'.join(groups)}")


def _set_nodeid(item: pytest.Item, nodeid: str) -> None:
    structured = getattr(item, "_id", None)
    if structured is not None and hasattr(type(structured), "parse"):
        item._id = type(structured).parse(nodeid)
    else:
        item._nodeid = nodeid


# --- which methods each file runs: the items selected in this session --------------------------------

def pytest_collection_finish(session: pytest.Session) -> None:
    """After -m/-k/--lf and every other deselection: each file runs only its selected items' methods."""
    for item in session.items:
        if isinstance(item, ScenarioItem):
            if item.parent.selected_methods is None:
                item.parent.selected_methods = set()
            item.parent.selected_methods.add(item.method)


# --- results.json ------------------------------------------------------------------------------------

def _write(doc: Document, out: Path) -> Path:
    from .report import write_report
    from .report.json_report import JsonReporter
    return write_report(JsonReporter(), doc.to_json(), out)


def pytest_sessionfinish(session: pytest.Session) -> None:
    state: _State | None = session.config.stash.get(_STATE, None)
    if state is None:
        return
    if state.worker is not None:
        if state.out is not None and state.docs:
            session.config.workeroutput[_WORKEROUTPUT_KEY] = json.dumps([pack(doc.to_json()) for doc in state.docs])
        return
    docs = state.docs + state.received
    if state.out is not None and docs:
        path = _write(merge(docs, allow_skip=state.allow_skip), state.out)
        log.info("wrote %s", path)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    """xdist controller: collect the results documents a worker sends at its end."""
    state: _State | None = node.config.stash.get(_STATE, None)
    payload = getattr(node, "workeroutput", {}).get(_WORKEROUTPUT_KEY)
    if state is not None and payload:
        state.received.extend(Document.from_json(doc, "an xdist worker's results")
                              for doc in json.loads(payload))


def pytest_report_header(config: pytest.Config) -> str | None:
    state: _State | None = config.stash.get(_STATE, None)
    if state is not None and state.out is not None:
        return f"remanence: results.json to {state.out}" + (" (keeping snapshots)" if state.keep_snapshots else "")
    return None


# --- process-level helpers -----------------------------------------------------------------------------

@contextlib.contextmanager
def _harness_interrupts():
    """During a run, Ctrl-C and SIGTERM (a CI cancel) go through the harness's own handler: the runner kills the
    target, the session stops, and an interrupt never lands inside the scheduler's own locks (entry.interrupts_held)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, raise_interrupt) for signum in INTERRUPT_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
