"""The command line as a new user meets it: scenario files wherever names go, near misses answered with the
closest names, `list --json`, whole names at 80 columns, repeated --format, allowed values in every help, the
trigger-wait rule, `--method exit` alone, `remanence sdk`, and SARIF locations relative to the repository."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from remanence import cli
from remanence.cli import main
from remanence.plan import UsageError, select
from remanence.report import reporters
from remanence.report.sarif_report import SarifReporter
from remanence.scenario import LANGUAGES, LIVE_METHODS, SNAPSHOT_METHODS, load_scenarios
from remanence.snapshot import method_unavailable

from test_report_formats import assert_valid_sarif



def needs(method: str):
    return pytest.mark.skipif(method_unavailable(method) is not None, reason=f"{method}: {method_unavailable(method)}")


# A user's program that reads the secret and then lingers (killed after its last checkpoint).
READS_AND_LINGERS = ["sh", "-c", "read x; sleep 30"]


def command_scenario(folder: Path, name: str, file_name: str | None = None, exit_checkpoint: bool = False,
                     argv: tuple[str, ...] = tuple(READS_AND_LINGERS)) -> Path:
    """A valid command-target scenario file (no build needed to list or plan it); with `exit_checkpoint`, a program
    that says "read" once it has the secret and ends a second later."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (file_name or f"{name}.toml")
    methods = ["procmem", "exit"] if exit_checkpoint else ["procmem"]
    text = f'''name = "{name}"
target = "command"
methods = {json.dumps(methods)}

[command]
argv = {json.dumps(["sh", "-c", "read x; echo read; sleep 1"] if exit_checkpoint else list(argv))}

[[checkpoints]]
name = "read"
trigger = {{ output = "read" }}
expect = "observe"
why = "a test program: report what is there"
'''
    if exit_checkpoint:
        text += '\n[[checkpoints]]\nname = "exit"\nexpect = "observe"\nwhy = "a test program"\n'
    path.write_text(text)
    return path


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


# --- selecting scenarios: names, globs, files and folders --------------------------------------------------

@pytest.fixture
def suite(tmp_path) -> Path:
    for name in ("malloc.nowipe", "malloc.memset", "stack.nowipe"):
        command_scenario(tmp_path / "suite", name)
    return tmp_path / "suite"


def test_files_names_and_globs_mix(tmp_path, suite):
    elsewhere = command_scenario(tmp_path / "mine", "mine.login", "login.toml")
    chosen = select([str(elsewhere), "stack.*", str(suite / "malloc.memset.toml")], lambda: load_scenarios(suite))
    assert [s.name for s in chosen] == ["malloc.memset", "mine.login", "stack.nowipe"]
    # A folder is every scenario in it; a file named twice (by path and by name) is one scenario.
    assert [s.name for s in select([str(tmp_path / "mine")], lambda: pytest.fail("the suite is not needed"))] == ["mine.login"]
    assert len(select(["malloc.memset", str(suite / "malloc.memset.toml")], lambda: load_scenarios(suite))) == 1


def test_near_misses_name_the_closest_scenarios(suite):
    with pytest.raises(UsageError, match=r"no scenario matches 'malloc\.nowip' \(did you mean 'malloc\.nowipe'"):
        select(["malloc.nowip"], lambda: load_scenarios(suite))
    with pytest.raises(UsageError, match=r"no scenario matches 'zzz' \(`remanence list` shows them\)"):
        select(["zzz"], lambda: load_scenarios(suite))
    with pytest.raises(UsageError, match=r"scenario file '.*malloc\.nowip\.toml' not found \(did you mean '.*malloc\.nowipe\.toml'"):
        select([str(suite / "malloc.nowip.toml")], lambda: load_scenarios(suite))


def test_two_files_with_one_name_are_refused(tmp_path, suite):
    twin = command_scenario(tmp_path / "other", "stack.nowipe")
    with pytest.raises(UsageError, match="two scenario files are named 'stack.nowipe'"):
        select(["stack.nowipe", str(twin)], lambda: load_scenarios(suite))


NAMES = [f"{prefix}.{word}" for prefix in ("c", "go") for word in ("alpha", "beta", "gamma", "delta")]


@pytest.fixture(scope="module")
def property_suite(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("suite")
    for name in NAMES:
        command_scenario(folder, name)
    return folder


@settings(database=None, deadline=None, derandomize=True, max_examples=60,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(NAMES), st.sampled_from(("name", "path", "glob"))), min_size=1, max_size=6),
       st.randoms(use_true_random=False))
def test_selection_is_the_union_of_what_each_argument_names(property_suite, picks, shuffle):
    """However each scenario is named (its name, its file, a glob) and in whatever order, the selection is exactly
    the scenarios named, sorted, each once."""
    suite = load_scenarios(property_suite)
    arguments = []
    for name, how in picks:
        arguments.append(name if how == "name" else str(property_suite / f"{name}.toml") if how == "path"
                         else name[:-2] + "*")
    shuffle.shuffle(arguments)
    expected = {n for n in NAMES if any(n == name or (how == "glob" and n.startswith(name[:-2])) for name, how in picks)}
    assert [s.name for s in select(arguments, lambda: suite)] == sorted(expected)


