"""Every built-in target (C, Go, Node, Python) against the protocol in targets/PROTOCOL.md: one suite, each rule
checked on all four. The targets are the runner's own builds (remanence.targets.build_target), started with the
harness's environment and driven over a socketpair passed as fd 3 by target_driver, with no other harness code.
What only one language has (memguard, runtime/secret, sodium-native, pymalloc, …) is in test_<language>_target.py;
the tables of what each target registers and sends are in protocol_targets.py."""
from __future__ import annotations

import re
import signal
import time

import pytest
from remanence.scenario import EXIT_CHECKPOINT
from protocol_targets import (ADDR_RE, DUPLICATES, LANGUAGES, Language, converse, harness_env, program, run_listing,
                              start)
from target_driver import (after_bad_environment, after_bogus_reply, after_secret_of_length, dies_before_ready,
                           exit_after_eof, fresh, read_mem, readable_memory_contains, scenario_file_names)


def each(cases_of) -> list:
    """pytest params (language, *case) for every language and every case (a tuple) `cases_of(spec)` gives for it."""
    def words(value) -> str:
        return " ".join(map(str, value)) or "none" if isinstance(value, tuple) else str(value)
    return [pytest.param(name, *case, id="-".join([name, *map(words, case)]))
            for name, spec in LANGUAGES.items() for case in cases_of(spec)]


def next_checkpoint(t) -> str | None:
    """The target's next line that is not a note (a checkpoint, `done`, or None at EOF)."""
    while (line := t.readline()) is not None and line.startswith("note "):
        pass
    return line


def assert_is_the_registry(spec: Language, names: list[str]) -> None:
    """`names` (from --list or a usage message) are exactly the scenarios `spec` registers, sorted, each once."""
    assert names == sorted(set(names)), names
    assert set(spec.scenarios) <= set(names)
    extras = set(names) - set(spec.scenarios)
    assert all(spec.listed_extras and n.startswith(spec.listed_extras) for n in extras), extras


# ---------------------------------------------------------------------------------------------- the registry


@pytest.mark.parametrize("language", LANGUAGES)
def test_list_names_all_scenarios(language):
    spec = LANGUAGES[language]
    r = run_listing(program(language).command, "--list", env=harness_env(language, 32, 16))
    assert r.returncode == 0, r.stderr
    assert r.stdout.endswith("\n") and r.stderr == ""
    assert_is_the_registry(spec, r.stdout.split())


@pytest.mark.parametrize("language", LANGUAGES)
def test_every_scenario_has_a_scenario_file(language):
    assert scenario_file_names(LANGUAGES[language].scenario_dir, language) == set(LANGUAGES[language].scenarios)


@pytest.mark.parametrize("language", LANGUAGES)
def test_scenario_files_name_the_checkpoints_and_derived_values_the_target_sends(language):
    spec = LANGUAGES[language]
    for name, checkpoints in spec.scenarios.items():
        text = (spec.scenario_dir / f"{name}.toml").read_text()
        named = re.findall(r'^name\s*=\s*"([^"]+)"', text, re.M)[1:]
        # The harness's own stop at the final exit_group comes after the target's checkpoints.
        assert [c for c in named if c != EXIT_CHECKPOINT] == checkpoints, name
        mentioned = set(re.findall(r"^\[checkpoints\.derived\.([a-z0-9_]+)\]", text, re.M))
        assert mentioned == {label for label, _ in spec.derived.get(name, [])}, name


@pytest.mark.parametrize("language, argv", each(lambda spec: [(("no.such",),), ((),), ((spec.sample, "extra"),)]))
def test_unknown_or_missing_scenario_exits_64(language, argv):
    command, env = program(language).command, harness_env(language, 32, 16)
    r = run_listing(command, *argv, env=env)
    assert r.returncode == 64
    name = argv[0] if argv else ""
    m = re.search(rf"unknown scenario '{re.escape(name)}'; known: (.*)", r.stderr)
    assert m, r.stderr
    assert m.group(1).split() == run_listing(command, "--list", env=env).stdout.split()
    assert_is_the_registry(LANGUAGES[language], m.group(1).split())
    assert r.stdout == ""


@pytest.mark.parametrize("language", LANGUAGES)
def test_duplicate_registration_aborts_before_any_scenario(language, tmp_path):
    command, name = DUPLICATES[language](tmp_path)
    env = harness_env(language, 32, 16)
    r = run_listing(command, "--list", env=env)
    assert r.returncode != 0
    assert f"duplicate scenario registration '{name}'" in r.stderr
    assert r.stdout == ""
    # Started for real, it dies before saying anything on the channel.
    other = next(s for s in LANGUAGES[language].scenarios if s != name)
    t = start(command, [other], env)
    assert dies_before_ready(t) != 0
    assert f"duplicate scenario registration '{name}'".encode() in t.stderr


