"""AES key schedules: FIPS-197 key expansion, and the scanner finding a schedule whole or partly wiped."""
import contextlib
import io
import json
import random
import shutil

import pytest

from remanence.cli import main
from remanence.model import Secret
from remanence.plan import cpu_lacks, make_plan
from remanence.scenario import ScenarioError, load_scenario
from remanence.targets import PROJECT_ROOT
from remanence.scan.aes_schedule import expand_key, word_swapped
from remanence.scan.encodings import fragment_text, patterns_for
from remanence.scan.engine import scan_snapshot

from suite_run import require
from test_scan import FakeImage, hit_keys

# FIPS-197 Appendix A: the cipher key and every word w[0..] of its expansion.
FIPS_197_A1_KEY = "2b7e151628aed2a6abf7158809cf4f3c"
FIPS_197_A1_WORDS = """
    2b7e1516 28aed2a6 abf71588 09cf4f3c a0fafe17 88542cb1 23a33939 2a6c7605 f2c295f2 7a96b943 5935807a 7359f67f
    3d80477d 4716fe3e 1e237e44 6d7a883b ef44a541 a8525b7f b671253b db0bad00 d4d1c6f8 7c839d87 caf2b8bc 11f915bc
    6d88a37a 110b3efd dbf98641 ca0093fd 4e54f70e 5f5fc9f3 84a64fb2 4ea6dc4f ead27321 b58dbad2 312bf560 7f8d292f
    ac7766f3 19fadc21 28d12941 575c006e d014f9a8 c9ee2589 e13f0cc8 b6630ca6"""
FIPS_197_A2_KEY = "8e73b0f7da0e6452c810f32b809079e562f8ead2522c6b7b"
FIPS_197_A2_WORDS = """
    8e73b0f7 da0e6452 c810f32b 809079e5 62f8ead2 522c6b7b fe0c91f7 2402f5a5 ec12068e 6c827f6b 0e7a95b9 5c56fec2
    4db7b4bd 69b54118 85a74796 e92538fd e75fad44 bb095386 485af057 21efb14f a448f6d9 4d6dce24 aa326360 113b30e6
    a25e7ed5 83b1cf9a 27f93943 6a94f767 c0a69407 d19da4e1 ec1786eb 6fa64971 485f7032 22cb8755 e26d1352 33f0b7b3
    40beeb28 2f18a259 6747d26b 458c553e a7e1466c 9411f1df 821f750a ad07d753 ca400538 8fcc5006 282d166a bc3ce7b5
    e98ba06f 448c773c 8ecc7204 01002202"""
FIPS_197_A3_KEY = "603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4"
FIPS_197_A3_WORDS = """
    603deb10 15ca71be 2b73aef0 857d7781 1f352c07 3b6108d7 2d9810a3 0914dff4 9ba35411 8e6925af a51a8b5f 2067fcde
    a8b09c1a 93d194cd be49846e b75d5b9a d59aecb8 5bf3c917 fee94248 de8ebe96 b5a9328a 2678a647 98312229 2f6c79b3
    812c81ad dadf48ba 24360af2 fab8b464 98c5bfc9 bebd198e 268c3ba7 09e04214 68007bac b2df3316 96e939e4 6c518d80
    c814e204 76a9fb8a 5025c02d 59c58239 de136967 6ccc5a71 fa256395 9674ee15 5886ca5d 2e2f31d7 7e0af1fa 27cf73c3
    749c47ab 18501dda e2757e4f 7401905a cafaaae3 e4d59b34 9adf6ace bd10190d fe4890d1 e6188d0b 046df344 706c631e"""

rng = random.Random(197)


@pytest.mark.parametrize("key, words", [(FIPS_197_A1_KEY, FIPS_197_A1_WORDS), (FIPS_197_A2_KEY, FIPS_197_A2_WORDS),
                                        (FIPS_197_A3_KEY, FIPS_197_A3_WORDS)], ids=["A.1", "A.2", "A.3"])
def test_key_expansion_matches_fips_197_appendix_a(key, words):
    assert expand_key(bytes.fromhex(key)).hex() == "".join(words.split())


def test_word_swapped_reverses_each_word():
    assert word_swapped(bytes.fromhex("0102030405060708")) == bytes.fromhex("0403020108070605")


