"""The CI gate: baselines, suppressions in remanence.toml, config discovery, --format; unit tests and real runs."""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import jsonschema
import pytest

from remanence.cli import main
from remanence.config import (Config, ConfigError, FormatSpec, Suppression, discover_config, load_config,
                            parse_formats)
from remanence.document import Document, schema
from remanence.gate import apply_gate, doc_exit_code
from remanence.results import fingerprint
from remanence.targets import PROJECT_ROOT
from suite_run import require

SCENARIOS = PROJECT_ROOT / "scenarios"
SCHEMA = schema()
TODAY = dt.date(2026, 6, 15)


# --- hand-built documents ----------------------------------------------------------------------------------

def verdict(scenario="s.one", checkpoint="freed", method="procmem", outcome="FAIL", prints=None, repetition=1) -> dict:
    prints = prints if prints is not None else [fingerprint(scenario, method, checkpoint, "heap", "raw")]
    return {"scenario": scenario, "repetition": repetition, "checkpoint": checkpoint, "method": method,
            "expect": "absent", "outcome": outcome, "reason": "r", "hits": [], "fingerprints": prints}


def document(*verdicts, interrupted=False) -> dict:
    doc = {"schema": "remanence-results", "schema_version": 1, "interrupted": interrupted, "verdicts": list(verdicts)}
    doc["exit_code"] = doc_exit_code(doc)
    return doc


def as_baseline(doc: dict | None) -> Document | None:
    """A baseline as the gate takes it: read by the document module."""
    return None if doc is None else Document.from_json(doc, "baseline")


def suppression(index=0, reason="known", expires=None, **filters) -> Suppression:
    prints = filters.pop("fingerprints", ())
    return Suppression(index, reason, filters.get("scenario"), filters.get("method"), filters.get("checkpoint"),
                       tuple(prints), expires, filters.get("id"))


def gated(doc, baseline=None, *suppressions, path=None):
    return apply_gate(doc, as_baseline(baseline), Config(Path(path) if path else None, suppressions=tuple(suppressions)), today=TODAY)


def states(doc) -> list:
    return [v["gate"] and v["gate"]["state"] for v in doc["verdicts"]]


def test_without_baseline_or_config_every_failure_and_skip_is_new_and_pass_is_not_judged():
    doc = gated(document(verdict(outcome="PASS"), verdict(outcome="SKIP"), verdict(outcome="FAIL")))
    assert states(doc) == [None, "new", "new"]
    assert doc["exit_code"] == 1 and doc["gate"]["exit_code"] == 1 and doc["gate"]["ungated_exit_code"] == 1
    assert doc["gate"]["new_failures"] == 2 and doc["gate"]["config"] is None and doc["gate"]["baseline"] is None


def test_apply_gate_does_not_change_its_input():
    doc = document(verdict())
    gated(doc, doc)
    assert "gate" not in doc and "gate" not in doc["verdicts"][0]


def test_a_failure_already_failing_in_the_baseline_does_not_fail_the_gate():
    baseline = document(verdict(repetition=3))
    doc = apply_gate(document(verdict(), verdict(outcome="PASS")), as_baseline(baseline), None, baseline_path="b.json")
    assert states(doc) == ["baseline", None]
    assert (doc["exit_code"], doc["gate"]["ungated_exit_code"], doc["gate"]["baseline_failures"]) == (0, 1, 1)
    assert doc["gate"]["baseline"] == "b.json"


@pytest.mark.parametrize("base_outcome, now, state, code", [
    ("PASS", "FAIL", "new", 1),              # passing then: a regression
    ("SKIP", "FAIL", "new", 1),              # never judged then
    ("INCONCLUSIVE", "FAIL", "new", 1),      # a known INCONCLUSIVE does not hide a FAIL
    ("ERROR", "FAIL", "new", 1),
    ("FAIL", "ERROR", "baseline", 0),        # less severe than what was known
    ("ERROR", "INCONCLUSIVE", "baseline", 0),
    ("INCONCLUSIVE", "ERROR", "baseline", 0),
])
def test_baseline_needs_a_failure_at_least_as_severe(base_outcome, now, state, code):
    doc = gated(document(verdict(outcome=now)), document(verdict(outcome=base_outcome)))
    assert states(doc) == [state] and doc["exit_code"] == code


def test_a_verdict_is_baseline_only_when_all_its_fingerprints_were_failing():
    known, other = "a" * 16, "b" * 16
    doc = gated(document(verdict(prints=[known, other]), verdict(prints=[known])), document(verdict(prints=[known])))
    assert states(doc) == ["new", "baseline"] and doc["exit_code"] == 1


