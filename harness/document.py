"""results.json, the one record of a run: built from Results, read back and checked, merged (schema:
harness/schema/results-v2.schema.json; version 1 documents are still read).

`Document` and the classes it holds mirror the JSON one to one, in its key order. `Document.from_results`
builds it, `to_json` gives the plain data every reporter renders (`dumps` the text of results.json), `from_json` /
`read` read one back: a key the readers need that is missing or of the wrong type, or a foreign document, is
a DocumentError with one line naming the file and the key. A reader takes documents from older versions of
remanence: a key a class gives a default may be missing (the default stands in; `ABSENT` marks keys that are
then left out again). `merge` makes one document of several: the pytest plugin's scenarios and workers, and
`remanence merge`'s shards (shard.merge_documents checks their plan first).

A verdict's `kind` (verdict.Kind) says what kind of outcome it is; documents written before it existed lack it,
and `fallback_kind` is the one place that stands in for it.

The file and the plain data differ: `to_json` gives every verdict its own snapshot, hit regions and contexts (what
reporters render, and version 1's layout); `pack` stores each image a method took once (`snapshots`: its notes, and
its regions and gaps as indexes in the `regions` and `gaps` tables, each distinct one once) and each distinct hit
context once (`contexts`), and verdicts refer to them by index; `dumps` writes that (version 2); `from_json` reads
both versions, unpacking version 2.
"""
from __future__ import annotations

import dataclasses
import enum
import functools
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__
from .command import program_file
from .model import Gap, Outcome, Region, Snapshot
from .results import Results, RunRecord, fingerprint, outcomes_exit_code, verdict_fingerprints
from .snapshot import scratch
from .targets import PROJECT_ROOT, registration_site
from .verdict import Finding, Kind, Verdict, outcome_kind

SCHEMA_NAME = "remanence-results"
SCHEMA_VERSION = 2
READ_VERSIONS = (1, 2)
SCHEMA_DIR = Path(__file__).parent / "schema"
# the document's optional top-level keys, written after its verdicts
_AFTER_VERDICTS = ("series", "gate", "shard", "planned_runs", "shard_runs", "merged_from")


class DocumentError(ValueError):
    """A file that is not a results document this remanence reads; the message is one line."""


class _Absent:
    """The value of an optional key the document does not have (left out when written)."""

    def __repr__(self) -> str:
        return "ABSENT"


ABSENT: Any = _Absent()


# --- reading and writing the plain data, for every class below ---------------------------------------------------