def test_only_aes_key_lengths_have_schedules():
    for length, encoding, windows in ((16, "aes128-schedule", 9), (24, "aes192-schedule", 10),
                                      (32, "aes256-schedule", 12)):
        patterns = [p for p in patterns_for(Secret("s", rng.randbytes(length))) if p.encoding.startswith("aes")]
        for form in (encoding, encoding + "-u32"):
            assert len([p for p in patterns if p.encoding == form and p.fragment is None]) == 1
            fragments = [p.fragment for p in patterns if p.encoding == form and p.fragment]
            assert len(fragments) == windows and all(start >= length for start, _ in fragments)
    for length in (15, 20, 33):
        assert not [p for p in patterns_for(Secret("s", rng.randbytes(length))) if p.encoding.startswith("aes")]


def schedule_scan(tmp_path, secret: Secret, planted: bytes):
    image = FakeImage(20_000)
    heap = image.region("[heap]", 0x5555_0000, 8192, 4096)
    image.plant(heap, 1000, planted)
    return heap, scan_snapshot(image.snapshot(tmp_path), [secret])


@pytest.mark.parametrize("length", [16, 24, 32])
def test_whole_schedule_is_one_hit(tmp_path, length):
    secret = Secret("secret", rng.randbytes(length))
    schedule = expand_key(secret.value)
    heap, result = schedule_scan(tmp_path, secret, schedule)
    # Not also the raw key it begins with, nor its windows.
    assert hit_keys(result) == [("secret", f"aes{8 * length}-schedule", "[heap]", heap.start + 1000,
                                 heap.file_offset + 1000, len(schedule), None)]


def test_word_swapped_schedule_has_its_own_name(tmp_path):
    secret = Secret("secret", rng.randbytes(32))
    heap, result = schedule_scan(tmp_path, secret, word_swapped(expand_key(secret.value)))
    assert [(h.encoding, h.length, h.fragment) for h in result.hits] == [("aes256-schedule-u32", 240, None)]


def test_partly_wiped_schedule_is_one_window_hit(tmp_path):
    secret = Secret("secret", rng.randbytes(32))
    schedule = bytearray(expand_key(secret.value))
    schedule[:80] = bytes(80)          # the key and round keys 2-4 wiped: round keys 5-14 survive
    schedule[200] ^= 0xFF              # and one byte of round key 12 changed
    heap, result = schedule_scan(tmp_path, secret, bytes(schedule))
    assert hit_keys(result) == [
        ("secret", "aes256-schedule", "[heap]", heap.start + 1000 + 80, heap.file_offset + 1000 + 80, 112, (80, 192)),
        ("secret", "aes256-schedule", "[heap]", heap.start + 1000 + 208, heap.file_offset + 1000 + 208, 32, (208, 240))]


def test_raw_secret_is_not_a_schedule_window(tmp_path):
    secret = Secret("secret", rng.randbytes(32))
    heap, result = schedule_scan(tmp_path, secret, secret.value)
    assert [(h.encoding, h.fragment) for h in result.hits] == [("raw", None)]


def test_key_left_beside_a_wiped_schedule_is_still_the_raw_secret(tmp_path):
    secret = Secret("secret", rng.randbytes(16))
    schedule = bytearray(expand_key(secret.value))
    schedule[16:48] = bytes(32)        # round keys 1-2 wiped: the key and round keys 3-10 are separate copies
    heap, result = schedule_scan(tmp_path, secret, bytes(schedule))
    assert [(h.encoding, h.fragment) for h in result.hits] == [("raw", None), ("aes128-schedule", (48, 176))]


# --- end to end: real libsodium and Go crypto/aes, through the command line ---------------------------------------

def run_scenarios(tmp_path, language: str, names: list[str]) -> tuple[int, dict]:
    folder = tmp_path / "scenarios"
    folder.mkdir()
    for name in names:
        shutil.copy(PROJECT_ROOT / "scenarios" / language / f"{name}.toml", folder)
    require(language, "procmem", "gcore")
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        code = main(["run", "--scenarios", str(folder), "--out", str(tmp_path / "out"), "--format", "json",
                     "--repeat", "1"])
    return code, json.loads((tmp_path / "out" / "results.json").read_text())


def schedule_hits(doc: dict, scenario: str, checkpoint: str) -> set[tuple[str, str, bool]]:
    return {(v["method"], h["encoding"], h["in_intended_region"]) for v in doc["verdicts"]
            if (v["scenario"], v["checkpoint"]) == (scenario, checkpoint) for h in v["hits"] if h["full"]
            and h["encoding"].startswith("aes")}