def test_baseline_matches_by_fingerprint_not_by_place():
    baseline = document(verdict(scenario="s.other"))
    assert states(gated(document(verdict()), baseline)) == ["new"]


def test_new_errors_give_3_and_an_interrupted_run_stays_130():
    assert gated(document(verdict(outcome="INCONCLUSIVE"))).get("exit_code") == 3
    doc = document(verdict(), interrupted=True)
    assert gated(doc)["exit_code"] == 1
    assert gated(doc, document(verdict()))["exit_code"] == 130


def test_suppression_suppresses_and_records_why():
    s = suppression(scenario="s.*", method="procmem", reason="tracked in #12", expires=dt.date(2026, 6, 15), id="s1")
    doc = gated(document(verdict(), verdict(method="gcore")), None, s, path="remanence.toml")
    assert states(doc) == ["suppressed", "new"]
    assert doc["verdicts"][0]["gate"]["suppression"] == {"id": "s1", "reason": "tracked in #12", "expires": "2026-06-15"}
    assert doc["verdicts"][0]["outcome"] == "FAIL"   # still a FAIL in the document
    assert doc["gate"]["suppressed"] == 1 and doc["gate"]["config"] == "remanence.toml" and doc["exit_code"] == 1


def test_suppression_filters_checkpoint_and_fingerprints():
    fp_a, fp_b = "a" * 16, "b" * 16
    by_checkpoint = suppression(scenario="*", checkpoint="in_use")
    assert states(gated(document(verdict()), None, by_checkpoint)) == ["new"]
    only_a = suppression(fingerprints=[fp_a])
    doc = gated(document(verdict(prints=[fp_a]), verdict(prints=[fp_a, fp_b])), None, only_a)
    assert states(doc) == ["suppressed", "new"]


def test_suppression_wins_over_baseline():
    doc = gated(document(verdict()), document(verdict()), suppression(scenario="s.one"))
    assert states(doc) == ["suppressed"]


def test_an_expired_suppression_does_not_suppress_and_fails_the_gate():
    s = suppression(scenario="s.one", reason="old glibc", expires=dt.date(2026, 6, 14), id="old-glibc")
    doc = gated(document(verdict(), verdict(outcome="PASS")), document(verdict()), s, path="ci/remanence.toml")
    assert states(doc) == ["baseline", None]   # the baseline still holds, the suppression does not
    assert doc["exit_code"] == 1
    [expired] = doc["gate"]["expired_suppressions"]
    assert expired["id"] == "old-glibc" and expired["expires"] == "2026-06-14"
    [message] = doc["gate"]["messages"]
    assert message.startswith("error:") and "old-glibc" in message and "ci/remanence.toml" in message and "expired" in message


def test_a_suppression_holds_through_its_expiry_day():
    s = suppression(scenario="s.one", expires=TODAY)
    assert s.expired(TODAY) is False and s.expired(TODAY + dt.timedelta(days=1)) is True
    assert gated(document(verdict()), None, s)["exit_code"] == 0


def test_an_unused_suppression_is_a_warning_not_a_failure():
    doc = gated(document(verdict(outcome="PASS")), None, suppression(scenario="nothing.matches"))
    assert doc["exit_code"] == 0
    assert [u["label"] for u in doc["gate"]["unused_suppressions"]] == ["suppress[0] (scenario=nothing.matches)"]
    assert doc["gate"]["messages"][0].startswith("warning:")


# --- the config file ---------------------------------------------------------------------------------------

def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_config_file_is_read_and_paths_are_relative_to_it(tmp_path):
    path = write(tmp_path / "ci" / "remanence.toml", """
[run]
methods = ["procmem"]
repeat = 2
timeout = 9
out = "out"
formats = ["json", "json=-", "json=extra/r.json"]
baseline = "base.json"

[[suppress]]
id = "stdio"
scenario = "stdio.*"
method = "gcore"
reason = "  known glibc stdio buffer  "
expires = 2027-01-31

[[suppress]]
fingerprint = "0123456789abcdef"
reason = "one finding"
expires = "2027-02-01"
""")
    config = load_config(path, ["json"])
    run = config.run
    assert (run.methods, run.repeat, run.timeout) == (("procmem",), 2, 9.0)
    assert run.out == tmp_path / "ci" / "out" and run.baseline == tmp_path / "ci" / "base.json"
    assert run.formats == (FormatSpec("json"), FormatSpec("json", "-"), FormatSpec("json", str(tmp_path / "ci" / "extra/r.json")))
    first, second = config.suppressions
    assert (first.id, first.reason, first.expires, first.method) == ("stdio", "known glibc stdio buffer", dt.date(2027, 1, 31), "gcore")
    assert second.fingerprints == ("0123456789abcdef",) and second.expires == dt.date(2027, 2, 1)