@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _load(tp, value, where: str):
    """`value` (parsed JSON) as type `tp`, or DocumentError naming `where`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):     # the document's unions: one type, or null, or left out
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        (one,) = (a for a in options if a not in (type(None), _Absent))
        return _load(one, value, where)
    if dataclasses.is_dataclass(tp):
        return tp.from_json(value, where)
    if origin is list:
        _expect(isinstance(value, list), where, "a list", value)
        (item,) = typing.get_args(tp)
        return [_load(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        _expect(isinstance(value, dict), where, "an object", value)
        return dict(value)
    if issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            raise DocumentError(f"{where}: {value!r} is not one of {', '.join(e.value for e in tp)}") from None
    if tp is float:
        _expect(isinstance(value, (int, float)) and not isinstance(value, bool), where, "a number", value)
        return value
    _expect(isinstance(value, tp) and (tp is bool or not isinstance(value, bool)), where, tp.__name__, value)
    return value


def _json_type(value) -> str:
    return "null" if value is None else type(value).__name__


def _expect(ok: bool, where: str, what: str, value) -> None:
    if not ok:
        raise DocumentError(f"{where}: expected {what}, got {_json_type(value)}")


def _dump(value):
    if isinstance(value, _Record):
        return value.to_json()
    if isinstance(value, list):
        return [_dump(v) for v in value]
    if isinstance(value, enum.Enum):
        return value.value
    return value


class _Record:
    """A JSON object of the document: its keys are the dataclass's fields, in order. A field without a default
    is required; one defaulting to ABSENT is left out when absent."""

    @classmethod
    def _key(cls, where: str, key: str) -> str:
        return f"{where}.{key}"

    @classmethod
    def from_json(cls, data, where: str):
        _expect(isinstance(data, dict), where, "an object", data)
        hints = _field_types(cls)
        values = {}
        for f in dataclasses.fields(cls):
            if f.name in data:
                values[f.name] = _load(hints[f.name], data[f.name], cls._key(where, f.name))
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise DocumentError(f"{where}: {f.name} is missing")
        return cls(**values)

    def to_json(self) -> dict:
        return {f.name: _dump(getattr(self, f.name)) for f in dataclasses.fields(self)
                if getattr(self, f.name) is not ABSENT}


# --- the document -------------------------------------------------------------------------------------------------

@dataclass
class RegionEntry(_Record):
    start: str | None = None
    size: int = 0
    perms: str = ""
    kind: str = ""
    name: str = ""
    locked: bool | None = None
    dont_dump: bool | None = None
    thread: int | None = None
    register_set: str | None = None


@dataclass
class GapEntry(_Record):
    start: str | None = None
    size: int = 0
    name: str = ""
    kind: str = ""
    reason: str = ""
    perms: str = ""


@dataclass
class ContextEntry(_Record):
    offset: int
    bytes: str
    secret_ranges: list[list[int]]


@dataclass
class HitEntry(_Record):
    fingerprint: str               # the only key the gate needs; first here, last in the JSON (see to_json)
    encoding: str = ""
    full: bool = True
    fragment: list[int] | None = None
    address: str | None = None
    length: int = 0
    in_intended_region: bool = False
    guarded: bool = False
    region: RegionEntry = field(default_factory=RegionEntry)
    context: ContextEntry | None = None
    pid: int | None = None
    command: str | None = None

    def to_json(self) -> dict:
        data = super().to_json()
        data["fingerprint"] = data.pop("fingerprint")
        return data


@dataclass
class ServedBy(_Record):
    method: str
    why: str


@dataclass
class SnapshotEntry(_Record):
    method: str = ""
    captured_bytes: int = 0
    duration_s: float = 0.0
    regions: list[RegionEntry] = field(default_factory=list)
    gaps: list[GapEntry] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    kept_path: str | None = None
    not_produced: str | None = None
    not_produced_cause: str | None = None
    pid: int | None = None
    command: str | None = None
    served_by: ServedBy | _Absent = ABSENT    # only when another method's image served this one


@dataclass
class ProcessEntry(_Record):
    pid: int
    command: str
    canary_seen: bool
    hits: int
    snapshot: SnapshotEntry


@dataclass
class ScanEntry(_Record):
    bytes: int = 0
    duration_s: float = 0.0


@dataclass
class StepEntry(_Record):
    """A repeating checkpoint's step: the verdict's `checkpoint` is then "<checkpoint> [step <index>/<count>]"."""

    checkpoint: str
    index: int
    count: int
    label: str
    seconds: float


@dataclass
class VerdictEntry(_Record):
    scenario: str
    repetition: int
    checkpoint: str
    method: str
    subject: str = "secret"
    expect: str = ""
    why: str = ""
    outcome: Outcome = Outcome.ERROR
    reason: str = ""
    kind: Kind | None | _Absent = ABSENT     # absent in documents written before it existed: see fallback_kind
    canary_seen: bool | None = None
    intended_address: str | None = None
    scan: ScanEntry = field(default_factory=ScanEntry)
    snapshot: SnapshotEntry | None = None
    hits: list[HitEntry] = field(default_factory=list)
    fingerprints: list[str] = field(default_factory=list)
    processes: list[ProcessEntry] | _Absent = ABSENT    # only when following the target's process tree
    gate: dict | None | _Absent = ABSENT                # only once gated (gate.apply_gate)
    step: StepEntry | _Absent = ABSENT                  # only at a repeating checkpoint

    @classmethod
    def from_json(cls, data, where: str):
        entry = super().from_json(data, where)
        if "outcome" not in data:       # its default serves only the dataclass's field order
            raise DocumentError(f"{where}: outcome is missing")
        return entry

    @property
    def run_id(self) -> str:
        return f"{self.scenario}#{self.repetition}"

    def prints(self) -> list[str]:
        """The verdict's fingerprints (computed as the harness does for documents that lack them)."""
        if self.fingerprints:
            return list(self.fingerprints)
        if self.hits:
            return sorted({h.fingerprint for h in self.hits})
        return [fingerprint(self.scenario, self.method, self.checkpoint, "-", "none")]

    @property
    def scenario_checkpoint(self) -> str:
        """The checkpoint's name in the scenario file (without a repeating checkpoint's step)."""
        return self.step.checkpoint if isinstance(self.step, StepEntry) else self.checkpoint

    def effective_kind(self) -> Kind | None:
        """Its kind, or for a document written before verdicts had one, fallback_kind's."""
        return self.kind if isinstance(self.kind, Kind) else fallback_kind(self.outcome.value, self.expect, bool(self.hits))


