"""`remanence scan`: ad-hoc scans of real core files and of a live process, end to end through the CLI.

A small Python process reads three random values from a pipe into bytearrays and sleeps; gdb's gcore (through the
harness's own gcore snapshot) makes a core of it. The scans must find each value (given as hex, text or a file),
attribute it to its region, judge it with the honest-absence rules, keep going past broken inputs, and never let
a value reach a report or the terminal.
"""
from __future__ import annotations

import base64
import hashlib
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from remanence.adhoc import AdhocUsageError, ValueArg, load_values
from remanence.cli import main
from remanence.snapshot import dispose_snapshot, take_snapshot
from remanence.snapshot.elfcore import CoreFormatError, read_core_layout
from remanence.targets import PROJECT_ROOT
from suite_run import read_results

needs_gdb = pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb not found on PATH: cannot make a core (gcore)")

HOLDER = r"""
import sys, time
binary = bytearray(sys.stdin.buffer.read(32))
other = bytearray(sys.stdin.buffer.read(24))
password = bytearray(sys.stdin.buffer.read(20))
print("ready", flush=True)
time.sleep(600)
"""


class Holder:
    def __init__(self):
        self.binary = os.urandom(32)
        self.other = os.urandom(24)
        self.password = b"Pw-" + os.urandom(8).hex().encode() + b"!"        # 20 printable bytes
        self.proc = subprocess.Popen([sys.executable, "-c", HOLDER], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.proc.stdin.write(self.binary + self.other + self.password)
        self.proc.stdin.close()
        assert self.proc.stdout.readline() == b"ready\n"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def forms(self) -> list[bytes]:
        """Every value in the forms a leak would take in a text report."""
        out = []
        for v in (self.binary, self.other, self.password):
            out += [v, v.hex().encode(), v.hex().upper().encode(), base64.b64encode(v)]
        return out


@pytest.fixture(scope="module")
def holder():
    h = Holder()
    yield h
    h.proc.kill()
    h.proc.wait()


@pytest.fixture(scope="module")
def core(holder, tmp_path_factory) -> Path:
    if shutil.which("gdb") is None:
        pytest.skip("gdb not found on PATH: cannot make a core (gcore)")
    snapshot = take_snapshot("gcore", holder.pid)
    dispose_snapshot(snapshot, tmp_path_factory.mktemp("core") / "kept", "holder")   # out of memory, onto disk
    return snapshot.path.rename(snapshot.path.with_name("holder.core"))


def scan(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["scan", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def results(out_dir: Path) -> dict:
    return read_results(out_dir / "results.json")


def assert_no_secret(holder: Holder, *texts: str | bytes, files: list[Path] = ()) -> None:
    blobs = [t.encode() if isinstance(t, str) else t for t in texts] + [p.read_bytes() for p in files]
    for blob in blobs:
        for form in holder.forms():
            assert form not in blob


def file_digest(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return hashlib.sha256(path.read_bytes()).hexdigest(), st.st_size, st.st_mtime_ns


# --- core files -----------------------------------------------------------------------------------------

@needs_gdb
def test_core_values_as_hex_text_and_file_are_found_and_attributed(core, holder, capsys, tmp_path):
    key_file = tmp_path / "other.bin"
    key_file.write_bytes(holder.other)
    out_dir = tmp_path / "r"
    before = file_digest(core)
    code, out, err = scan(capsys, core, "--secret-hex", holder.binary.hex(), "--label", "pw", "--secret",
                          holder.password.decode(), "--label", "api-key", "--secret-file", key_file,
                          "--out", out_dir, "--format", "json,html,md,junit,sarif")
    assert code == 1
    assert file_digest(core) == before                        # the user's core is never modified
    doc = results(out_dir)
    assert doc["exit_code"] == 1
    [run] = doc["runs"]
    assert (run["scenario"], run["target"], run["error"]) == ("holder.core", "core", None)
    assert run["source"] == str(core)
    by_subject = {v["subject"]: v for v in doc["verdicts"]}
    assert sorted(by_subject) == ["api-key", "pw", "secret"]
    for subject, v in by_subject.items():
        assert (v["checkpoint"], v["method"], v["expect"], v["outcome"]) == ("image", "core-file", "absent", "FAIL"), subject
        full_raw = [h for h in v["hits"] if h["full"] and h["encoding"] == "raw"]
        assert full_raw, subject
        # A core names only file mappings; heap copies are anonymous, the stack is named from the auxiliary vector.
        assert {h["region"]["kind"] for h in v["hits"]} <= {"anonymous", "stack"}
        assert any(h["region"]["kind"] == "anonymous" for h in full_raw), subject
        assert all("**" in h["context"]["bytes"] for h in v["hits"])
    assert any(n.startswith("named [stack] at ") for n in by_subject["secret"]["snapshot"]["notes"])
    assert by_subject["secret"]["snapshot"]["kept_path"] == str(core)
    html = (out_dir / "report.html").read_text()
    assert "holder.core" in html and "core-file" in html
    for name in ("summary.md", "junit.xml", "results.sarif"):
        assert (out_dir / name).stat().st_size > 0
    assert_no_secret(holder, out, err, files=list(out_dir.iterdir()))


@needs_gdb
def test_show_secrets_reveals_hexdump_bytes_only_when_asked(core, holder, capsys, tmp_path):
    code, _, _ = scan(capsys, core, "--secret-hex", holder.binary.hex(), "--show-secrets", "--out", tmp_path, "-q")
    assert code == 1
    doc = results(tmp_path)
    assert doc["secrets_shown"] is True
    contexts = " ".join(h["context"]["bytes"] for h in doc["verdicts"][0]["hits"])
    assert " ".join(f"{b:02x}" for b in holder.binary) in contexts


@needs_gdb
@pytest.mark.parametrize("control, outcome, code, reason", [
    ("in-image", "PASS", 0, "control seen: control 'control'"),
    (None, "INCONCLUSIVE", 3, "no control value was given, so absence proves nothing about this image: give --control-hex"),
    ("elsewhere", "INCONCLUSIVE", 3, "the control value was not seen either"),
])
def test_absent_needs_a_control_seen_in_the_image(core, holder, capsys, tmp_path, control, outcome, code, reason):
    absent = os.urandom(32).hex()
    control_args = {"in-image": ["--control-hex", holder.binary.hex()], None: [],
                    "elsewhere": ["--control-hex", os.urandom(32).hex()]}[control]
    got, _, _ = scan(capsys, core, "--secret-hex", absent, *control_args, "--out", tmp_path, "-q")
    assert got == code
    [v] = results(tmp_path)["verdicts"]
    assert (v["outcome"], v["hits"]) == (outcome, [])
    assert reason in v["reason"]
    assert v["canary_seen"] is {"in-image": True, None: None, "elsewhere": False}[control]


@needs_gdb
@pytest.mark.parametrize("expect, in_image, outcome, code", [
    ("observe", True, "PASS", 0), ("observe", False, "PASS", 0),
    ("present", True, "PASS", 0), ("present", False, "FAIL", 1),
])
def test_observe_and_present(core, holder, capsys, tmp_path, expect, in_image, outcome, code):
    value = holder.password.decode() if in_image else "not-in-the-image-" + os.urandom(8).hex()
    got, _, _ = scan(capsys, core, "--secret", value, "--expect", expect, "--out", tmp_path, "-q")
    [v] = results(tmp_path)["verdicts"]
    assert (got, v["outcome"], bool(v["hits"])) == (code, outcome, in_image)


@needs_gdb
def test_broken_inputs_are_one_line_errors_and_the_good_core_is_still_scanned(core, holder, capsys, tmp_path):
    truncated = tmp_path / "truncated.core"
    truncated.write_bytes(core.read_bytes()[: core.stat().st_size // 2])
    noise = tmp_path / "noise.bin"
    noise.write_bytes(b"\x00\x01" + os.urandom(4094))
    elf = Path(os.path.realpath(shutil.which("true")))
    missing = tmp_path / "missing.core"
    inputs = [truncated, noise, core, elf, missing]
    before = [file_digest(p) for p in (truncated, noise, core)]
    code, out, err = scan(capsys, *inputs, "--secret-hex", holder.binary.hex(), "--control-hex", holder.other.hex(),
                          "--out", tmp_path / "r", "--format", "json,html,md,junit,sarif", "-q")
    assert code == 1                                         # the good core's FAIL wins over the ERRORs
    lines = err.splitlines()
    assert len(lines) == 4, err
    expected = {truncated: "truncated: ", noise: "not an ELF file (bad magic b'\\x00\\x01", elf: "not a core file (e_type is ET_",
                missing: "no such file"}
    for path, what in expected.items():
        [line] = [x for x in lines if x.startswith(f"remanence: scan: {path}: ")]
        assert what in line
    assert "needs" in next(x for x in lines if str(truncated) in x)
    assert "starts with 0001" in next(x for x in lines if str(noise) in x)
    doc = results(tmp_path / "r")
    assert [r["scenario"] for r in doc["runs"]] == [p.name for p in inputs]
    outcomes = {v["scenario"]: v["outcome"] for v in doc["verdicts"]}
    assert outcomes == {"truncated.core": "ERROR", "noise.bin": "ERROR", "holder.core": "FAIL", elf.name: "ERROR",
                        "missing.core": "ERROR"}
    assert all(r["error"] for r in doc["runs"] if r["scenario"] != "holder.core")
    assert [file_digest(p) for p in (truncated, noise, core)] == before
    assert_no_secret(holder, out, err, files=list((tmp_path / "r").iterdir()))

    # Without a FAIL, errors give exit code 3.
    code, _, err = scan(capsys, core, missing, "--secret-hex", holder.binary.hex(), "--expect", "observe", "-q",
                        "--out", tmp_path / "r2")
    assert code == 3 and err == f"remanence: scan: {missing}: no such file\n"


def test_core_format_errors_say_what_the_file_is(tmp_path):
    cases = {
        "empty": (b"", "the file is empty"),
        "short": (b"\x7fELF\x02\x01\x01" + bytes(20), "truncated: the ELF header needs 64 bytes but the file has 27"),
        "zstd": (b"\x28\xb5\x2f\xfd" + bytes(100), "a zstd-compressed file; decompress it first (zstd -d)"),
        "noise": (b"\x12\x34\x56\x78\x9a\xbc\xde\xf0" + bytes(8), "starts with 123456789abcdef0"),
    }
    for name, (data, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(CoreFormatError) as info:
            read_core_layout(path)
        assert str(info.value).startswith(f"{path}: ") and message in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(CoreFormatError, match="an ELF (executable|shared object or PIE executable), not a core file"):
        read_core_layout(os.path.realpath(shutil.which("true")))


# --- live processes ----------------------------------------------------------------------------------

@pytest.fixture
def private_tmp(tmp_path, monkeypatch) -> Path:
    """Where the scan's private work folders go, to check that nothing is left behind."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def test_pid_procmem_finds_values_in_heap_or_anonymous_memory(holder, capsys, tmp_path, private_tmp):
    code, out, err = scan(capsys, "--pid", holder.pid, "--secret-hex", holder.binary.hex(), "--label", "pw",
                          "--secret", holder.password.decode(), "--out", tmp_path / "r", "--format", "json,html")
    assert code == 1
    doc = results(tmp_path / "r")
    [run] = doc["runs"]
    assert (run["scenario"], run["target"], run["pid"], run["source"]) == (f"pid:{holder.pid}", "pid", holder.pid,
                                                                           f"/proc/{holder.pid}")
    for v in doc["verdicts"]:
        assert (v["checkpoint"], v["method"], v["outcome"]) == ("live", "procmem", "FAIL")
        kinds = {h["region"]["kind"] for h in v["hits"] if h["full"]}
        assert kinds & {"heap", "anonymous"}, kinds
        assert v["snapshot"]["kept_path"] is None             # our snapshot file was deleted
    assert any(n.startswith("procmem: automatic control the process's own command line") and "seen in [stack]" in n
               for n in run["notes"])
    assert list(private_tmp.iterdir()) == []
    assert (tmp_path / "r" / "report.html").exists()
    assert_no_secret(holder, out, err, files=list((tmp_path / "r").iterdir()))
    assert os.waitpid(holder.pid, os.WNOHANG) == (0, 0)         # still running: resumed after the snapshot


def test_pid_absent_passes_on_the_automatic_control_only(holder, capsys, tmp_path, private_tmp):
    absent = os.urandom(32).hex()
    code, _, _ = scan(capsys, "--pid", holder.pid, "--secret-hex", absent, "--out", tmp_path / "a", "-q")
    [v] = results(tmp_path / "a")["verdicts"]
    assert (code, v["outcome"], v["canary_seen"]) == (0, "PASS", True)
    assert f"control seen: the process's own command line (the first 64 bytes of /proc/{holder.pid}/cmdline" in v["reason"]
    assert "[stack]" in v["reason"]
    code, _, _ = scan(capsys, "--pid", holder.pid, "--secret-hex", absent, "--no-auto-control", "--out", tmp_path / "b", "-q")
    [v] = results(tmp_path / "b")["verdicts"]
    assert (code, v["outcome"]) == (3, "INCONCLUSIVE") and "give --control-hex" in v["reason"]


@needs_gdb
def test_pid_gcore_and_kept_snapshots(holder, capsys, tmp_path, private_tmp):
    out_dir = tmp_path / "r"
    code, _, _ = scan(capsys, "--pid", holder.pid, "--method", "gcore,procmem", "--secret-hex", holder.binary.hex(),
                      "--keep-snapshots", "--out", out_dir, "-q")
    assert code == 1
    doc = results(out_dir)
    assert [(v["method"], v["outcome"]) for v in doc["verdicts"]] == [("gcore", "FAIL"), ("procmem", "FAIL")]
    kept = sorted((out_dir / "snapshots" / f"pid-{holder.pid}").iterdir())
    assert [p.name for p in kept] == ["live.gcore.core", "live.procmem.raw"]
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in kept)
    assert stat.S_IMODE((out_dir / "snapshots").stat().st_mode) == 0o700
    assert {v["snapshot"]["kept_path"] for v in doc["verdicts"]} == {str(p) for p in kept}
    assert list(private_tmp.iterdir()) == []


def test_missing_pid_is_an_error_verdict(capsys, tmp_path):
    proc = subprocess.Popen(["true"])
    proc.wait()                                              # a pid that existed and is gone
    code, out, err = scan(capsys, "--pid", proc.pid, "--secret-hex", os.urandom(16).hex(), "--out", tmp_path, "-q")
    assert code == 3
    assert err == f"remanence: scan: pid {proc.pid}: no such process\n"
    [v] = results(tmp_path)["verdicts"]
    assert (v["outcome"], v["reason"]) == ("ERROR", f"pid {proc.pid}: no such process")


# --- values and usage -----------------------------------------------------------------------------------

@needs_gdb
def test_secret_from_stdin_in_a_subprocess(core, holder, tmp_path):
    """--secret-file - keeps the value out of argv; a trailing newline is kept and warned about."""
    command = [sys.executable, "-m", "remanence", "scan", "--secret-file", "-", str(core), "--out", str(tmp_path), "-q"]
    done = subprocess.run(command, input=holder.password, capture_output=True, cwd=PROJECT_ROOT, timeout=120)
    assert done.returncode == 1, done.stderr
    assert done.stderr == b""
    [v] = results(tmp_path)["verdicts"]
    assert v["outcome"] == "FAIL" and any(h["full"] for h in v["hits"])
    done = subprocess.run(command, input=holder.password + b"\n", capture_output=True, cwd=PROJECT_ROOT, timeout=120)
    # With the newline the whole value is in no memory; what is found are 16-byte fragments of it (still a FAIL).
    assert done.returncode == 1, done.stderr
    assert done.stderr.decode().startswith("remanence: scan: warning: secret 'secret' (stdin) ends with a newline byte")
    [v] = results(tmp_path)["verdicts"]
    assert v["hits"] and not any(h["full"] for h in v["hits"])
    assert {tuple(h["fragment"]) for h in v["hits"]} == {(0, 20)}          # the fragments merged: all but the newline
    assert_no_secret(holder, done.stdout, done.stderr, files=list(tmp_path.iterdir()))


@pytest.mark.parametrize("args, message", [
    ([], "nothing to scan: give core files, or --pid PID"),
    (["x.core"], "nothing to look for"),
    (["x.core", "--secret-hex", "abcdefgh0123456789"], "--secret-hex: not a hex string (a character that is not a hex digit; 18 characters given)"),
    (["x.core", "--secret-hex", "0011223344556677889"], "an odd number of digits"),
    (["x.core", "--secret", "xQz7k"], "secret 'secret' (text) is 5 byte(s); at least 8 are needed"),
    (["x.core", "--secret-hex", "00112233445566778899", "--label", "k"], "--label NAME must come right before"),
    (["x.core", "--label", "k", "--secret", "one value here", "--label", "k", "--secret", "another value"], "label 'k' is used twice"),
    (["x.core", "--secret", "same value 123", "--control", "same value 123"], "'secret' and 'control' are the same value"),
    (["x.core", "--label", "bad label", "--secret", "one value here"], "--label 'bad label': a label is"),
    (["x.core", "--secret-file", "-", "--control-file", "-"], "only one --secret-file/--control-file can read standard input"),
    (["x.core", "--secret-file", "/nonexistent/key"], "--secret-file /nonexistent/key: cannot read: No such file or directory"),
    (["x.core", "--secret", "one value here", "--method", "gcore"], "--method applies to --pid only"),
    (["--pid", str(os.getpid()), "--secret", "one value here"], "is remanence itself"),
])
def test_usage_errors_exit_2_without_echoing_values(capsys, args, message):
    code, out, err = scan(capsys, *args)
    assert code == 2
    assert err.startswith("remanence: scan: ") and message in err and err.count("\n") == 1
    for value in ("abcdefgh0123456789", "0011223344556677889", "xQz7k", "one value here", "same value 123"):
        assert value not in err


def test_argparse_rejects_bad_pid_and_method(capsys):
    for args in (["--pid", "abc"], ["--pid", "0"], ["--pid", "1", "--method", "kernel-core"]):
        assert main(["scan", *args, "--secret", "one value here"]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_load_values_labels_and_text_detection(tmp_path):
    text_file, binary_file = tmp_path / "t", tmp_path / "b"
    text_file.write_bytes("pässwörd-1234".encode())
    binary_file.write_bytes(b"\xff\xfe" + os.urandom(14))
    warnings = []
    secrets, controls = load_values([ValueArg("secret", "file", str(text_file)), ValueArg("secret", "file", str(binary_file)),
                                     ValueArg("secret", "hex", "00:11:22:33 44:55:66:77", "mac"),
                                     ValueArg("control", "text", "a control value")], None, warnings.append)
    assert [(v.secret.label, v.secret.textual) for v in secrets] == [("secret", True), ("secret-2", False), ("mac", False)]
    assert secrets[2].secret.value == bytes.fromhex("0011223344556677")
    assert [(v.secret.label, v.secret.textual, v.origin) for v in controls] == [("control", True, "text")]
    assert warnings == []
    with pytest.raises(AdhocUsageError, match="at most 4096"):
        load_values([ValueArg("secret", "hex", "00" * 4097)], None, warnings.append)