@pytest.mark.parametrize("text, key, words", [
    ('[[suppress]]\nscenario = "a"\n', "suppress[0].reason", "required key is missing"),
    ('[[suppress]]\nscenario = "a"\nreason = "  "\n', "suppress[0].reason", "empty"),
    ('[[suppress]]\nreason = "x"\n', "suppress[0].scenario", "required key is missing"),
    ('[[suppress]]\nscenario = "a"\nreason = "x"\nexpires = "soon"\n', "suppress[0].expires", "not a date"),
    ('[[suppress]]\nscenario = "a"\nreason = "x"\nexpires = 2027-01-01T10:00:00\n', "suppress[0].expires", "expected date"),
    ('[[suppress]]\nscenario = "a"\nreason = "x"\nmethod = "gcor"\n', "suppress[0].method", "unknown method"),
    ('[[suppress]]\nscenario = "a"\nreason = "x"\nfingerprint = ["xyz"]\n', "suppress[0].fingerprint[0]", "16 lowercase hex"),
    ('[[suppress]]\nscenario = "a"\nreason = "x"\nwhy = "y"\n', "suppress[0].why", "unknown key"),
    ('[[suppress]]\nid = "a"\nscenario = "a"\nreason = "x"\n[[suppress]]\nid = "a"\nscenario = "b"\nreason = "y"\n',
     "suppress", "ids repeat"),
    ('[run]\nmethods = ["procmem", "nope"]\n', "run.methods[1]", "unknown method"),
    ('[run]\ntimeout = 0\n', "run.timeout", "out of range"),
    ('[run]\nrepeat = "3"\n', "run.repeat", "expected int"),
    ('[run]\nformats = ["pdf"]\n', "run.formats[0]", "unknown format 'pdf' (known: json)"),
    ('[runs]\n', "runs", "unknown key (allowed: run, suppress)"),
    ('suppress = "x"\n', "suppress", "expected list"),
])
def test_config_errors_name_the_file_and_the_key(tmp_path, text, key, words):
    path = write(tmp_path / "remanence.toml", text)
    with pytest.raises(ConfigError) as e:
        load_config(path, ["json"])
    assert str(e.value).startswith(f"{path}: {key}: ") and words in str(e.value)


def test_config_that_is_not_toml(tmp_path):
    path = write(tmp_path / "remanence.toml", "[run\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path, ["json"])


def test_discovery_order(tmp_path):
    flag, env, local = (write(tmp_path / name / "remanence.toml", "") for name in ("flag", "env", "local"))
    cwd = local.parent
    assert discover_config(flag, {"REMANENCE_CONFIG": str(env)}, cwd) == flag
    assert discover_config(None, {"REMANENCE_CONFIG": str(env)}, cwd) == env
    assert discover_config(None, {"REMANENCE_CONFIG": ""}, cwd) == cwd / "remanence.toml"
    assert discover_config(None, {}, tmp_path) is None
    with pytest.raises(ConfigError, match="--config"):
        discover_config(tmp_path / "nope.toml", {}, cwd)
    with pytest.raises(ConfigError, match="REMANENCE_CONFIG"):
        discover_config(None, {"REMANENCE_CONFIG": str(tmp_path / "nope.toml")}, cwd)


def test_format_lists():
    known = ["json", "md", "sarif"]
    assert parse_formats(["json", "md=-", "sarif=out/x.sarif"], known) == [
        FormatSpec("json"), FormatSpec("md", "-"), FormatSpec("sarif", "out/x.sarif")]
    for bad, words in ((["pdf"], "unknown format 'pdf' (known: json, md, sarif)"), (["md=-", "json=-"], "only one"),
                       (["json="], "empty PATH"), ([], "no format")):
        with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace(")", r"\)")):
            parse_formats(bad, known)


# --- real runs ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module", autouse=True)
def c_target():
    require("c", "procmem")


