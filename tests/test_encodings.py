import base64
import os

import pytest

from remanence.model import Secret
from remanence.scan.encodings import MIN_NEEDLE_LEN, Pattern, base64_aligned, is_schedule, patterns_for

VALUE = bytes(range(32))          # contains NUL and bytes that differ between base64 alphabets
SECRET = Secret("secret", VALUE)


def by_encoding(patterns: list[Pattern]) -> dict[str, bytes]:
    return {p.encoding: p.needle for p in patterns if p.fragment is None}


def test_raw_and_hex_vectors():
    forms = by_encoding(patterns_for(SECRET))
    assert forms["raw"] == VALUE
    assert forms["hex-lower"] == b"000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
    assert forms["hex-upper"] == b"000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F"


def test_base64_alignment_zero_known_vector():
    # b64(00 01 .. 1f) = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=": 32 bytes = 256 bits -> 42 whole chars
    assert by_encoding(patterns_for(SECRET))["base64"] == b"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh"


@pytest.mark.parametrize("value", [VALUE, bytes([0xFB, 0xFF, 0xFE]) * 7, os.urandom(33), os.urandom(40)],
                         ids=["fixed", "high-bytes", "random-33", "random-40"])   # xdist workers must agree on ids
@pytest.mark.parametrize("offset", [0, 1, 2])
@pytest.mark.parametrize("alphabet,altchars", [("base64", None), ("base64url", b"-_")])
def test_base64_needle_found_inside_longer_stream(value, offset, alphabet, altchars):
    forms = by_encoding(patterns_for(Secret("secret", value)))
    name = alphabet if offset == 0 else f"{alphabet}+{offset}"
    needle = forms.get(name) or forms[name.replace("base64url", "base64")]   # url form dropped when equal
    for trial in range(5):
        prefix = os.urandom(3 * (trial + 1) + offset)
        stream = base64.b64encode(prefix + value + os.urandom(trial), altchars=altchars)
        assert needle in stream
    # Exactly the fully determined characters, no more: bits [8o, 8(o+n)) hold floor - ceil chars.
    assert len(needle) == 8 * (offset + len(value)) // 6 - -(-8 * offset // 6)


def test_base64url_present_only_when_it_differs():
    forms = by_encoding(patterns_for(Secret("s", bytes([0xFB, 0xFF, 0xFE]) * 7)))   # encodes to '+' and '/'
    assert b"+" in forms["base64"] or b"/" in forms["base64"]
    assert forms["base64url"] == forms["base64"].replace(b"+", b"-").replace(b"/", b"_")
    plain = by_encoding(patterns_for(Secret("s", b"ABCDEFGHIJKLMNOP")))      # no '+' or '/' anywhere
    assert not any(name.startswith("base64url") for name in plain)


def test_base64_aligned_drops_partial_characters():
    # One byte at offset 0 covers bits [0, 8): only char 0 (bits 0..6) is whole.
    assert base64_aligned(b"\xff", 0) == b"/"
    assert base64_aligned(b"\xff", 1) == b""           # bits [8, 16): chars 1 and 2 straddle both ends


def test_utf16_of_textual_forms():
    forms = by_encoding(patterns_for(SECRET))
    assert forms["utf16le:hex-lower"] == forms["hex-lower"].decode().encode("utf-16-le")
    assert forms["utf16be:hex-upper"] == forms["hex-upper"].decode().encode("utf-16-be")
    assert forms["utf16le:base64"] == forms["base64"].decode().encode("utf-16-le")
    assert "utf16le:raw" not in forms                   # binary secret: no UTF-16 of raw
    password = by_encoding(patterns_for(Secret("pw", b"correct horse battery", textual=True)))
    assert password["utf16le:raw"] == "correct horse battery".encode("utf-16-le")
    assert password["utf16be:raw"] == "correct horse battery".encode("utf-16-be")


def test_fragments_cover_every_window():
    fragments = [p for p in patterns_for(SECRET) if p.fragment is not None and not is_schedule(p.encoding)]
    windows = len(VALUE) - 16 + 1
    assert len(fragments) == 3 * windows          # raw, hex-lower and hex-upper of every 16-byte window
    expected = {"raw": lambda w: w, "hex-lower": lambda w: w.hex().encode(), "hex-upper": lambda w: w.hex().upper().encode()}
    for p in fragments:
        start, end = p.fragment
        assert end - start == 16 and p.needle == expected[p.encoding](VALUE[start:end])
    assert {p.fragment for p in fragments if p.encoding == "hex-upper"} == {(i, i + 16) for i in range(windows)}
    assert not [p for p in patterns_for(Secret("s", os.urandom(16))) if p.fragment and not is_schedule(p.encoding)]
    assert len([p for p in patterns_for(Secret("s", os.urandom(40)), fragment_size=24) if p.fragment]) == 3 * 17


def test_nul_bytes_preserved_in_needles():
    value = b"\x00" * 4 + b"secret\x00\x00payload" + b"\x00" * 4
    forms = by_encoding(patterns_for(Secret("s", value)))
    assert forms["raw"] == value and len(forms["raw"]) == len(value)


def test_identical_needles_merged_keeping_first_name():
    # Hex of bytes whose nibbles are all digits has no letters: lower == upper.
    patterns = patterns_for(Secret("s", bytes([0x12, 0x34, 0x56, 0x78, 0x90, 0x12, 0x34, 0x56])))
    names = [p.encoding for p in patterns]
    assert "hex-lower" in names and "hex-upper" not in names
    needles = [p.needle for p in patterns]
    assert len(needles) == len(set(needles))
    # A repetitive secret repeats its windows: only the first of equal fragments is kept.
    repeated = [p for p in patterns_for(Secret("s", b"ab" * 20)) if p.fragment]
    # (its hex has no letters: upper and lower case are one needle)
    assert [(p.encoding, p.fragment) for p in repeated] == [
        (name, window) for window in ((0, 16), (1, 17)) for name in ("raw", "hex-lower")]


def test_short_needles_dropped():
    assert all(len(p.needle) >= MIN_NEEDLE_LEN for p in patterns_for(Secret("s", b"abc")))
    assert patterns_for(Secret("s", b"")) == []
    forms = by_encoding(patterns_for(Secret("s", b"abcd")))
    assert "raw" not in forms and forms["hex-lower"] == b"61626364"


def test_needle_kept_out_of_repr():
    pattern = patterns_for(Secret("s", b"hunter2-hunter2-hunter2"))[0]
    assert "hunter2" not in repr(pattern) and "s" in repr(pattern)
