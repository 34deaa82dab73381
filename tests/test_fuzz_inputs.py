"""Property-based fuzzing (hypothesis) of every text input and option: scenario files, remanence.toml,
baselines, shard documents and option values. Each case calls the CLI in-process and asserts an exit code
of the documented set and one line on stderr without a traceback.

No case runs a target: scenario files and configs are read by `run ... zz-no-such-scenario` (every file is
loaded and validated, then the pattern matches nothing: exit 2 either way, and the line says which); probe
options end at a program that does not exist (exit 2 before anything runs); merges of valid shard documents
only write reports. 440 generated inputs per run, derandomized so CI is reproducible.
"""
from __future__ import annotations

import datetime as dt
import json
import math
import tomllib
from pathlib import Path

from hypothesis import HealthCheck, given, settings, strategies as st

from remanence.cli import main
from remanence.targets import PROJECT_ROOT

EXIT_CODES = {0, 1, 2, 3, 130}
NO_MATCH = "zz-no-such-scenario"


def fuzz(examples: int) -> settings:
    """Reproducible in CI (derandomized), no example database in the repository, no per-case deadline."""
    return settings(database=None, deadline=None, derandomize=True, max_examples=examples,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

BUILTIN = tomllib.loads((PROJECT_ROOT / "scenarios" / "c" / "malloc.nowipe.toml").read_text())
COMMAND = {
    "name": "mine.login", "target": "command", "methods": ["procmem", "gcore"], "timeout": 10,
    "secret": {"form": "password", "length": 16},
    "command": {"argv": ["./does-not-exist", "--user", "me"], "cwd": ".", "delivery": "prompt",
                "prompt": "Password: ?$", "env": {"LANG": "C"}},
    "checkpoints": [{"name": "logged_in", "trigger": {"output": "Welcome"}, "expect": "present", "why": "in use"},
                    {"name": "later", "trigger": {"idle": 1.5}, "expect": "absent", "why": "wiped"}],
}
CONFIG = {"run": {"methods": ["procmem"], "repeat": 2, "timeout": 30, "out": "reports", "formats": ["json", "md=-"],
                  "allow_skip": False},
          "suppress": [{"id": "known", "scenario": "stdio.*", "method": "gcore", "checkpoint": "in_use",
                        "fingerprint": ["0123456789abcdef"], "reason": "tracked", "expires": dt.date(2030, 1, 1)}]}


# --- a TOML writer for mutated documents (inline tables and arrays: valid TOML for any nesting) ----------------

def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, (int, dt.date)):
        return str(value) if isinstance(value, int) else value.isoformat()
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{json.dumps(str(k))} = {toml_value(v)}" for k, v in value.items()) + "}"


def toml_document(doc: dict) -> str:
    return "".join(f"{json.dumps(str(k))} = {toml_value(v)}\n" for k, v in doc.items())


# --- mutations ---------------------------------------------------------------------------------------------------

hostile_text = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["", ".", "..", "../escape", "/tmp/x", "a/b", "a\0b", "\0", "name with spaces", "x" * 300,
                     "procmem", "exit", "kernel-core", "{secret_file}", "present", "absent", "observe", "c", "command",
                     "line\nbreak", "ok.name-1_2"]),
)
scalar = st.one_of(
    hostile_text, st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
    st.sampled_from([0, -1, 10**4000, 3601, 1000, 1001, 4097, 7]),
    st.floats(allow_nan=True, allow_infinity=True), st.dates(),
)
toml_values = st.recursive(scalar, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                            st.dictionaries(hostile_text, inner, max_size=3)),
                           max_leaves=6)


def paths(doc, prefix=()):
    """Every (path, value) in a parsed document: dict keys and list indexes."""
    yield prefix, doc
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    for key, value in items:
        yield from paths(value, prefix + (key,))


def mutate(doc, path: tuple, action: str, value):
    """A copy of `doc` with the value at `path` replaced, deleted, or given an extra key/item."""
    if not path:
        return doc
    copy = _deep_copy(doc)
    parent = copy
    for key in path[:-1]:
        parent = parent[key]
    last = path[-1]
    if action == "delete":
        del parent[last]
    elif action == "extra" and isinstance(parent[last], dict):
        parent[last]["zz_extra"] = value
    elif action == "extra" and isinstance(parent[last], list):
        parent[last].append(value)
    else:
        parent[last] = value
    return copy