@needs("exit")
def test_run_takes_a_scenario_file_outside_the_suite(tmp_path, capsys):
    path = command_scenario(tmp_path / "mine", "mine.reader", exit_checkpoint=True)
    out = tmp_path / "out"
    code = main(["run", str(path), "--method", "exit", "--out", str(out), "-q"])
    doc = json.loads((out / "results.json").read_text())
    assert code == 0, doc["verdicts"]
    # --method exit alone: only the snapshots at the program's exit.
    assert {(v["scenario"], v["checkpoint"], v["method"]) for v in doc["verdicts"]} == {("mine.reader", "exit", "exit")}


def test_method_no_selected_scenario_uses_is_refused(tmp_path, capsys):
    path = command_scenario(tmp_path, "no.exit")
    assert main(["run", str(path), "--method", "exit", "--out", str(tmp_path / "out")]) == 2
    assert "--method exit: no selected scenario uses it (they use: procmem)" in one_error_line(capsys)


def test_unknown_values_name_the_value_and_the_closest_known_one(tmp_path, capsys):
    assert main(["run", "--method", "gcor", "x"]) == 2
    assert "unknown method 'gcor' (did you mean 'gcore'" in one_error_line(capsys)
    assert main(["run", "--format", "jsn", "--scenarios", str(tmp_path), "x"]) == 2
    assert "unknown format 'jsn' (did you mean 'json'? known: json" in one_error_line(capsys)
    assert main(["scan", "--pid", "1", "--method", "exit", "--secret-hex", "00"]) == 2
    assert f"unknown method for a live process 'exit' (known: {', '.join(LIVE_METHODS)})" in one_error_line(capsys)


# --- list -----------------------------------------------------------------------------------------------------

def test_list_json(tmp_path, capsys):
    path = command_scenario(tmp_path, "mine.login")
    command_scenario(tmp_path, "mine.gone", argv=("./no-such-program",))
    assert main(["list", "--json", "--scenarios", str(tmp_path)]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["scenarios"][1] == {"name": "mine.login", "target": "command", "checkpoints": ["read"],
                                      "methods": ["procmem"], "runnable": True, "skip_reason": None, "source": str(path)}
    gone = listed["scenarios"][0]
    assert gone["name"] == "mine.gone" and not gone["runnable"] and "'./no-such-program'" in gone["skip_reason"]


def test_list_keeps_names_whole_at_80_columns(tmp_path, capsys, monkeypatch):
    names = ["project.login_with_a_rather_long_name", "project.session_token.refresh_after_expiry"]
    for name in names:
        command_scenario(tmp_path, name)
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["list", "--scenarios", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 80
    for name in names:
        assert name in out


# --- formats, help --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("command, values", [
    ("run", [*SNAPSHOT_METHODS, *reporters()]),
    ("probe", [*SNAPSHOT_METHODS, *reporters(), "absent", "present", "observe"]),
    ("scan", [*LIVE_METHODS, *reporters()]),
    ("merge", list(reporters())),
    ("sdk", list(LANGUAGES)),
])
def test_every_help_lists_the_allowed_values(command, values, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")   # no line breaks inside a value (argparse wraps at hyphens)
    assert main([command, "--help"]) == 0
    text = capsys.readouterr().out
    assert [v for v in values if v not in text] == []


# --- probe ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [["probe"], ["probe", "--"], ["probe", "--at", "idle=1"]])
def test_probe_without_a_program_is_one_line(argv, tmp_path, capsys):
    assert main([*argv[:1], "--out", str(tmp_path), *argv[1:]]) == 2
    assert "give the program to run after --" in one_error_line(capsys)


@needs("procmem")
def test_a_trigger_wait_comes_on_top_of_the_timeout_and_formats_merge(tmp_path):
    """delay=2 with a 1 s timeout: the timeout bounds the program's response, not the declared wait."""
    out = tmp_path / "out"
    code = main(["probe", "--at", "delay=2", "--timeout", "1", "--method", "procmem", "--expect", "observe",
                 "--out", str(out), "-q", "--format", "json", "--format", "sarif", "--", *READS_AND_LINGERS])
    doc = json.loads((out / "results.json").read_text())
    assert code == 0 and [(v["checkpoint"], v["outcome"]) for v in doc["verdicts"]] == [("at1", "PASS")], doc["runs"]
    assert (out / "results.sarif").is_file()   # --format json --format sarif == --format json,sarif


def test_a_program_that_never_goes_idle_times_out_after_the_timeout_plus_the_wait(tmp_path):
    out = tmp_path / "out"
    assert 3 == main(["probe", "--at", "idle=0.5", "--timeout", "0.5", "--method", "procmem", "--out", str(out), "-q",
          "--", "sh", "-c", "read x; while :; do :; done"])
    (run,) = json.loads((out / "results.json").read_text())["runs"]
    assert "timed out after 0.5 s + the trigger's 0.5 s waiting for checkpoint 'at1' (idle for 0.5 s)" in run["error"]


@needs("exit")
def test_probe_method_exit_alone_snapshots_at_the_exit(tmp_path):
    out = tmp_path / "out"
    code = main(["probe", "--method", "exit", "--expect", "observe", "--out", str(out), "-q", "--",
                 "sh", "-c", "read x"])
    doc = json.loads((out / "results.json").read_text())
    assert code == 0 and [(v["checkpoint"], v["method"], v["outcome"]) for v in doc["verdicts"]] == [("exit", "exit", "PASS")]


def test_probe_method_exit_with_a_live_trigger_is_refused(tmp_path, capsys):
    assert main(["probe", "--method", "exit", "--at", "idle=1", "--out", str(tmp_path), "--", "cat"]) == 2
    err = one_error_line(capsys)
    assert "--at idle=1: --method exit snapshots only at the program's exit; add a live method" in err


# --- sdk ----------------------------------------------------------------------------------------------------------

def test_sdk_prints_the_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "TARGETS_DIR", tmp_path)
    monkeypatch.setattr(cli, "PACKAGE_DIR", tmp_path / "pkg")
    (tmp_path / "sdk" / "go").mkdir(parents=True)
    assert main(["sdk", "go"]) == 0
    assert capsys.readouterr().out == f"{tmp_path / 'sdk' / 'go'}\n"
    assert main(["sdk", "node"]) == 2
    assert f"sdk node: {tmp_path / 'sdk' / 'node'} is missing" in one_error_line(capsys)
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "sdk.py").write_text("")
    assert main(["sdk", "python"]) == 0
    captured = capsys.readouterr()
    assert captured.out == f"{tmp_path / 'pkg'}\n" and "import remanence.sdk" in captured.err
    assert main(["sdk", "rust"]) == 2
    assert "unknown language 'rust' (known: c, go, node, python)" in one_error_line(capsys)