@dataclass
class SourceSite(_Record):
    path: str
    line: int


@dataclass
class SecretEntry(_Record):
    form: str = ""
    length: int = 0
    sha256_prefix: str | None = None


@dataclass
class RunEntry(_Record):
    scenario: str
    repetition: int
    target: str = ""
    entry: str = ""
    source: str = ""
    description: str = ""
    target_source: SourceSite | None = None
    program: str | None = None
    secret: SecretEntry = field(default_factory=SecretEntry)
    canary_sha256_prefix: str | None = None
    pid: int | None = None
    exit: str | None = None
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    skip_reason: str | None = None
    target_output: str = ""
    duration_s: float = 0.0

    @property
    def run_id(self) -> str:
        return f"{self.scenario}#{self.repetition}"


@dataclass
class Aggregate(_Record):
    """One scenario x checkpoint x method x subject over its repetitions: the finding (where the secret survives)
    beside the gate's outcomes. Every repetition counts once in `full`, `fragments`, `clean` or `unknown`."""

    scenario: str
    checkpoint: str
    method: str
    subject: str = "secret"
    expect: str = ""
    runs: int = 0
    found: int = 0                                       # runs with any copy, full or fragment
    outcomes: dict[str, int] = field(default_factory=dict)
    full: int = 0                                        # runs with a full copy
    fragments: int = 0                                   # runs with fragments only
    clean: int = 0                                       # runs with no copy, judged on evidence (PASS or FAIL)
    unknown: int = 0                                     # runs whose snapshot proves nothing (INCONCLUSIVE, ERROR, SKIP)
    regions: list[str] = field(default_factory=list)    # kinds of the regions copies were found in


@dataclass
class SeriesStep(_Record):
    """One step of a series over the run's repetitions: `full` and `fragments` give, per repetition (in the order of
    the series' `repetitions`), the copies found (null: no measurement, an ERROR or SKIP); `found` counts the
    repetitions with at least one full copy, out of `measured`."""

    index: int
    label: str
    seconds: float             # since the series' first step, in its first repetition that measured it
    full: list[int | None]
    fragments: list[int | None]
    found: int
    measured: int


@dataclass
class Series(_Record):
    """What a repeating checkpoint saw, step by step: per scenario x checkpoint x method x subject."""

    scenario: str
    checkpoint: str
    method: str
    subject: str
    expect: str
    repetitions: list[int]
    steps: list[SeriesStep]


@dataclass
class Tool(_Record):
    name: str = "remanence"
    version: str = __version__


@dataclass
class MergedFrom(_Record):
    source: str
    shard: str
    runs: int
    tool: dict | None
    started_at: str
    finished_at: str
    exit_code: int | None
    machine: dict