# ------------------------------------------------------------------------------------------ the conversation


@pytest.mark.parametrize("language, scenario", each(lambda spec: [(s,) for s in sorted(spec.scenarios)]))
def test_full_conversation(language, scenario):
    spec = LANGUAGES[language]
    secret, canary = fresh(32), fresh(48)
    run = converse(language, scenario, secret, canary)
    if scenario in spec.crashes:     # killed by the signal once let go from its last checkpoint
        assert run.rc == -signal.Signals[spec.crashes[scenario]] and run.lines[-1].startswith("checkpoint "), run.stderr
    else:
        assert run.rc == spec.exit_status.get(scenario, 0), run.stderr
        assert run.lines[-1] == "done"
    assert [name for name, _ in run.checkpoints] == spec.scenarios[scenario]
    for name, addr in run.checkpoints:
        if (scenario, name) in spec.no_address:
            assert addr == "-"
        else:
            assert ADDR_RE.fullmatch(addr), (name, addr)
    if spec.one_address and scenario not in spec.key_moves:   # where the scenario keeps (or kept) the key
        assert len({addr for _, addr in run.checkpoints}) == 1, run.checkpoints
    notes = spec.notes.get(scenario, [])
    assert len(run.notes) == len(notes), run.notes
    for pattern, body in zip(notes, run.notes):
        assert re.fullmatch(pattern, body), (pattern, body)
    # Derived values: all before the first checkpoint, each different from the secret and from each other.
    assert [(label, len(value)) for label, value in run.derived] == spec.derived.get(scenario, [])
    assert all(line.startswith("derived ") for line in run.lines[:len(run.derived)])
    values = [value for _, value in run.derived]
    assert len(set(values)) == len(values) and secret not in values
    for blob in (run.stdout, run.stderr, "\n".join(run.lines).encode()):
        assert secret not in blob and canary not in blob
        assert secret.hex().encode() not in blob
    if spec.quiet:
        assert run.stdout == b"" and run.stderr == b""


@pytest.mark.parametrize("language, scenario, secret_len",
                         each(lambda spec: [(s, n) for s in spec.extreme_length_scenarios for n in (1, 4096)]))
def test_extreme_secret_lengths(language, scenario, secret_len):
    """The protocol's smallest and largest secrets land whole at the first reported address."""
    secret = fresh(secret_len)

    def probe(t, name, addr, probes):
        if "at" not in probes and addr != "-":
            probes["at"] = read_mem(t.pid, int(addr, 16), secret_len)

    run = converse(language, scenario, secret, fresh(16), probe)
    assert run.rc == 0, run.stderr
    assert [name for name, _ in run.checkpoints] == LANGUAGES[language].scenarios[scenario]
    assert run.probes["at"] == secret


@pytest.mark.parametrize("language, scenario, secret_len", each(lambda spec: spec.refused_lengths))
def test_secret_length_the_scenario_cannot_take_fails_70(language, scenario, secret_len):
    t = start(program(language).command, [scenario], harness_env(language, secret_len, 16))
    line, rc = after_secret_of_length(t, secret_len)
    assert line is not None and line.startswith("error "), line
    if message := LANGUAGES[language].length_message:
        assert line == message.format(n=secret_len)
    assert rc == 70


BAD_ENVIRONMENTS = [
    {"REMANENCE_SECRET_LEN": "0"},
    {"REMANENCE_SECRET_LEN": "4097"},
    {"REMANENCE_SECRET_LEN": "12x"},
    {"REMANENCE_SECRET_LEN": "+32"},
    {"REMANENCE_SECRET_LEN": "٣٢"},  # Arabic-Indic digits: Python's str.isdigit() alone would take them
    {"REMANENCE_SECRET_LEN": None},
    {"REMANENCE_CANARY_LEN": "1048577"},
    {"REMANENCE_CANARY_LEN": None},
    {"REMANENCE_PROTOCOL": "2"},
]