def _deep_copy(doc):
    if isinstance(doc, dict):
        return {k: _deep_copy(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_deep_copy(v) for v in doc]
    return doc


@st.composite
def mutated(draw, bases: list[dict]) -> dict:
    doc = draw(st.sampled_from(bases))
    for _ in range(draw(st.integers(1, 3))):
        choices = [p for p, _ in paths(doc) if p]
        path = draw(st.sampled_from(choices))
        doc = mutate(doc, path, draw(st.sampled_from(["replace", "replace", "delete", "extra"])), draw(toml_values))
    return doc


def nested(depth: int, kind: str) -> str:
    return ("[" * depth + "]" * depth) if kind == "array" else ("{a = " * depth + "1" + "}" * depth)


@st.composite
def raw_text(draw, base: str) -> str:
    """Text-level damage: deep nesting, huge integers, byte edits of a valid file."""
    kind = draw(st.sampled_from(["nesting", "integer", "edit", "edit"]))
    if kind == "nesting":
        key = draw(st.sampled_from(["name", "repeat", "checkpoints", "zz", "run"]))
        return f"{key} = {nested(draw(st.integers(50, 3000)), draw(st.sampled_from(['array', 'table'])))}\n" + base
    if kind == "integer":
        key = draw(st.sampled_from(["repeat", "timeout", "zz"]))
        return base.replace("name =", f"{key} = {'9' * draw(st.integers(4000, 6000))}\nname =", 1)
    text = base
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.sampled_from(["", "\0", "[", "]", "=", '"', "\n", "{", "x", "[[checkpoints]]\n"])) \
            + text[at + draw(st.integers(0, 3)):]
    return text


# --- checks --------------------------------------------------------------------------------------------------------

def call(capsys, *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(list(argv))
    return code, capsys.readouterr().err


def one_line_usage_error(code: int, err: str, *names: str) -> None:
    """Exit 2, no traceback, one line naming one of `names` (the file or the option), or the harmless no-match."""
    assert code == 2, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert NO_MATCH in err or any(n in err for n in names), err


def scenario_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "scenarios"
    folder.mkdir(exist_ok=True)
    return folder


# --- scenario files ------------------------------------------------------------------------------------------------

@fuzz(120)
@given(doc=mutated([BUILTIN, COMMAND]))
def test_mutated_scenario_files(tmp_path, capsys, doc):
    folder = scenario_folder(tmp_path)
    path = folder / "fuzzed.toml"
    path.write_text(toml_document(doc), encoding="utf-8")
    code, err = call(capsys, "run", "--scenarios", str(folder), NO_MATCH)
    one_line_usage_error(code, err, str(path))


@fuzz(40)
@given(text=st.one_of(raw_text(toml_document(BUILTIN)), raw_text(toml_document(COMMAND))))
def test_damaged_scenario_text(tmp_path, capsys, text):
    folder = scenario_folder(tmp_path)
    path = folder / "fuzzed.toml"
    path.write_text(text, encoding="utf-8")
    code, err = call(capsys, "run", "--scenarios", str(folder), NO_MATCH)
    one_line_usage_error(code, err, str(path))


@fuzz(30)
@given(name=hostile_text)
def test_scenario_names_become_no_paths(tmp_path, capsys, name):
    folder = scenario_folder(tmp_path)
    path = folder / "fuzzed.toml"
    path.write_text(toml_document({**BUILTIN, "name": name}), encoding="utf-8")
    code, err = call(capsys, "run", "--scenarios", str(folder), NO_MATCH)
    one_line_usage_error(code, err, str(path))
    safe = name not in (".", "..") and 0 < len(name) <= 128 and all(c.isascii() and (c.isalnum() or c in "._-") for c in name)
    assert (NO_MATCH in err) == safe, err


# --- remanence.toml --------------------------------------------------------------------------------------------------

@fuzz(60)
@given(config=st.one_of(mutated([CONFIG]).map(toml_document), raw_text(toml_document(CONFIG))))
def test_mutated_config_files(tmp_path, capsys, config):
    path = tmp_path / "remanence.toml"
    path.write_text(config, encoding="utf-8")
    code, err = call(capsys, "run", "--config", str(path), "--scenarios", str(scenario_folder(tmp_path)), NO_MATCH)
    one_line_usage_error(code, err, str(path), "baseline")


# --- baselines and shard documents -----------------------------------------------------------------------------------

VERDICT = {"scenario": "malloc.nowipe", "repetition": 1, "checkpoint": "freed", "method": "procmem", "expect": "absent",
           "outcome": "FAIL", "reason": "r", "hits": [{"fingerprint": "0123456789abcdef"}],
           "fingerprints": ["0123456789abcdef"]}
BASELINE = {"schema": "remanence-results", "schema_version": 1, "interrupted": False, "exit_code": 1,
            "verdicts": [VERDICT, {**VERDICT, "outcome": "SKIP", "hits": [], "fingerprints": []}]}
json_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                                     hostile_text),
                           lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(hostile_text, inner, max_size=3)),
                           max_leaves=5)