@dataclass
class Document(_Record):
    schema: str
    schema_version: int
    verdicts: list[VerdictEntry]    # last in the JSON (see to_json)
    secrets_shown: bool = False
    tool: Tool = field(default_factory=Tool)
    started_at: str = ""
    finished_at: str = ""
    interrupted: bool = False
    exit_code: int = 0
    machine: dict = field(default_factory=dict)
    summary: dict[str, int] = field(default_factory=dict)
    aggregates: list[Aggregate] = field(default_factory=list)
    runs: list[RunEntry] = field(default_factory=list)
    series: list[Series] | _Absent = ABSENT            # only when a checkpoint repeats
    gate: dict | _Absent = ABSENT                      # once gated
    shard: str | _Absent = ABSENT                      # a shard's document: "i/N"
    planned_runs: list[str] | _Absent = ABSENT         # a shard's or a merged document: the whole plan's run ids
    shard_runs: list[str] | _Absent = ABSENT           # a shard's document: its own run ids
    merged_from: list[MergedFrom] | _Absent = ABSENT   # a merged document: the shards it was made of

    @classmethod
    def _key(cls, where: str, key: str) -> str:
        return f"{where}: {key}"

    def to_json(self) -> dict:
        data = super().to_json()
        verdicts = data.pop("verdicts")
        extras = {k: data.pop(k) for k in _AFTER_VERDICTS if k in data}
        return {**data, "verdicts": verdicts, **extras}

    @classmethod
    def from_json(cls, data, source: str, what: str = "results document", needs: tuple[str, ...] = ()) -> Document:
        """The document in `data` (parsed JSON) from `source` (a file name, for messages). `needs`: top-level keys
        that must be there although older documents may lack them (a shard's plan, for instance)."""
        if not isinstance(data, dict) or data.get("schema") != SCHEMA_NAME:
            raise DocumentError(f"{source}: not a remanence {what} (no \"schema\": \"{SCHEMA_NAME}\")")
        version = data.get("schema_version")
        if version not in READ_VERSIONS or isinstance(version, bool):
            raise DocumentError(f"{source}: schema_version {version!r}: this remanence reads "
                                f"{' and '.join(map(str, READ_VERSIONS))}")
        if not isinstance(data.get("verdicts"), list):
            raise DocumentError(f"{source}: no verdicts list")
        if version == 2 and "snapshots" in data:   # a file; the plain data of to_json has no tables
            data = unpack(data, source)
        for key in needs:
            if key not in data:
                raise DocumentError(f"{source}: {key} is missing")
        return super().from_json(data, source)

    @classmethod
    def from_results(cls, results: Results, show_secrets: bool = False) -> Document:
        """The whole run as a document. Secret bytes in hit contexts are masked unless `show_secrets`."""
        doc = cls(SCHEMA_NAME, SCHEMA_VERSION, [_verdict(v, show_secrets) for v in results.verdicts],
                  secrets_shown=show_secrets, started_at=results.started_at, finished_at=results.finished_at,
                  interrupted=results.interrupted, exit_code=results.exit_code(), machine=results.machine,
                  runs=[_run(r) for r in results.runs])
        doc.summary, doc.aggregates, doc.series = counts(doc.verdicts), aggregates(doc.verdicts), series(doc.verdicts)
        return doc

    def ungated_exit_code(self, allow_skip: bool = False) -> int:
        return outcomes_exit_code((v.outcome.value for v in self.verdicts), self.interrupted, allow_skip)


def results_document(results: Results, show_secrets: bool = False) -> dict:
    """The plain data of results.json for `results`: what every reporter renders."""
    return Document.from_results(results, show_secrets).to_json()


def read(path: Path, what: str = "results document", needs: tuple[str, ...] = (), name: str | None = None) -> Document:
    """The document in the file at `path`; DocumentError (one line, naming `name` or the path) if it is not one."""
    name = name or str(path)
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DocumentError(f"{name}: file not found") from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise DocumentError(f"{name}: cannot read it as JSON: {' '.join(str(e).split())}") from None
    return Document.from_json(data, name, what, needs)


def schema(version: int = SCHEMA_VERSION) -> dict:
    """The JSON schema of results.json files of `version` (the current one: every file `dumps` writes satisfies it)."""
    return json.loads((SCHEMA_DIR / f"results-v{version}.schema.json").read_text(encoding="utf-8"))


# --- derived values ---------------------------------------------------------------------------------------------

def counts(verdicts: list[VerdictEntry]) -> dict[str, int]:
    """How many verdicts have each outcome."""
    summary = {o.value: 0 for o in Outcome}
    for v in verdicts:
        summary[v.outcome.value] += 1
    return summary


def aggregates(verdicts: list[VerdictEntry]) -> list[Aggregate]:
    """Each scenario x checkpoint x method x subject over its repetitions (in order of first appearance): outcome
    counts and how many runs found the secret -- the rate for GC-dependent scenarios."""
    groups: dict[tuple[str, str, str, str], Aggregate] = {}
    for v in verdicts:
        key = (v.scenario, v.checkpoint, v.method, v.subject)
        agg = groups.setdefault(key, Aggregate(*key, expect=v.expect))
        agg.runs += 1
        agg.found += bool(v.hits)
        agg.outcomes[v.outcome.value] = agg.outcomes.get(v.outcome.value, 0) + 1
        if any(h.full for h in v.hits):
            agg.full += 1
        elif v.hits:
            agg.fragments += 1
        elif v.outcome in (Outcome.PASS, Outcome.FAIL):
            agg.clean += 1
        else:
            agg.unknown += 1
        agg.regions = sorted(set(agg.regions) | {h.region.kind for h in v.hits})
    return list(groups.values())