@pytest.mark.parametrize("overrides", BAD_ENVIRONMENTS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
@pytest.mark.parametrize("language", LANGUAGES)
def test_bad_environment_fails_70_after_ready(language, overrides):
    spec = LANGUAGES[language]
    t = start(program(language).command, [spec.sample], harness_env(language, 32, 16, **overrides))
    line, rc = after_bad_environment(t)
    assert line is not None and line.startswith("error ") and next(iter(overrides)) in line, line
    assert rc == 70


@pytest.mark.parametrize("stage", ["before_canary", "mid_canary", "mid_secret", "at_checkpoint"])
@pytest.mark.parametrize("language, scenario", each(lambda spec: [(s,) for s in spec.eof_scenarios]))
def test_eof_on_fd3_exits_75(language, scenario, stage):
    spec = LANGUAGES[language]
    secret, canary = fresh(32), fresh(16)
    t = start(program(language).command, [scenario], harness_env(language, len(secret), len(canary)))
    rc, line = exit_after_eof(t, stage, secret, canary)
    if stage == "at_checkpoint":
        # A scenario with derived values sends them first; the first checkpoint follows them.
        first = "derived " if spec.derived.get(scenario) else f"checkpoint {spec.scenarios[scenario][0]} "
        assert line is not None and line.startswith(first), line
    assert rc == 75, t.stderr
    assert b"control channel closed" in t.stderr


@pytest.mark.parametrize("language", LANGUAGES)
def test_missing_fd3_exits_75(language):
    r = run_listing(program(language).command, LANGUAGES[language].sample, env=harness_env(language, 32, 16))
    assert r.returncode == 75


# (reply, what would show in stderr if the target echoed it)
REPLIES = {"bogus": (b"bogus-reply\n", b"bogus"), "longer": (b"continuex\n", b"continuex"),
           "shorter": (b"contin\n", b"contin'"), "non-ascii": (b"continu\xe9\n", b"\xe9"),
           "long-line": (b"x" * 100 + b"\n", b"xxxx")}


@pytest.mark.parametrize("reply, echo", REPLIES.values(), ids=REPLIES)
@pytest.mark.parametrize("language", LANGUAGES)
def test_reply_other_than_continue_fails_70_without_echo(language, reply, echo):
    spec = LANGUAGES[language]
    scenario = spec.bogus_reply_scenario
    first = spec.scenarios[scenario][0]
    t = start(program(language).command, [scenario], harness_env(language, 32, 16))
    checkpoint, line, rc = after_bogus_reply(t, fresh(32), reply)
    assert checkpoint.startswith(f"checkpoint {first} ")
    assert line == f"error expected 'continue' after checkpoint {first}"
    assert rc == 70
    assert echo not in t.stderr


@pytest.mark.parametrize("language", LANGUAGES)
def test_canary_secret_and_continue_may_arrive_in_pieces(language):
    """The reader copes with the canary, the secret and a reply each split across writes, and with two replies in
    one write (it reads only up to each newline). C's stdio.copy, whose FILE buffer must hold the whole secret, waits
    for all of it."""
    spec = LANGUAGES[language]
    scenario = spec.pieces_scenario
    first, second, third = spec.scenarios[scenario]
    secret = fresh(32)
    t = start(program(language).command, [scenario], harness_env(language, len(secret), 16))
    try:
        assert t.readline() == "ready 1"
        t.send(fresh(5))
        t.send(fresh(11))
        t.send(secret[:10])
        time.sleep(0.2)                # the target reads the first piece alone
        t.send(secret[10:])
        assert next_checkpoint(t).startswith(f"checkpoint {first} ")
        t.send(b"cont")
        t.send(b"inue\n")
        assert next_checkpoint(t).startswith(f"checkpoint {second} ")
        t.send(b"continue\ncontinue\n")
        assert next_checkpoint(t).startswith(f"checkpoint {third} ")
        assert next_checkpoint(t) == "done"
        rc = t.wait()
    finally:
        t.kill()
    assert rc == 0, t.stderr


@pytest.mark.parametrize("language", LANGUAGES)
def test_large_canary_is_read_whole(language):
    """A 1 MiB canary (the protocol's maximum) arrives in many pieces, into one live buffer; the key after it still
    lands whole."""
    spec = LANGUAGES[language]
    scenario = spec.pieces_scenario
    secret, canary = fresh(32), fresh(1 << 20)

    def probe(t, name, addr, probes):
        probes[name] = (read_mem(t.pid, int(addr, 16), 32) if name == spec.scenarios[scenario][0] else None,
                        len(readable_memory_contains(t.pid, canary)))

    run = converse(language, scenario, secret, canary, probe)
    assert run.rc == 0, run.stderr
    assert [count for _, count in run.probes.values()] == [1] * len(run.probes)
    assert run.probes[spec.scenarios[scenario][0]][0] == secret
