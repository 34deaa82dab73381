from pathlib import Path

import pytest

from remanence.model import Expect
from remanence.scenario import ScenarioError, load_scenario, load_scenarios

GOOD = """
name = "demo.case"
description = "a demo"
target = "c"
methods = ["procmem", "gcore"]
repeat = 2

[secret]
form = "password"
length = 24

[[checkpoints]]
name = "in_use"
expect = "present"
where = "intended"
why = "the key is live"
intended_region = { locked = true }

[checkpoints.per_method.gcore]
expect = "absent"
why = "MADV_DONTDUMP"

[[checkpoints]]
name = "freed"
expect = "absent"
why = "wiped"
"""


def write(tmp_path: Path, text: str, name: str = "demo.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_good_file_loads_with_per_method_overrides(tmp_path):
    s = load_scenario(write(tmp_path, GOOD))
    assert (s.name, s.entry, s.repeat, s.methods) == ("demo.case", "demo.case", 2, ("procmem", "gcore"))
    assert (s.secret.form, s.secret.length) == ("password", 24)
    in_use = s.checkpoint("in_use")
    assert in_use.for_method("procmem").expect == Expect.PRESENT
    assert in_use.for_method("procmem").where == "intended"
    assert in_use.for_method("gcore").expect == Expect.ABSENT
    assert in_use.for_method("gcore").why == "MADV_DONTDUMP"
    assert in_use.intended_region == {"locked": True}
    assert s.checkpoint("freed").for_method("gcore").expect == Expect.ABSENT


@pytest.mark.parametrize("old, new, key, words", [
    ('target = "c"', 'target = "cobol"', "target", "not one of"),
    ('target = "c"\n', "", "target", "required key is missing"),
    ('repeat = 2', 'repeat = "2"', "repeat", "expected int"),
    ('repeat = 2', 'repeat = 0', "repeat", "out of range"),
    ('repeat = 2', 'repaet = 2', "repaet", "unknown key"),
    ('methods = ["procmem", "gcore"]', 'methods = ["procmem", "gcroe"]', "methods[1]", "unknown method"),
    ('expect = "present"', 'expect = "maybe"', "checkpoints[0].expect", "not one of"),
    ('[checkpoints.per_method.gcore]', '[checkpoints.per_method.gcore-all]', "checkpoints[0].per_method.gcore-all", "not taken at this checkpoint"),
    ('methods = ["procmem", "gcore"]', 'methods = ["procmem", "gcore", "kernel-core"]\n', None, None),
    ('why = "wiped"', 'why = "wiped"\nrequire_notes = ["nonsense"]', "checkpoints[1].require_notes[0]", "key=value"),
    ('why = "MADV_DONTDUMP"\n', "", "checkpoints[0].per_method.gcore.why", "required key is missing"),
    ('intended_region = { locked = true }', 'intended_region = { locked = "yes" }', "checkpoints[0].intended_region.locked", "expected bool"),
    ('length = 24', 'length = 2', "secret.length", "out of range"),
    ('name = "freed"', 'name = "in_use"', "checkpoints", "repeat"),
])
def test_errors_name_file_and_key(tmp_path, old, new, key, words):
    assert old in GOOD
    path = write(tmp_path, GOOD.replace(old, new, 1))
    if key is None:  # a valid variant
        load_scenario(path)
        return
    with pytest.raises(ScenarioError) as err:
        load_scenario(path)
    assert err.value.key == key
    assert str(err.value).startswith(f"{path}: {key}: ")
    assert words in str(err.value)


def test_invalid_toml_names_the_file_and_line(tmp_path):
    path = write(tmp_path, GOOD.replace('name = "in_use"', 'name = in_use'))
    with pytest.raises(ScenarioError, match=r"demo.toml: not valid TOML: Invalid value \(at line 13, column 8\)"):
        load_scenario(path)


def test_duplicate_names_across_files(tmp_path):
    write(tmp_path, GOOD, "a.toml")
    write(tmp_path, GOOD, "b.toml")
    with pytest.raises(ScenarioError, match=r"b.toml: name: 'demo.case' is already defined in .*a.toml"):
        load_scenarios(tmp_path)


def test_builtin_suite_loads():
    scenarios = load_scenarios(Path(__file__).resolve().parent.parent / "scenarios")
    names = {s.name for s in scenarios}
    assert {"sodium.live", "sodium.freed", "sodium.noaccess", "sodium.readonly", "sodium.mlock_denied", "malloc.nowipe",
            "malloc.memset", "malloc.memzero", "stack.nowipe", "stack.explicit_bzero", "stdio.copy"} <= names
    for s in scenarios:
        for c in s.checkpoints:
            for m in s.methods:
                assert c.for_method(m).why, f"{s.source}: {c.name}/{m} has no reason"


LIFECYCLE = """
name = "life"
target = "go"
methods = [METHODS]

[[checkpoints]]
name = "in_use"
expect = "present"
why = "planted"
EXTRA
[[checkpoints]]
name = "LAST"
expect = "absent"
why = "wiped"
"""


def lifecycle(tmp_path, methods: str, last: str = "after", extra: str = "") -> Path:
    return write(tmp_path, LIFECYCLE.replace("METHODS", methods).replace("LAST", last).replace("EXTRA", extra))


def test_methods_per_checkpoint_follow_the_lifecycle(tmp_path):
    s = load_scenario(lifecycle(tmp_path, '"procmem", "gcore", "kernel-core"'))
    assert s.checkpoint("in_use").methods == ("procmem", "gcore")
    assert s.checkpoint("after").methods == ("procmem", "gcore", "kernel-core")
    s = load_scenario(lifecycle(tmp_path, '"exit", "procmem"', last="exit"))
    assert s.checkpoint("in_use").methods == ("procmem",)
    assert s.checkpoint("exit").methods == ("exit",) and s.checkpoint("exit").is_exit
    assert [c.name for c in s.checkpoints if not c.is_exit] == ["in_use"]
    s = load_scenario(lifecycle(tmp_path, '"procmem", "gcore"', extra='methods = ["gcore"]\nrequire_notes = ["a=b"]\n'))
    assert s.checkpoint("in_use").methods == ("gcore",) and s.checkpoint("in_use").require_notes == ("a=b",)


@pytest.mark.parametrize("methods, last, extra, key, words", [
    ('"procmem", "kernel-core"', "after", 'methods = ["kernel-core"]\n', "checkpoints[0].methods[0]", "only allowed at the last"),
    ('"procmem", "exit"', "after", "", "methods", "go together"),
    ('"procmem"', "exit", "", "methods", "go together"),
    ('"procmem", "exit", "kernel-core"', "exit", "", "methods", "cannot also be snapshotted at its exit"),
    ('"procmem", "exit"', "exit", 'methods = ["exit"]\n', "checkpoints[0].methods[0]", "only there"),
    ('"procmem", "gcore"', "after", 'methods = ["gcore-all"]\n', "checkpoints[0].methods[0]", "not in this scenario's methods"),
])
def test_lifecycle_errors(tmp_path, methods, last, extra, key, words):
    with pytest.raises(ScenarioError) as err:
        load_scenario(lifecycle(tmp_path, methods, last, extra))
    assert err.value.key == key and words in str(err.value)


def test_exit_checkpoint_must_be_last(tmp_path):
    text = LIFECYCLE.replace("METHODS", '"procmem", "exit"').replace("LAST", "after").replace("EXTRA", "")
    text = text.replace('name = "in_use"', 'name = "exit"')
    with pytest.raises(ScenarioError, match="must come last"):
        load_scenario(write(tmp_path, text))


COMMAND = """
name = "mine.login"
target = "command"
methods = ["procmem", "gcore"]

[command]
argv = ["./login", "--user", "me"]
cwd = "bin"
delivery = "prompt"
prompt = "Password: ?$"
env = { LANG = "C" }

[[checkpoints]]
name = "logged_in"
trigger = { output = "Welcome" }
expect = "present"
why = "in use"

[[checkpoints]]
name = "later"
trigger = { idle = 1.5 }
expect = "absent"
why = "wiped after login"
"""


def test_command_target_loads_with_triggers_and_a_password_secret(tmp_path):
    (tmp_path / "bin").mkdir()          # cwd must be a folder
    s = load_scenario(write(tmp_path, COMMAND))
    assert s.command.argv == ("./login", "--user", "me")
    assert s.command.cwd == (tmp_path / "bin").resolve()
    assert (s.command.delivery, s.command.prompt, s.command.env) == ("prompt", "Password: ?$", {"LANG": "C"})
    assert s.secret.form == "password"        # a user's program is given a password unless the file says otherwise
    assert [(c.trigger.kind, c.trigger.pattern, c.trigger.seconds) for c in s.checkpoints] == [
        ("output", "Welcome", 0.0), ("idle", "", 1.5)]


@pytest.mark.parametrize("old, new, key, words", [
    ('argv = ["./login", "--user", "me"]', 'argv = []', "command.argv", "required"),
    ('prompt = "Password: ?$"\n', "", "command.prompt", "required key is missing"),
    ('prompt = "Password: ?$"', 'prompt = "(unclosed"', "command.prompt", "not a valid regular expression"),
    ('delivery = "prompt"\nprompt = "Password: ?$"', 'delivery = "file"', "command.argv", "{secret_file}"),
    ('delivery = "prompt"\nprompt = "Password: ?$"', 'delivery = "stdin"\nprompt = "x"', "command.prompt", "only for delivery"),
    ('trigger = { output = "Welcome" }\n', "", "checkpoints[0].trigger", "required key is missing"),
    ('trigger = { idle = 1.5 }', 'trigger = { idle = 1.5, delay = 2 }', "checkpoints[1].trigger", "exactly one"),
    ('trigger = { idle = 1.5 }', 'trigger = { idle = -1 }', "checkpoints[1].trigger.idle", "out of range"),
    ('trigger = { output = "Welcome" }', 'trigger = { output = "[" }', "checkpoints[0].trigger.output", "regular expression"),
    ('trigger = { idle = 1.5 }', 'trigger = { when = 1 }', "checkpoints[1].trigger.when", "unknown key"),
    ('env = { LANG = "C" }', 'env = { LANG = 1 }', "command.env.LANG", "NAME ="),
    ('methods = ["procmem", "gcore"]', 'methods = ["procmem"]\nentry = "x"', "entry", "no entry"),
])
def test_broken_command_targets_name_the_key(tmp_path, old, new, key, words):
    assert old in COMMAND
    with pytest.raises(ScenarioError) as e:
        load_scenario(write(tmp_path, COMMAND.replace(old, new, 1)))
    assert e.value.key == key and words in str(e.value), str(e.value)


def test_a_binary_secret_cannot_be_typed_at_a_prompt(tmp_path):
    with pytest.raises(ScenarioError, match="must be a password") as e:
        load_scenario(write(tmp_path, COMMAND.replace('[command]', '[secret]\nform = "binary"\n\n[command]')))
    assert e.value.key == "secret.form"


def test_triggers_and_command_tables_belong_to_command_targets_only(tmp_path):
    with pytest.raises(ScenarioError, match="unknown key") as e:
        load_scenario(write(tmp_path, GOOD.replace('expect = "absent"\nwhy = "wiped"', 'expect = "absent"\nwhy = "wiped"\ntrigger = { idle = 1 }')))
    assert e.value.key == "checkpoints[1].trigger"
    with pytest.raises(ScenarioError, match="only for target") as e:
        load_scenario(write(tmp_path, GOOD + '\n[command]\nargv = ["x"]\n'))
    assert e.value.key == "command"


def test_derived_expectations_load_per_checkpoint(tmp_path):
    text = GOOD + '\n[checkpoints.derived.session_rx]\nexpect = "absent"\nwhy = "wiped with the key"\nwhere = "heap"\n'
    s = load_scenario(write(tmp_path, text))
    derived = s.checkpoint("freed").derived["session_rx"]
    assert (derived.expect, derived.why, derived.where) == (Expect.ABSENT, "wiped with the key", "heap")
    assert s.checkpoint("in_use").derived == {}


@pytest.mark.parametrize("table, key, words", [
    ('[checkpoints.derived.Bad-Label]\nexpect = "absent"\nwhy = "x"', "checkpoints[1].derived.Bad-Label", "a-z, 0-9"),
    ('[checkpoints.derived.rx]\nexpect = "absent"', "checkpoints[1].derived.rx.why", "required"),
    ('[checkpoints.derived.rx]\nexpect = "present"\nwhy = "x"\nwhere = "intended"', "checkpoints[1].derived.rx.where", "no intended region"),
])
def test_broken_derived_expectations_name_the_key(tmp_path, table, key, words):
    with pytest.raises(ScenarioError) as e:
        load_scenario(write(tmp_path, GOOD + "\n" + table + "\n"))
    assert e.value.key == key and words in str(e.value), str(e.value)