@pytest.mark.e2e
def test_libsodium_aes256gcm_state_keeps_the_schedule_of_a_wiped_key(tmp_path):
    if cpu_lacks(("aes", "pclmulqdq")):
        pytest.skip("this CPU has no AES-NI: libsodium's aes256gcm is unavailable")
    code, doc = run_scenarios(tmp_path, "c", ["sodium.aes256gcm.state_kept", "sodium.aes256gcm.state_wiped"])
    assert [(v["scenario"], v["checkpoint"], v["method"], v["reason"]) for v in doc["verdicts"]
            if v["outcome"] != "PASS"] == [] and code == 0
    # Found as the schedule itself, in the state, by every method; the raw key it begins with is not a second hit.
    assert schedule_hits(doc, "sodium.aes256gcm.state_kept", "key_wiped") == {
        (m, "aes256-schedule", True) for m in ("procmem", "gcore", "kernel-core")}
    assert not [h for v in doc["verdicts"] if v["scenario"] == "sodium.aes256gcm.state_kept"
                and v["checkpoint"] == "key_wiped" for h in v["hits"] if h["encoding"] == "raw"]


@pytest.mark.e2e
def test_go_aes_cipher_keeps_the_schedule_until_secret_do_frees_it(tmp_path):
    code, doc = run_scenarios(tmp_path, "go", ["go.aes.cipher_kept", "go.aes.cipher_dropped"])
    assert [(v["scenario"], v["checkpoint"], v["method"], v["reason"]) for v in doc["verdicts"]
            if v["outcome"] != "PASS"] == [] and code == 0
    assert schedule_hits(doc, "go.aes.cipher_kept", "key_wiped") == {
        (m, "aes256-schedule", True) for m in ("procmem", "gcore")}


def test_a_missing_cpu_flag_skips_the_scenario_with_the_reason(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 pclmulqdq\n")
    assert cpu_lacks(("aes", "pclmulqdq"), cpuinfo) == f"this CPU lacks aes (flags in {cpuinfo}), which the scenario requires"
    assert cpu_lacks(("sse2",), cpuinfo) is None and cpu_lacks((), tmp_path / "missing") is None
    scenario = tmp_path / "needs.toml"
    scenario.write_text((PROJECT_ROOT / "scenarios" / "c" / "sodium.aes256gcm.state_kept.toml").read_text()
                        .replace('requires_cpu = ["aes", "pclmulqdq"]', 'requires_cpu = ["no_such_flag"]'))
    require("c")
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        code = main(["run", str(scenario), "--out", str(tmp_path / "out"), "--format", "json", "--repeat", "1"])
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    assert code == 3 and {(v["outcome"], v["reason"]) for v in doc["verdicts"]} == {
        ("SKIP", "this CPU lacks no_such_flag (flags in /proc/cpuinfo), which the scenario requires")}


def test_a_cpu_flag_must_be_spelled_as_cpuinfo_does(tmp_path):
    scenario = tmp_path / "bad.toml"
    scenario.write_text((PROJECT_ROOT / "scenarios" / "c" / "sodium.aes256gcm.state_kept.toml").read_text()
                        .replace('requires_cpu = ["aes", "pclmulqdq"]', 'requires_cpu = ["AES-NI"]'))
    with pytest.raises(ScenarioError, match=r"requires_cpu\[0\]: expected a CPU flag"):
        load_scenario(scenario)


def test_reports_name_a_schedule_window_by_its_round_keys():
    assert fragment_text("aes256-schedule", (80, 192)) == "round keys 5-11 [80:192)"
    assert fragment_text("raw", [16, 32]) == "fragment [16:32)"


def test_a_program_scenario_needing_a_cpu_flag_this_cpu_lacks_is_skipped_unbuilt(tmp_path):
    (tmp_path / "p.toml").write_text('''
name = "p.aes"
target = "program"
methods = ["procmem"]
requires_cpu = ["no_such_flag"]

[program]
argv = ["./never-built"]
build = ["false"]

[[checkpoints]]
name = "in_use"
expect = "present"
why = "the key is live"
''')
    [run] = make_plan([load_scenario(tmp_path / "p.toml")]).runs
    assert (run.program, run.error_reason) == (None, None)
    assert run.skip_reason == "this CPU lacks no_such_flag (flags in /proc/cpuinfo), which the scenario requires"