def series(verdicts: list[VerdictEntry]) -> list[Series] | _Absent:
    """The repeating checkpoints' verdicts as series (ABSENT when none repeats): copies per step and repetition,
    full copies and fragments apart, and how many repetitions had a full copy at each step."""
    stepped: dict[tuple[str, str, str, str], list[VerdictEntry]] = {}
    for v in verdicts:
        if isinstance(v.step, StepEntry):
            stepped.setdefault((v.scenario, v.step.checkpoint, v.method, v.subject), []).append(v)
    if not stepped:
        return ABSENT
    made = []
    for key, group in stepped.items():
        repetitions = sorted({v.repetition for v in group})
        steps: dict[int, SeriesStep] = {}
        for v in sorted(group, key=lambda v: v.repetition):
            width = len(repetitions)
            step = steps.setdefault(v.step.index, SeriesStep(v.step.index, v.step.label, v.step.seconds,
                                                             [None] * width, [None] * width, 0, 0))
            if v.outcome in (Outcome.ERROR, Outcome.SKIP):
                continue
            column, full = repetitions.index(v.repetition), sum(h.full for h in v.hits)
            if step.measured == 0:
                step.seconds = v.step.seconds
            step.full[column], step.fragments[column] = full, len(v.hits) - full
            step.found += full > 0
            step.measured += 1
        made.append(Series(*key, group[0].expect, repetitions, [steps[i] for i in sorted(steps)]))
    return made


def fallback_kind(outcome: str, expect: str, has_hits: bool) -> Kind | None:
    """The kind of a verdict from a document written before verdicts had one, from what the document says
    without reading the reason: ERROR and SKIP are their own kind; an `observe` expectation FAILs only on the
    intended region's flags; otherwise a FAIL is a copy found (absent), one found elsewhere or none found
    (present). Such a document cannot tell a flags FAIL of `absent` or `present` apart, nor PASS and INCONCLUSIVE
    kinds (None)."""
    try:
        judged = outcome_kind(Outcome(outcome), None)
    except ValueError:
        return None
    if judged is not None or outcome != Outcome.FAIL.value:
        return judged
    if expect == "observe":
        return Kind.REGION_FLAGS
    if expect == "crash":
        return Kind.NO_CRASH
    if expect == "present":
        return Kind.MISPLACED if has_hits else Kind.NOT_FOUND
    return Kind.LEAK


def kind_of(verdict: dict) -> Kind | None:
    """A document verdict's kind: its own, else fallback_kind's."""
    try:
        return Kind(verdict["kind"])
    except (KeyError, ValueError, TypeError):
        return fallback_kind(verdict.get("outcome", ""), verdict.get("expect", ""), bool(verdict.get("hits")))


# --- the file: version 2's tables ---------------------------------------------------------------------------------

_TABLES = ("regions", "gaps", "snapshots", "contexts")


def _key(value) -> str:
    return json.dumps(value, sort_keys=True)


class _Table:
    """Distinct values in order of first appearance; a value's index is its reference."""

    def __init__(self):
        self.index: dict[str, int] = {}
        self.entries: list = []

    def add(self, value) -> int:
        key = _key(value)
        if key not in self.index:
            self.index[key] = len(self.entries)
            self.entries.append(value)
        return self.index[key]


