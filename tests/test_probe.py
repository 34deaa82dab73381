"""Bring-your-own programs, end to end: `remanence probe -- CMD` and `target = "command"` scenario files, run
against tests/programs/askpass.c (a password prompt with echo off, as term.ReadPassword does) and plain shell
commands, with each delivery (stdin, prompt on a pseudo-terminal, file) and each trigger (output, delay,
idle, exit)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from suite_run import compile_test_program, read_results
from remanence import runner
from remanence.cli import main
from remanence.model import Secret


pytestmark = pytest.mark.skipif(shutil.which("gcc") is None or shutil.which("gdb") is None,
                                reason="needs gcc (to build the test program) and gdb (gcore)")


@pytest.fixture(scope="module")
def askpass(tmp_path_factory) -> Path:
    return compile_test_program("askpass", tmp_path_factory.mktemp("askpass"))


@pytest.fixture
def known_secret(monkeypatch) -> bytes:
    """A fixed password instead of a random one, so a test can look for it where it must not be."""
    value = b"Pq7-zR2!kV9#mW4@tX8&yB3%"
    monkeypatch.setattr(runner, "make_secret", lambda spec: Secret("secret", value, textual=True))
    return value


def probe(tmp_path: Path, *options: str, command: list[str]) -> tuple[int, dict]:
    out = tmp_path / "out"
    code = main(["probe", "--timeout", "20", *options, "--out", str(out), "--format", "json,html,sarif,junit", "-q",
                 "--", *command])
    return code, read_results(out / "results.json")


def outcomes(doc: dict) -> dict[tuple[str, str], str]:
    return {(v["checkpoint"], v["method"]): v["outcome"] for v in doc["verdicts"]}


# --- deliveries ----------------------------------------------------------------------------------------------

def test_password_typed_at_a_prompt_is_seen_in_use_and_gone_once_wiped(tmp_path, askpass):
    code, doc = probe(tmp_path, "--prompt", "Password: ", "--in-use", "output=Logged in", "--at", "output=wiped",
                      command=[str(askpass), "--hold-ms", "500"])
    assert code == 0, doc["verdicts"]
    assert set(outcomes(doc).values()) == {"PASS"}
    in_use = [v for v in doc["verdicts"] if v["checkpoint"] == "in_use"]
    assert {h["region"]["kind"] for v in in_use for h in v["hits"]} == {"heap"}
    wiped = [v for v in doc["verdicts"] if v["checkpoint"] == "at1"]
    assert all(v["canary_seen"] and not v["hits"] for v in wiped)
    assert "typed at the prompt /Password: /" in doc["runs"][0]["notes"][0]


def test_a_program_that_keeps_the_password_fails_the_probe(tmp_path, askpass):
    code, doc = probe(tmp_path, "--prompt", "Password: ", "--at", "output=kept", command=[str(askpass), "--no-wipe"])
    assert code == 1
    assert outcomes(doc) == {("at1", "procmem"): "FAIL", ("at1", "gcore"): "FAIL"}
    assert all(v["hits"][0]["region"]["kind"] == "heap" and v["hits"][0]["full"] for v in doc["verdicts"])
    sarif = json.loads((tmp_path / "out" / "results.sarif").read_text())
    results = sarif["runs"][0]["results"]
    assert len(results) == 2                        # one per method
    # The alert is at the program (outside any repository here: an absolute URI); the generated scenario is related.
    location = results[0]["locations"][0]["physicalLocation"]
    assert location["artifactLocation"] == {"uri": askpass.as_uri()}
    (related,) = results[0]["relatedLocations"]
    scenario_at = related["physicalLocation"]
    scenario_file = (tmp_path / "out" / "probe.askpass.toml").read_text().splitlines()
    assert scenario_at["artifactLocation"]["uri"] == (tmp_path / "out" / "probe.askpass.toml").as_uri()
    assert scenario_file[scenario_at["region"]["startLine"] - 1] == 'name = "at1"'
    assert (tmp_path / "out" / "report.html").exists() and (tmp_path / "out" / "junit.xml").exists()


def test_secret_on_stdin(tmp_path, askpass):
    code, doc = probe(tmp_path, "--stdin", "--in-use", "output=Logged in", "--at", "output=wiped",
                      command=[str(askpass), "--hold-ms", "300"])
    assert code == 0, [(v["checkpoint"], v["method"], v["reason"]) for v in doc["verdicts"]]
    assert "piped on stdin" in doc["runs"][0]["notes"][0]


def test_secret_in_a_file(tmp_path, askpass):
    code, doc = probe(tmp_path, "--file", "--in-use", "output=Logged in", "--at", "output=wiped",
                      command=[str(askpass), "--file", "{secret_file}", "--hold-ms", "300"])
    assert code == 0, [(v["checkpoint"], v["method"], v["reason"]) for v in doc["verdicts"]]
    assert "the program read the secret file" in doc["verdicts"][-1]["reason"]


# --- triggers ------------------------------------------------------------------------------------------------

def test_delay_counts_from_the_delivery(tmp_path, askpass):
    """The program holds the password 1.5 s, then wipes it: at 0.2 s it is there, at 3 s it is gone."""
    code, doc = probe(tmp_path, "--stdin", "--in-use", "delay=0.2", "--at", "delay=3",
                      command=[str(askpass), "--hold-ms", "1500"])
    assert code == 0, doc["verdicts"]
    assert outcomes(doc) == {("in_use", "procmem"): "PASS", ("in_use", "gcore"): "PASS",
                             ("at1", "procmem"): "PASS", ("at1", "gcore"): "PASS"}
    assert doc["runs"][0]["duration_s"] >= 3.2


def test_idle_waits_until_the_program_stops_computing(tmp_path, askpass):
    """1.5 s of CPU work with the password in memory, then a wipe and a sleep: an idle trigger that fired
    during the work would find the password."""
    code, doc = probe(tmp_path, "--stdin", "--at", "idle=0.5", command=[str(askpass), "--busy-ms", "1500"])
    assert code == 0, doc["verdicts"]
    assert doc["runs"][0]["duration_s"] >= 2.0


def test_exit_snapshots_the_program_at_its_end(tmp_path, askpass):
    code, doc = probe(tmp_path, "--stdin", "--at", "exit", command=[str(askpass), "--exit"])
    assert code == 0 and outcomes(doc) == {("exit", "exit"): "PASS"}   # at its exit only the exit method applies
    assert doc["runs"][0]["exit"] == "exit status 0"
    code, doc = probe(tmp_path, "--stdin", "--at", "exit", command=[str(askpass), "--exit", "--no-wipe"])
    assert code == 1 and set(outcomes(doc).values()) == {"FAIL"}


# --- honesty and failures --------------------------------------------------------------------------------------

def test_a_program_that_never_reads_the_secret_gives_no_pass(tmp_path):
    code, doc = probe(tmp_path, "--stdin", "--at", "delay=0.3", command=["sleep", "10"])
    assert code == 3
    assert set(outcomes(doc).values()) == {"INCONCLUSIVE"}
    assert "absence proves nothing" in doc["verdicts"][0]["reason"]
    assert any("byte(s) of the secret are still unread on its stdin" in n for n in doc["runs"][0]["notes"])


def test_a_prompt_that_never_appears_times_out_with_the_output(tmp_path, askpass):
    code, doc = probe(tmp_path, "--prompt", "Passphrase:", "--timeout", "1", command=[str(askpass)])
    assert code == 3
    error = doc["runs"][0]["error"]
    assert "timed out after 1 s waiting for its prompt (output matches /Passphrase:/)" in error
    assert "Password:" in error          # what it printed instead
    assert set(outcomes(doc).values()) == {"ERROR"}


def test_a_program_that_ends_before_its_trigger_is_an_error(tmp_path, askpass):
    code, doc = probe(tmp_path, "--stdin", "--at", "output=never printed", command=[str(askpass), "--exit"])
    assert code == 3
    assert "the program ended (exit status 0) before checkpoint 'at1'" in doc["runs"][0]["error"]


def test_a_missing_program_is_a_usage_error_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["probe", "--out", str(out), "-q", "--", "./no-such-program"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'./no-such-program' is not an executable file" in err
    assert not out.exists()


def test_usage_errors(tmp_path, capsys):
    assert main(["probe", "--file", "--out", str(tmp_path), "--", "cat"]) == 2
    assert "put {secret_file} in the command" in capsys.readouterr().err
    assert main(["probe", "--at", "exit", "--at", "idle=1", "--out", str(tmp_path), "--", "cat"]) == 2
    assert "--at exit must be the last" in capsys.readouterr().err
    assert main(["probe", "--at", "sometime", "--out", str(tmp_path), "--", "cat"]) == 2
    assert "expected output=REGEX" in capsys.readouterr().err
    assert main(["probe", "--prompt", "x", "--binary", "--out", str(tmp_path), "--", "cat"]) == 2
    assert "must be a password" in capsys.readouterr().err


# --- the secret does not leak through us -----------------------------------------------------------------------

def test_the_secret_is_in_neither_argv_nor_environment_and_echo_is_masked(tmp_path, askpass, known_secret):
    seen = tmp_path / "seen"
    shell = f'tr "\\0" "\\n" < /proc/$$/environ > {seen}; tr "\\0" " " < /proc/$$/cmdline >> {seen}; exec "$0" --echo --hold-ms 1000'
    code, doc = probe(tmp_path, "--prompt", "Password: ", "--in-use", "output=Logged in", "--expect", "observe",
                      command=["sh", "-c", shell, str(askpass)])
    assert code == 0, [(v["checkpoint"], v["method"], v["reason"]) for v in doc["verdicts"]]
    environment = seen.read_bytes()
    assert b"REMANENCE_CANARY=" in environment and known_secret not in environment
    assert doc["runs"][0]["target_output"].startswith("Password: [secret]")   # the terminal echoed it: masked
    for report in (tmp_path / "out").iterdir():
        assert known_secret not in report.read_bytes(), report.name
        assert known_secret.hex().encode() not in report.read_bytes(), report.name


# --- scenario files -----------------------------------------------------------------------------------------------

def test_a_command_scenario_file_with_a_kernel_core_and_the_saved_probe_rerun(tmp_path, askpass):
    suite = tmp_path / "suite"
    suite.mkdir()
    shutil.copy(askpass, suite / "askpass")
    (suite / "login.toml").write_text("""