@st.composite
def mutated_json(draw, base: dict):
    doc = base
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from([p for p, _ in paths(doc) if p]))
        doc = mutate(doc, path, draw(st.sampled_from(["replace", "delete", "extra"])), draw(json_values))
    return doc


@fuzz(60)
@given(doc=mutated_json(BASELINE))
def test_malformed_baselines_fail_before_the_run(tmp_path, capsys, doc):
    path = tmp_path / "baseline.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    code, err = call(capsys, "run", "--baseline", str(path), "--scenarios", str(scenario_folder(tmp_path)), NO_MATCH)
    one_line_usage_error(code, err, str(path))


SHARD = {**BASELINE, "secrets_shown": False, "tool": {"name": "remanence", "version": "0.1.0"},
         "started_at": "2026-01-01T00:00:00Z", "finished_at": "2026-01-01T00:00:01Z", "machine": {},
         "shard": "1/1", "planned_runs": ["malloc.nowipe#1"], "runs": [{"scenario": "malloc.nowipe", "repetition": 1}],
         "verdicts": [VERDICT]}


@fuzz(30)
@given(doc=mutated_json(SHARD))
def test_malformed_shard_documents(tmp_path, capsys, doc):
    path = tmp_path / "results.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    code, err = call(capsys, "merge", "-q", "--format", "json", str(tmp_path / "merged"), str(path))
    assert code in EXIT_CODES and "Traceback" not in err, err
    if code == 2:
        assert len(err.strip().splitlines()) == 1, err


# --- option values ---------------------------------------------------------------------------------------------------

numbers = st.one_of(st.sampled_from(["nan", "inf", "-inf", "-5", "0", "0.0", "1e9", "3600", "3601", "1", "2.5", "",
                                     "abc", "1e400", "9" * 5000, "0x10", " 3"]),
                    st.floats(allow_nan=True).map(str), st.integers(-10**6, 10**6).map(str))
words = st.one_of(hostile_text, st.sampled_from(["procmem", "gcore,procmem", "procmem,,exit", "kernel-core", "json",
                                                 "json,sarif", "md=-,json=-", "html=", "sarif=x.sarif", "1/4", "0/4",
                                                 "5/4", "1/0", "x/y", "2 / 3"]))


@fuzz(60)
@given(timeout=numbers, repeat=numbers, shard=words, formats=words, methods=words)
def test_run_option_values(tmp_path, capsys, timeout, repeat, shard, formats, methods):
    code, err = call(capsys, "run", "--scenarios", str(scenario_folder(tmp_path)), "--timeout", timeout,
                     "--repeat", repeat, "--shard", shard, "--format", formats, "--method", methods, NO_MATCH)
    one_line_usage_error(code, err, "--timeout", "--repeat", "--shard", "--format", "--method", "format")


@fuzz(40)
@given(timeout=numbers, trigger=st.tuples(st.sampled_from(["delay", "idle", "output", "exit", "sometime"]), numbers),
       length=numbers, repeat=numbers, name=hostile_text)
def test_probe_option_values(tmp_path, capsys, timeout, trigger, length, repeat, name):
    out = tmp_path / "out"
    code, err = call(capsys, "probe", "--out", str(out), "--timeout", timeout, "--at", "=".join(trigger),
                     "--secret-length", length, "--repeat", repeat, "--name", name, "--", "./does-not-exist")
    one_line_usage_error(code, err, "--timeout", "--at", "--secret-length", "--repeat", "--name", "does-not-exist")
    assert not out.exists(), "a probe that cannot start wrote something"