class _Packer:
    """The tables of one document being packed."""

    def __init__(self):
        self.tables = {name: _Table() for name in ("regions", "gaps", "contexts")}
        self.images: list[dict] = []
        self.taken: dict[str, int] = {}    # _taken_key -> the id of the image

    def add_image(self, verdict: dict, snapshot: dict, method: str) -> int:
        """The id of the image `method` took that `snapshot` shows: one entry, however many subjects it was judged
        for; the first snapshot that shows it (without served_by) is the entry."""
        key = _taken_key(verdict, snapshot, method)
        if key not in self.taken:
            self.taken[key] = len(self.images)
            self.images.append({k: val for k, val in snapshot.items() if k != "served_by"})
        return self.taken[key]

    def add_taken(self, verdict: dict, snapshot: dict | None) -> None:
        """A snapshot its own method took (not served) as an image."""
        if snapshot is not None and "served_by" not in snapshot:
            self.add_image(verdict, snapshot, snapshot["method"])

    def snapshot(self, verdict: dict, snapshot: dict | None) -> tuple[int | dict | None, dict | None]:
        """(what a verdict or process holds for `snapshot`: its image's id, or {"image": id, <what differs>};
        `snapshot`, what a reader unpacks it to). A snapshot another method's image served refers to that image (the one that method took
        of the same process at the same checkpoint), with what it says apart from it: its method, duration, notes
        and served_by."""
        if snapshot is None:
            return None, None
        # (served by a method whose verdicts are not in the document: the served snapshot stands for the image)
        number = self.add_image(verdict, snapshot, snapshot["served_by"]["method"] if "served_by" in snapshot
                                else snapshot["method"])
        image = self.images[number]
        differs = {k: val for k, val in snapshot.items() if k not in image or image[k] != val}
        return (number if not differs else {"image": number, **differs}), snapshot

    def hit(self, hit: dict, snapshot: dict | None) -> dict:
        """A hit's region as its index in the regions of the snapshot it lies in, its command left out when it is
        the snapshot's, its context as an index in `contexts`."""
        hit = dict(hit)
        if snapshot is not None and hit["region"] in snapshot["regions"]:
            hit["region"] = snapshot["regions"].index(hit["region"])
            if hit.get("command") == snapshot["command"]:
                del hit["command"]
        if hit.get("context") is not None:
            hit["context"] = self.tables["contexts"].add(hit["context"])
        return hit

    def verdict(self, v: dict) -> dict:
        v = dict(v)
        v["snapshot"], own = self.snapshot(v, v.get("snapshot"))
        by_pid = {}
        if "processes" in v:
            v["processes"] = [dict(p) for p in v["processes"]]
            for p in v["processes"]:
                p["snapshot"], by_pid[p["pid"]] = self.snapshot(v, p["snapshot"])
        v["hits"] = [self.hit(h, by_pid.get(h.get("pid"), own)) for h in v.get("hits", [])]
        return v

    def snapshots(self) -> list[dict]:
        """The snapshots table: each image with its id, its regions and gaps as indexes in `regions` and `gaps`."""
        return [{"id": i, **image, "regions": [self.tables["regions"].add(_set_keys(r)) for r in image["regions"]],
                 "gaps": [self.tables["gaps"].add(_set_keys(g)) for g in image["gaps"]]}
                for i, image in enumerate(self.images)]


def _taken_key(verdict: dict, snapshot: dict, method: str) -> str:
    """An image: what `method` took of the snapshot's process at the verdict's checkpoint of its run."""
    return _key((verdict["scenario"], verdict["repetition"], verdict["checkpoint"], snapshot.get("pid"), method))


def _set_keys(entry: dict) -> dict:
    """A region or gap without its null keys (null is their default: RegionEntry, GapEntry)."""
    return {k: val for k, val in entry.items() if val is not None}


def pack(doc: dict) -> dict:
    """results.json's version 2 of the plain data `doc` (to_json's, gated or not): each snapshot's image once in
    `snapshots`, referred to by id from its verdicts and processes, its regions and gaps as indexes in the
    document's `regions` and `gaps` (each distinct one once); a hit's region as its index in the regions of the
    image of the process it lies in; each distinct hit context once in `contexts`, referred to by its index."""
    packer = _Packer()
    for v in doc["verdicts"]:       # the images taken first: a served snapshot refers to one, whatever the order
        for snapshot in [v.get("snapshot")] + [p["snapshot"] for p in v.get("processes", [])]:
            packer.add_taken(v, snapshot)
    verdicts = [packer.verdict(v) for v in doc["verdicts"]]
    snapshots = packer.snapshots()
    data = {k: val for k, val in doc.items() if k != "verdicts"}
    data["schema_version"] = SCHEMA_VERSION
    extras = {k: data.pop(k) for k in _AFTER_VERDICTS if k in data}
    tables = {"regions": packer.tables["regions"].entries, "gaps": packer.tables["gaps"].entries,
              "snapshots": snapshots, "contexts": packer.tables["contexts"].entries}
    return {**data, **tables, "verdicts": verdicts, **extras}


def _entry(table: list, ref, where: str, what: str):
    _expect(isinstance(ref, int) and not isinstance(ref, bool), where, f"an index in {what}", ref)
    if not 0 <= ref < len(table):
        raise DocumentError(f"{where}: {ref} is not an index in {what} (it has {len(table)})")
    return table[ref]