name = "mine.login"
target = "command"
methods = ["procmem", "gcore", "gcore-all", "kernel-core"]

[command]
argv = ["./askpass", "--hold-ms", "400"]
delivery = "prompt"
prompt = "Password: "

[[checkpoints]]
name = "logged_in"
trigger = { output = "Logged in" }
expect = "present"
where = "heap"
why = "the program holds the password while it works"

[[checkpoints]]
name = "wiped"
trigger = { output = "wiped" }
expect = "absent"
why = "explicit_bzero before it waits"
""")
    out = tmp_path / "run"
    code = main(["run", "--scenarios", str(suite), "--out", str(out), "-q"])
    doc = read_results(out / "results.json")
    assert code == 0, [(v["checkpoint"], v["method"], v["reason"]) for v in doc["verdicts"]]
    assert outcomes(doc) == {("logged_in", m): "PASS" for m in ("procmem", "gcore", "gcore-all")} | {
        ("wiped", m): "PASS" for m in ("procmem", "gcore", "gcore-all", "kernel-core")}
    assert doc["runs"][0]["exit"].startswith("killed by SIGABRT")

    # The probe's own scenario file joins a suite unchanged.
    code, _ = probe(tmp_path, "--stdin", "--name", "mine.saved", "--at", "output=wiped", command=[str(askpass)])
    assert code == 0
    rerun = tmp_path / "rerun"
    assert main(["run", "--scenarios", str(tmp_path / "out"), "--out", str(rerun), "-q"]) == 0
    assert json.loads((rerun / "results.json").read_text())["runs"][0]["scenario"] == "mine.saved"
