"""The Python target (targets/python/target.py, PyNaCl) against the protocol in targets/PROTOCOL.md.

Everything here runs the real program: a venv of its own is made in a temporary directory with
this interpreter and `pip install --no-cache-dir -r targets/python/requirements.txt` (the tests
skip, saying why, when that fails, e.g. without network), target.py and the SDK it imports
(harness/sdk.py, as the package remanence) are copied next to it and target.py is run
as `<venv>/bin/python -E -s target.py <scenario>`, driven over a socketpair passed as fd 3, as the
harness does. No harness code is used. The conversation loop is our own: it also handles
`derived <label> <n>` followed by n raw bytes.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from target_driver import (Run, Target, after_bad_environment, after_bogus_reply, after_secret_of_length,
                           dies_before_ready, drive, exit_after_eof, fresh, read_mem, readable_memory_contains,
                           scenario_file_names, smaps_entry, target_env)

ROOT = Path(__file__).resolve().parents[1]
PY_DIR = ROOT / "targets" / "python"
SCENARIO_DIR = ROOT / "scenarios" / "python"

# scenario -> checkpoint names, in order (the scenario files rely on these)
SCENARIOS = {
    "py.privatekey.dropped": ["in_use", "dropped"],
    "py.bytearray.wiped": ["in_use", "wiped", "dropped"],
    "py.bytearray.bytes_copy": ["in_use", "wiped", "dropped"],
    "py.kx.xchacha": ["exchanged", "dropped"],
}
# scenario -> (label, length) of the derived values, in the order they are sent (all before the first checkpoint)
DERIVED = {
    "py.privatekey.dropped": [("box_shared_key", 32)],
    "py.bytearray.wiped": [("kx_secret_key", 32)],
    "py.bytearray.bytes_copy": [],
    "py.kx.xchacha": [("client_secret_key", 32), ("session_rx", 32), ("session_tx", 32),
                      ("plaintext_c2s", 48), ("plaintext_s2c", 48)],
}

TIMEOUT = 30.0
ADDR_RE = re.compile(r"0x[0-9a-f]+")


# --------------------------------------------------------------------- venv


@pytest.fixture(scope="session")
def venv_python(tmp_path_factory) -> Path:
    """A venv of the target's own with the pinned requirements; skip if it cannot be made."""
    root = tmp_path_factory.mktemp("python-target")
    venv = root / "venv"
    r = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot create a venv with {sys.executable}: {r.stderr.strip()[-300:]}")
    r = subprocess.run([str(venv / "bin" / "pip"), "install", "--no-cache-dir", "--disable-pip-version-check", "-q",
                        "-r", str(PY_DIR / "requirements.txt")], capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        pytest.skip(f"pip install -r targets/python/requirements.txt failed (no network?): {r.stderr.strip()[-300:]}")
    return venv / "bin" / "python"


def install_sdk(folder: Path) -> None:
    """remanence.sdk beside a copy of target.py, as the harness installs it (the venv lacks the harness)."""
    package = folder / "remanence"
    package.mkdir(exist_ok=True)
    (package / "__init__.py").write_text("")
    shutil.copyfile(ROOT / "harness" / "sdk.py", package / "sdk.py")


@pytest.fixture(scope="session")
def target_py(venv_python) -> Path:
    dest = venv_python.parents[2] / "target.py"
    shutil.copyfile(PY_DIR / "target.py", dest)
    install_sdk(dest.parent)
    return dest


def command(venv_python: Path, target: Path) -> list[str]:
    return [str(venv_python), "-E", "-s", str(target)]


@pytest.fixture(scope="session")
def cmd(venv_python, target_py) -> list[str]:
    return command(venv_python, target_py)


# ------------------------------------------------------------------- driving


def _env(secret_len, canary_len, **overrides) -> dict[str, str]:
    # What the harness gives a target: a fixed, minimal environment.
    return target_env({"PATH": "/usr/local/bin:/usr/bin:/bin", "LC_ALL": "C"}, secret_len, canary_len, **overrides)


def start_target(cmd, argv, env) -> Target:
    return Target(Path(cmd[0]), [*cmd[1:], *argv], env, TIMEOUT)


def converse(cmd, scenario, secret, canary, on_checkpoint=None) -> Run:
    return drive(start_target(cmd, [scenario], _env(len(secret), len(canary))), secret, canary, on_checkpoint)


def kx_seed_keypair(venv_python: Path, seed: bytes) -> tuple[bytes, bytes]:
    """(public, secret) of crypto_kx_seed_keypair(seed), computed by PyNaCl in the target's venv."""
    r = subprocess.run([str(venv_python), "-E", "-s", "-c",
                        "import sys, nacl.bindings as b; pk, sk = b.crypto_kx_seed_keypair(sys.stdin.buffer.read());"
                        "sys.stdout.write((pk + sk).hex())"], input=seed, capture_output=True, timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr
    both = bytes.fromhex(r.stdout.decode())
    return both[:32], both[32:]


# --------------------------------------------------------------------- tests


def test_list_names_all_scenarios(cmd):
    r = subprocess.run([*cmd, "--list"], capture_output=True, text=True, timeout=TIMEOUT, env=_env(32, 16))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == sorted(SCENARIOS)
    assert r.stdout.endswith("\n") and r.stderr == ""


def test_every_scenario_has_a_scenario_file():
    assert scenario_file_names(SCENARIO_DIR, "python") == set(SCENARIOS)


def test_scenario_files_name_the_checkpoints_and_derived_values_the_target_sends():
    for name, checkpoints in SCENARIOS.items():
        text = (SCENARIO_DIR / f"{name}.toml").read_text()
        assert re.findall(r'^name\s*=\s*"([^"]+)"', text, re.M)[1:] == checkpoints, name
        mentioned = set(re.findall(r"^\[checkpoints\.derived\.([a-z0-9_]+)\]", text, re.M))
        assert mentioned == {label for label, _ in DERIVED[name]}, name


@pytest.mark.parametrize("argv", [["no.such"], [], ["py.kx.xchacha", "extra"]])
def test_unknown_or_missing_scenario_exits_64(cmd, argv):
    r = subprocess.run([*cmd, *argv], capture_output=True, text=True, timeout=TIMEOUT, env=_env(32, 16))
    assert r.returncode == 64
    name = argv[0] if argv else ""
    m = re.search(rf"unknown scenario '{re.escape(name)}'; known: (.*)", r.stderr)
    assert m, r.stderr
    assert m.group(1).split() == sorted(SCENARIOS)
    assert r.stdout == ""


def test_duplicate_registration_aborts_before_any_scenario(venv_python, target_py, tmp_path):
    """A copy of target.py with one more registration of an existing name, before main runs."""
    source = target_py.read_text()
    guard = '\nif __name__ == "__main__":'
    assert source.count(guard) == 1
    dup = tmp_path / "target.py"
    install_sdk(tmp_path)
    dup.write_text(source.replace(guard, '\n@scenario("py.kx.xchacha")\ndef _again():\n    pass\n\n' + guard))
    r = subprocess.run(command(venv_python, dup) + ["--list"], capture_output=True, text=True, timeout=TIMEOUT,
                       env=_env(32, 16))
    assert r.returncode != 0
    assert "duplicate scenario registration 'py.kx.xchacha'" in r.stderr
    assert r.stdout == ""
    # Started for real, it dies before saying anything on the channel.
    t = start_target(command(venv_python, dup), ["py.bytearray.wiped"], _env(32, 16))
    assert dies_before_ready(t) != 0
    assert b"duplicate scenario registration 'py.kx.xchacha'" in t.stderr


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_full_conversation(cmd, scenario):
    secret, canary = fresh(32), fresh(48)
    run = converse(cmd, scenario, secret, canary)
    assert run.rc == 0, run.stderr
    assert run.lines[-1] == "done"
    assert [name for name, _ in run.checkpoints] == SCENARIOS[scenario]
    for name, addr in run.checkpoints:
        assert ADDR_RE.fullmatch(addr), (name, addr)
    # One address per scenario: where the scenario keeps (or kept) the key.
    assert len({addr for _, addr in run.checkpoints}) == 1
    assert [(label, len(value)) for label, value in run.derived] == DERIVED[scenario]
    # All derived values come before the first checkpoint, and differ from the secret and each other.
    assert all(line.startswith("derived ") for line in run.lines[:len(run.derived)])
    values = [value for _, value in run.derived]
    assert len(set(values)) == len(values) and secret not in values
    assert run.notes == []
    for blob in (run.stdout, run.stderr, "\n".join(run.lines).encode()):
        assert secret not in blob and canary not in blob
        assert secret.hex().encode() not in blob
    assert run.stdout == b"" and run.stderr == b""


def test_derived_values_are_what_they_claim(cmd, venv_python):
    """kx_secret_key / client_secret_key are crypto_kx_seed_keypair(secret)'s secret key."""
    secret = fresh(32)
    _, expected_sk = kx_seed_keypair(venv_python, secret)
    for scenario, label in (("py.bytearray.wiped", "kx_secret_key"), ("py.kx.xchacha", "client_secret_key")):
        run = converse(cmd, scenario, secret, fresh(16))
        assert run.rc == 0, run.stderr
        assert dict(run.derived)[label] == expected_sk, scenario


def _probe_memory(t, name, addr, probes, secret):
    a = int(addr, 16)
    probes[name] = {
        "at_addr": read_mem(t.pid, a, len(secret)),
        "secret": readable_memory_contains(t.pid, secret),
        "derived": {label: readable_memory_contains(t.pid, value) for label, value in t.derived.items()},
        "smaps": smaps_entry(t.pid, a),
        "maps_name": next((n for at, n in readable_memory_contains(t.pid, secret) if at == a), None),
    }


def run_with_probes(cmd, scenario, secret=None):
    secret = secret or fresh(32)
    run = converse(cmd, scenario, secret, fresh(32),
                   lambda t, name, addr, probes: _probe_memory(t, name, addr, probes, secret))
    assert run.rc == 0, run.stderr
    return secret, run


def test_privatekey_dropped_leaves_the_bytes_in_freed_memory(cmd):
    secret, run = run_with_probes(cmd, "py.privatekey.dropped")
    p = run.probes
    in_use, dropped = p["in_use"], p["dropped"]
    # The reported address is the bytes object's ob_sval and holds the key; it is the only copy.
    assert in_use["at_addr"] == secret
    assert [at for at, _ in in_use["secret"]] == [int(run.checkpoints[0][1], 16)]
    assert in_use["maps_name"] == "anon"  # a pymalloc arena: anonymous mmap, not [heap]
    # Dropped (del + gc.collect()): the freed pymalloc block still holds the whole key.
    assert dropped["at_addr"] == secret
    assert dropped["secret"] == in_use["secret"]
    # The Box's shared key: a live bytes object plus the freed cffi buffer in [heap]; both stay.
    shared = in_use["derived"]["box_shared_key"]
    assert any(n == "anon" for _, n in shared) and any(n == "[heap]" for _, n in shared), shared
    assert dropped["derived"]["box_shared_key"] == shared


def test_bytearray_wiped_leaves_nothing(cmd):
    secret, run = run_with_probes(cmd, "py.bytearray.wiped")
    p = run.probes
    addr = int(run.checkpoints[0][1], 16)
    assert p["in_use"]["at_addr"] == secret
    # recv_into wrote straight into the bytearray; libsodium used it through ffi.from_buffer: one copy.
    assert p["in_use"]["secret"] == [(addr, "anon")]
    assert len(p["in_use"]["derived"]["kx_secret_key"]) == 1
    for name in ("wiped", "dropped"):
        assert p[name]["secret"] == [], name
        assert p[name]["derived"]["kx_secret_key"] == [], name
        for half in (secret[:16], secret[16:]):
            assert p[name]["secret"] == [] and half not in p[name]["at_addr"]
    assert p["wiped"]["at_addr"] == bytes(32)


def test_bytearray_bytes_copy_survives_the_wipe(cmd):
    secret, run = run_with_probes(cmd, "py.bytearray.bytes_copy")
    p = run.probes
    addr = int(run.checkpoints[0][1], 16)
    assert p["in_use"]["at_addr"] == secret
    assert len(p["in_use"]["secret"]) == 2 and (addr, "anon") in p["in_use"]["secret"]
    [copy] = [hit for hit in p["in_use"]["secret"] if hit[0] != addr]
    assert p["wiped"]["at_addr"] == bytes(32)
    assert p["wiped"]["secret"] == [copy]     # the PrivateKey's bytes(buf), beyond the wipe's reach
    assert p["dropped"]["secret"] == [copy]   # freed, unwiped


def test_kx_values_survive_the_drop(cmd):
    secret, run = run_with_probes(cmd, "py.kx.xchacha")
    p = run.probes
    exchanged, dropped = p["exchanged"], p["dropped"]
    addr = int(run.checkpoints[0][1], 16)
    assert exchanged["at_addr"] == secret and exchanged["secret"] == [(addr, "anon")]
    assert dropped["at_addr"] == secret and dropped["secret"] == [(addr, "anon")]
    anon = {label: sum(1 for _, n in hits if n == "anon") for label, hits in exchanged["derived"].items()}
    # Live bytes objects (pymalloc, anonymous): rx and tx twice each (client and server hold equal keys),
    # each plaintext twice (the original and its decryption).
    assert anon["client_secret_key"] >= 1 and anon["session_rx"] >= 2 and anon["session_tx"] >= 2, anon
    assert anon["plaintext_c2s"] >= 2 and anon["plaintext_s2c"] >= 2, anon
    # Nothing is wiped by dropping: every copy seen in use is still there.
    for label, hits in exchanged["derived"].items():
        assert dropped["derived"][label] == hits, label


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
@pytest.mark.parametrize("secret_len", [16, 33])
def test_wrong_secret_length_fails_70(cmd, scenario, secret_len):
    line, rc = after_secret_of_length(start_target(cmd, [scenario], _env(secret_len, 16)), secret_len)
    assert line == f"error this scenario needs a 32-byte secret, got {secret_len}"
    assert rc == 70


@pytest.mark.parametrize(
    "overrides",
    [
        {"REMANENCE_SECRET_LEN": "0"},
        {"REMANENCE_SECRET_LEN": "4097"},
        {"REMANENCE_SECRET_LEN": "12x"},
        {"REMANENCE_SECRET_LEN": "+32"},
        {"REMANENCE_SECRET_LEN": "٣٢"},  # Arabic-Indic digits: str.isdigit() alone would take them
        {"REMANENCE_SECRET_LEN": None},
        {"REMANENCE_CANARY_LEN": "1048577"},
        {"REMANENCE_CANARY_LEN": None},
        {"REMANENCE_PROTOCOL": "2"},
    ],
)
def test_bad_environment_fails_70_after_ready(cmd, overrides):
    line, rc = after_bad_environment(start_target(cmd, ["py.kx.xchacha"], _env(32, 16, **overrides)))
    assert line is not None and line.startswith("error "), line
    assert rc == 70


@pytest.mark.parametrize("scenario", ["py.kx.xchacha", "py.bytearray.wiped"])
@pytest.mark.parametrize("stage", ["before_canary", "mid_canary", "mid_secret", "at_checkpoint"])
def test_eof_on_fd3_exits_75(cmd, scenario, stage):
    secret, canary = fresh(32), fresh(16)
    t = start_target(cmd, [scenario], _env(len(secret), len(canary)))
    rc, line = exit_after_eof(t, stage, secret, canary)
    if stage == "at_checkpoint":
        # py.kx.xchacha sends its derived values first; the checkpoint line follows them.
        assert line is not None and line.startswith(("checkpoint ", "derived ")), line
    assert rc == 75, t.stderr


def test_missing_fd3_exits_75(cmd):
    r = subprocess.run([*cmd, "py.kx.xchacha"], capture_output=True, timeout=TIMEOUT, env=_env(32, 16),
                       close_fds=True)
    assert r.returncode == 75


def test_reply_other_than_continue_fails_70_without_echo(cmd):
    secret = fresh(32)
    t = start_target(cmd, ["py.bytearray.bytes_copy"], _env(len(secret), 16))
    checkpoint, line, rc = after_bogus_reply(t, secret)
    assert checkpoint.startswith("checkpoint in_use ")
    assert rc == 70
    assert line == "error expected 'continue' after checkpoint in_use"
    assert b"bogus" not in t.stderr


@pytest.mark.parametrize("reply", [b"continuex\n", b"contin\n", b"continu\xe9\n", b"x" * 100 + b"\n"])
def test_near_miss_replies_fail_70(cmd, reply):
    t = start_target(cmd, ["py.bytearray.bytes_copy"], _env(32, 16))
    try:
        assert t.readline() == "ready 1"
        t.send(fresh(16) + fresh(32))
        assert t.readline().startswith("checkpoint in_use ")
        t.send(reply)
        line = t.readline()
        rc = t.wait()
    finally:
        t.kill()
    assert line == "error expected 'continue' after checkpoint in_use"
    assert rc == 70


def test_continue_and_secret_may_arrive_in_pieces(cmd):
    secret = fresh(32)
    t = start_target(cmd, ["py.bytearray.bytes_copy"], _env(len(secret), 16))
    try:
        assert t.readline() == "ready 1"
        t.send(fresh(16)[:5])
        t.send(fresh(11))
        t.send(secret[:10])
        t.send(secret[10:])
        assert t.readline().startswith("checkpoint in_use ")
        t.send(b"cont")
        t.send(b"inue\n")
        assert t.readline().startswith("checkpoint wiped ")
        t.send(b"continue\ncontinue\n")  # two replies in one write: the target reads only up to each newline
        assert t.readline().startswith("checkpoint dropped ")
        assert t.readline() == "done"
        rc = t.wait()
    finally:
        t.kill()
    assert rc == 0, t.stderr


def test_large_canary_is_read_whole(cmd):
    """A 1 MiB canary (the protocol's maximum) arrives in many pieces; the key after it still lands whole."""
    secret, canary = fresh(32), fresh(1 << 20)

    def probe(t, name, addr, probes):
        probes[name] = (read_mem(t.pid, int(addr, 16), 32), len(readable_memory_contains(t.pid, canary)))

    run = converse(cmd, "py.bytearray.wiped", secret, canary, probe)
    assert run.rc == 0, run.stderr
    assert run.probes["in_use"] == (secret, 1)
    assert run.probes["dropped"][1] == 1