# --- SARIF a developer can click, and a probe file that travels -------------------------------------------------

@needs("procmem")
def test_probe_sarif_points_at_the_program_in_the_repository_and_its_file_travels(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)          # what marks a work tree's top level
    (repo / "tools").mkdir()
    program = repo / "tools" / "login.sh"
    program.write_text("#!/bin/sh\nread password\nsleep 30\n")
    program.chmod(0o755)
    monkeypatch.chdir(repo)
    code = main(["probe", "--at", "idle=0.3", "--method", "procmem", "--expect", "observe", "--out", "reports",
                 "--format", "json,sarif", "-q", "--", str(program)])
    assert code == 0
    log = json.loads((repo / "reports" / "results.sarif").read_text())
    assert_valid_sarif(log)
    (sarif_run,) = log["runs"]
    assert sarif_run["originalUriBaseIds"]["%SRCROOT%"]["uri"] == repo.as_uri() + "/"
    # observe gives no result: make one from the document to see where it points.
    doc = json.loads((repo / "reports" / "results.json").read_text())
    assert doc["runs"][0]["program"] == str(program)
    doc["verdicts"][0] |= {"outcome": "INCONCLUSIVE", "reason": "made up for the test"}
    (result,) = SarifReporter().log(doc)["runs"][0]["results"]
    assert result["locations"][0]["physicalLocation"]["artifactLocation"] == {"uri": "tools/login.sh", "uriBaseId": "%SRCROOT%"}
    (related,) = result["relatedLocations"]
    assert related["physicalLocation"]["artifactLocation"] == {"uri": "reports/probe.login.sh.toml", "uriBaseId": "%SRCROOT%"}
    # --source-root elsewhere: the files lie outside it, so their URIs are absolute.
    (outside,) = SarifReporter(source_root=tmp_path / "elsewhere").log(doc)["runs"][0]["results"]
    assert outside["locations"][0]["physicalLocation"]["artifactLocation"] == {"uri": program.as_uri()}

    # The generated scenario names its paths relative to itself: the whole checkout can move.
    text = (repo / "reports" / "probe.login.sh.toml").read_text()
    assert 'argv = ["./tools/login.sh"]' in text and 'cwd = ".."' in text
    moved = shutil.copytree(repo, tmp_path / "moved")
    shutil.rmtree(repo)
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(moved / "reports" / "probe.login.sh.toml"), "--out", str(tmp_path / "rerun"), "-q"]) == 0
    rerun = json.loads((tmp_path / "rerun" / "results.json").read_text())
    assert rerun["runs"][0]["program"] == str(moved / "tools" / "login.sh")
    assert [v["outcome"] for v in rerun["verdicts"]] == ["PASS"]


def test_merge_takes_source_root(tmp_path, capsys):
    assert main(["merge", str(tmp_path / "out"), str(tmp_path), "--source-root", str(tmp_path / "nope")]) == 2
    assert f"--source-root {tmp_path / 'nope'}: not a folder" in one_error_line(capsys)