@pytest.fixture(autouse=True)
def no_ambient_config(monkeypatch, tmp_path):
    """No $REMANENCE_CONFIG and no ./remanence.toml unless a test puts one there."""
    monkeypatch.delenv("REMANENCE_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)


def wrong(folder: Path, name: str) -> Path:
    """A copy of a C scenario whose expectation at `freed` is wrong, so its procmem verdict FAILs."""
    folder.mkdir(parents=True, exist_ok=True)
    text = (SCENARIOS / "c" / f"{name}.toml").read_text()
    if name == "malloc.nowipe":
        changed = text.replace('name = "freed"\nexpect = "present"\nwhere = "heap"', 'name = "freed"\nexpect = "absent"')
    else:  # malloc.memzero wipes: expecting the key there fails
        changed = text.replace('name = "freed"\nexpect = "absent"', 'name = "freed"\nexpect = "present"')
    assert changed != text
    (folder / f"{name}.toml").write_text(changed)
    return folder


def run(capsys, out: Path, *args: str) -> tuple[int, dict | None, str, str]:
    code = main(["run", "--method", "procmem", "--out", str(out), *args])
    captured = capsys.readouterr()
    path = out / "results.json"
    return code, json.loads(path.read_text()) if path.exists() else None, captured.out, captured.err


def freed(doc: dict, scenario: str = "malloc.nowipe") -> dict:
    [v] = [v for v in doc["verdicts"] if v["scenario"] == scenario and v["checkpoint"] == "freed"]
    return v


def test_baseline_gates_only_new_failures(tmp_path, capsys):
    scenarios = wrong(tmp_path / "s", "malloc.nowipe")
    code, first, *_ = run(capsys, tmp_path / "first", "--scenarios", str(scenarios))
    assert code == 1 and first["exit_code"] == 1 and freed(first)["gate"]["state"] == "new"
    baseline = tmp_path / "first" / "results.json"

    code, again, out, _ = run(capsys, tmp_path / "again", "--scenarios", str(scenarios), "--baseline", str(baseline))
    assert code == 0 and again["exit_code"] == 0
    assert freed(again)["outcome"] == "FAIL" and freed(again)["gate"] == {"state": "baseline", "suppression": None}
    assert again["gate"]["baseline"] == str(baseline) and again["gate"]["ungated_exit_code"] == 1
    assert "gate: 0 new, 1 baseline" in out
    jsonschema.validate(again, SCHEMA)

    wrong(scenarios, "malloc.memzero")
    code, third, *_ = run(capsys, tmp_path / "third", "--scenarios", str(scenarios), "--baseline", str(baseline))
    assert code == 1 and third["exit_code"] == 1
    assert freed(third)["gate"]["state"] == "baseline"
    assert freed(third, "malloc.memzero")["outcome"] == "FAIL" and freed(third, "malloc.memzero")["gate"]["state"] == "new"
    assert third["gate"]["new_failures"] == 1


def test_a_broken_baseline_is_a_usage_error(tmp_path, capsys):
    scenarios = wrong(tmp_path / "s", "malloc.nowipe")
    write(tmp_path / "b.json", '{"schema": "something-else"}')
    code, doc, _, err = run(capsys, tmp_path / "out", "--scenarios", str(scenarios), "--baseline", str(tmp_path / "b.json"))
    assert code == 2 and doc is None and "not a remanence results document" in err
    code, *_, err = run(capsys, tmp_path / "out", "--scenarios", str(scenarios), "--baseline", str(tmp_path / "none.json"))
    assert code == 2 and "file not found" in err


def test_suppressed_failure_passes_the_gate_and_stays_in_the_report(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")   # one line per row: the reason is not wrapped, however long the paths
    scenarios = wrong(tmp_path / "s", "malloc.nowipe")
    config = write(tmp_path / "cfg.toml", '[[suppress]]\nid = "nowipe"\nscenario = "malloc.*"\nmethod = "procmem"\n'
                   'checkpoint = "freed"\nreason = "the scenario file is wrong on purpose"\nexpires = 2999-12-31\n')
    code, doc, out, _ = run(capsys, tmp_path / "out", "--scenarios", str(scenarios), "--config", str(config))
    assert code == 0 and doc["exit_code"] == 0
    v = freed(doc)
    assert v["outcome"] == "FAIL"
    assert v["gate"] == {"state": "suppressed", "suppression": {"id": "nowipe", "reason": "the scenario file is wrong on purpose",
                                                                "expires": "2999-12-31"}}
    assert doc["gate"]["config"] == str(config) and doc["gate"]["suppressed"] == 1 and doc["summary"]["FAIL"] == 1
    assert "the scenario file is wrong on purpose" in out and "suppressed" in out
    jsonschema.validate(doc, SCHEMA)


def test_a_suppression_without_reason_is_a_config_error(tmp_path, capsys):
    scenarios = wrong(tmp_path / "s", "malloc.nowipe")
    config = write(tmp_path / "cfg.toml", '[[suppress]]\nscenario = "malloc.nowipe"\n')
    code, doc, _, err = run(capsys, tmp_path / "out", "--scenarios", str(scenarios), "--config", str(config))
    assert code == 2 and doc is None
    assert f"config error: {config}: suppress[0].reason: required key is missing" in err


def test_an_expired_suppression_fails_the_run(tmp_path, capsys):
    scenarios = wrong(tmp_path / "s", "malloc.nowipe")
    config = write(tmp_path / "cfg.toml", '[[suppress]]\nid = "stale"\nscenario = "malloc.nowipe"\n'
                   'reason = "was fixed upstream"\nexpires = 2020-01-31\n')
    code, doc, _, err = run(capsys, tmp_path / "out", "--scenarios", str(scenarios), "--config", str(config), "-q")
    assert code == 1 and doc["exit_code"] == 1
    assert freed(doc)["gate"]["state"] == "new"
    assert "suppression stale" in err and "expired on 2020-01-31" in err
    assert [e["id"] for e in doc["gate"]["expired_suppressions"]] == ["stale"]


def test_an_expired_suppression_fails_even_a_passing_run(tmp_path, capsys):
    config = write(tmp_path / "cfg.toml", '[[suppress]]\nscenario = "sodium.live"\nreason = "r"\nexpires = 2020-01-31\n')
    code, doc, _, err = run(capsys, tmp_path / "out", "--config", str(config), "sodium.live")
    assert doc["summary"]["FAIL"] == 0 and code == 1 and "expired" in err


def test_config_discovery_order_in_real_runs(tmp_path, capsys, monkeypatch):
    scenarios = wrong(tmp_path / "s", "malloc.nowipe")
    configs = {name: write(tmp_path / name / "remanence.toml",
                           f'[[suppress]]\nscenario = "malloc.nowipe"\nreason = "from {name}"\n')
               for name in ("flag", "env", "local")}
    monkeypatch.chdir(configs["local"].parent)
    monkeypatch.setenv("REMANENCE_CONFIG", str(configs["env"]))

    def reason(*args):
        code, doc, *_ = run(capsys, tmp_path / "out", "--scenarios", str(scenarios), "-q", *args)
        assert code == 0
        return freed(doc)["gate"]["suppression"]["reason"], doc["gate"]["config"]

    assert reason("--config", str(configs["flag"])) == ("from flag", str(configs["flag"]))
    assert reason() == ("from env", str(configs["env"]))
    monkeypatch.delenv("REMANENCE_CONFIG")
    assert reason()[0] == "from local"
    monkeypatch.chdir(tmp_path)
    code, doc, *_ = run(capsys, tmp_path / "out", "--scenarios", str(scenarios), "-q")
    assert code == 1 and doc["gate"]["config"] is None and freed(doc)["gate"]["state"] == "new"


def test_config_run_defaults_apply_and_flags_win(tmp_path, capsys, monkeypatch):
    write(tmp_path / "remanence.toml", f'[run]\nscenarios = "{SCENARIOS / "c"}"\nout = "cfg-out"\n'
          'formats = ["json", "json=copies/r.json"]\nmethods = ["procmem"]\n')
    code = main(["run", "-q", "sodium.live"])
    assert code == 0
    doc = json.loads((tmp_path / "cfg-out" / "results.json").read_text())
    assert [v["method"] for v in doc["verdicts"]] == ["procmem"]
    assert json.loads((tmp_path / "copies" / "r.json").read_text())["verdicts"][0]["scenario"] == "sodium.live"
    code = main(["run", "-q", "--out", str(tmp_path / "flag-out"), "--format", "json", "sodium.live"])
    assert code == 0 and (tmp_path / "flag-out" / "results.json").exists()


def test_formats_on_the_command_line(tmp_path, capsys):
    code, doc, out, err = run(capsys, tmp_path / "out", "--format", "json=-,json", "sodium.live")
    assert code == 0
    assert json.loads(out) == doc   # stdout holds the report alone: the table went to stderr
    assert "remanence verdicts" in err
    code, doc, out, err = run(capsys, tmp_path / "out2", "--format", "json,nosuch", "sodium.live")
    assert code == 2 and doc is None
    assert "unknown format 'nosuch' (known: json" in err