class _Unpacker:
    """The tables of a version 2 file, and the references into them resolved."""

    def __init__(self, data: dict, source: str):
        self.source = source
        for name in _TABLES:
            _expect(isinstance(data.get(name), list), f"{source}: {name}", "a list", data.get(name))
        self.regions, self.gaps, self.contexts = data["regions"], data["gaps"], data["contexts"]
        self.images = [self.image(image, f"{source}: snapshots[{i}]") for i, image in enumerate(data["snapshots"])]

    def image(self, image, where: str) -> dict:
        _expect(isinstance(image, dict), where, "an object", image)
        image = {k: val for k, val in image.items() if k != "id"}
        for name, table in (("regions", self.regions), ("gaps", self.gaps)):
            _expect(isinstance(image.get(name), list), f"{where}.{name}", "a list", image.get(name))
            image[name] = [_entry(table, ref, f"{where}.{name}[{j}]", name) for j, ref in enumerate(image[name])]
        return image

    def snapshot(self, ref, where: str) -> dict | None:
        if ref is None:
            return None
        overrides = ref if isinstance(ref, dict) else {"image": ref}
        image = _entry(self.images, overrides.get("image"), f"{where}.image" if ref is overrides else where, "snapshots")
        return {**image, **{k: val for k, val in overrides.items() if k != "image"}}

    def hit(self, hit, snapshot: dict | None, where: str):
        if not isinstance(hit, dict):
            return hit          # Document.from_json names it
        hit = dict(hit)
        if isinstance(hit.get("region"), int):
            _expect(snapshot is not None, f"{where}.region", "a region object (the verdict has no snapshot)", hit["region"])
            hit["region"] = _entry(snapshot["regions"], hit["region"], f"{where}.region", "its snapshot's regions")
            hit.setdefault("command", snapshot.get("command"))
        if hit.get("context") is not None:
            hit["context"] = _entry(self.contexts, hit["context"], f"{where}.context", "contexts")
        return hit

    def verdict(self, v, where: str):
        if not isinstance(v, dict):
            return v
        v = dict(v)
        v["snapshot"] = own = self.snapshot(v.get("snapshot"), f"{where}.snapshot")
        by_pid = {}
        if isinstance(v.get("processes"), list):
            v["processes"] = [dict(p) if isinstance(p, dict) else p for p in v["processes"]]
            for j, p in enumerate(v["processes"]):
                if isinstance(p, dict):
                    p["snapshot"] = by_pid[p.get("pid")] = self.snapshot(p.get("snapshot"), f"{where}.processes[{j}].snapshot")
        if isinstance(v.get("hits"), list):
            v["hits"] = [self.hit(h, by_pid.get(h.get("pid"), own) if isinstance(h, dict) else None, f"{where}.hits[{j}]")
                         for j, h in enumerate(v["hits"])]
        return v


def unpack(data: dict, source: str) -> dict:
    """The plain data (to_json's layout) of a version 2 file's `data`; DocumentError naming a reference that points
    nowhere."""
    tables = _Unpacker(data, source)
    verdicts = [tables.verdict(v, f"{source}: verdicts[{i}]") for i, v in enumerate(data["verdicts"])]
    return {**{k: val for k, val in data.items() if k not in _TABLES}, "verdicts": verdicts}


def dumps(doc: dict) -> str:
    """The text of results.json for the plain data `doc`: version 2 (see pack), one line per table entry, verdict
    and run, so that it is both small and read (and diffed) line by line."""
    lines = []
    for key, value in pack(doc).items():
        if isinstance(value, list) and value:
            items = ",\n".join(f"    {json.dumps(item, separators=(',', ':'))}" for item in value)
            lines.append(f"  {json.dumps(key)}: [\n{items}\n  ]")
        else:
            lines.append(f"  {json.dumps(key)}: {json.dumps(value)}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


# --- merging -----------------------------------------------------------------------------------------------------

def merge(docs: list[Document], run_order: list[str] | None = None, allow_skip: bool = False) -> Document:
    """One document of several runs' documents (scenarios, xdist workers, shards): runs and verdicts in `run_order`
    (run ids) when given, else as given; their gates dropped (gate the merged document anew); summary, aggregates
    and exit code recomputed. The first document's tool and machine stand for all (it is written in this version)."""
    first = docs[0]
    runs = [r for d in docs for r in d.runs]
    verdicts = [dataclasses.replace(v, gate=ABSENT) for d in docs for v in d.verdicts]
    if run_order is not None:
        position = {rid: i for i, rid in enumerate(run_order)}
        runs.sort(key=lambda r: position[r.run_id])
        verdicts.sort(key=lambda v: position[v.run_id])      # stable: a run's verdicts keep their order
    merged = Document(first.schema, SCHEMA_VERSION, verdicts,
                      secrets_shown=any(d.secrets_shown for d in docs), tool=first.tool,
                      started_at=min(d.started_at for d in docs), finished_at=max(d.finished_at for d in docs),
                      interrupted=any(d.interrupted for d in docs), machine=first.machine,
                      summary=counts(verdicts), aggregates=aggregates(verdicts), runs=runs, series=series(verdicts))
    merged.exit_code = merged.ungated_exit_code(allow_skip)
    return merged


# --- building from Results ----------------------------------------------------------------------------------------

def _address(value: int | None) -> str | None:
    return None if value is None else f"{value:#x}"


def _region(r: Region) -> RegionEntry:
    return RegionEntry(_address(r.start), r.size, r.perms, r.kind.value, r.name, r.locked, r.dont_dump, r.thread,
                       r.register_set)


def _gap(g: Gap) -> GapEntry:
    return GapEntry(_address(g.start), g.size, g.name, g.kind.value, g.reason, g.perms)


def _finding(v: Verdict, f: Finding, show_secrets: bool) -> HitEntry:
    h = f.hit
    context = None
    if f.context is not None:
        context = ContextEntry(f.context.start, " ".join(f.context.masked_hex(reveal=show_secrets)),
                               [list(r) for r in f.context.secret_ranges])
    return HitEntry(fingerprint(v.scenario, v.method, v.checkpoint, h.region.kind.value,
                                h.encoding + ("" if h.full else ":fragment"), v.subject),
                    h.encoding, h.full, list(h.fragment) if h.fragment else None, _address(h.address), h.length,
                    f.in_intended_region, f.guarded, _region(h.region), context, h.pid, h.command)


def _snapshot(s: Snapshot) -> SnapshotEntry:
    return SnapshotEntry(s.method, s.captured_bytes, round(s.duration_s, 4), [_region(r) for r in s.regions],
                         [_gap(g) for g in s.gaps], list(s.notes),
                         None if scratch.is_scratch(s.path) or not s.path.exists() else str(s.path),
                         s.not_produced, s.not_produced_cause.value if s.not_produced_cause else None, s.pid, s.command,
                         ServedBy(s.served_by, s.served_why) if s.served_by else ABSENT)


def _verdict(v: Verdict, show_secrets: bool) -> VerdictEntry:
    kind = outcome_kind(v.outcome, v.kind)
    return VerdictEntry(
        v.scenario, v.repetition, v.checkpoint, v.method, v.subject, v.expect.value, v.why, v.outcome, v.reason,
        kind if kind is not None else ABSENT, v.canary_seen, _address(v.intended_address),
        ScanEntry(v.scan_bytes, round(v.scan_duration_s, 4)), None if v.snapshot is None else _snapshot(v.snapshot),
        [_finding(v, f, show_secrets) for f in v.findings], verdict_fingerprints(v),
        # following the target's process tree: what each process showed, the target first
        [ProcessEntry(p.snapshot.pid, p.snapshot.command, p.canary_seen, len(p.hits), _snapshot(p.snapshot))
         for p in v.processes] if v.processes else ABSENT,
        step=StepEntry(v.step.checkpoint, v.step.index, v.step.count, v.step.label, v.step.seconds) if v.step else ABSENT)


def _project_path(path: Path) -> str:
    """Paths inside the project are given relative to it, so reports match across checkouts; others absolute."""
    try:
        absolute = path.resolve()
    except (RuntimeError, OSError):    # a symbolic link loop
        return str(path)
    return str(absolute.relative_to(PROJECT_ROOT) if absolute.is_relative_to(PROJECT_ROOT) else absolute)


def _run(r: RunRecord) -> RunEntry:
    s = r.scenario
    site = registration_site(s.target, s.entry)
    program = program_file(s.command) if s.command else None
    return RunEntry(s.name, r.repetition, s.target, s.entry, _project_path(s.source), s.description,
                    SourceSite(*site) if site else None, _project_path(program) if program else None,
                    SecretEntry(r.secret_spec.form, r.secret_spec.length, r.secret_fingerprint), r.canary_fingerprint,
                    r.pid, r.exit, list(r.notes), r.error, r.skip_reason, r.target_output, round(r.duration_s, 3))
