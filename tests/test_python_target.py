"""What only the Python target (targets/python/target.py, PyNaCl) does, beyond the protocol rules every target
follows (test_protocol_conformance.py): what its derived values are, and where pymalloc, cffi and PyNaCl leave
the key and them.

Everything here runs the real program as the runner builds it (a venv of its own with the pinned requirements,
target.py and the SDK it imports beside it, run as `<venv>/bin/python -E -s target.py <scenario>`), driven over a
socketpair passed as fd 3, as the harness does. No other harness code is used.
"""

from __future__ import annotations

import subprocess

from protocol_targets import TIMEOUT, converse, program
from target_driver import fresh, read_mem, readable_memory_contains, smaps_entry


def kx_seed_keypair(seed: bytes) -> tuple[bytes, bytes]:
    """(public, secret) of crypto_kx_seed_keypair(seed), computed by PyNaCl in the target's venv."""
    r = subprocess.run([program("python").command[0], "-E", "-s", "-c",
                        "import sys, nacl.bindings as b; pk, sk = b.crypto_kx_seed_keypair(sys.stdin.buffer.read());"
                        "sys.stdout.write((pk + sk).hex())"], input=seed, capture_output=True, timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr
    both = bytes.fromhex(r.stdout.decode())
    return both[:32], both[32:]


# --------------------------------------------------------------------- tests


def test_derived_values_are_what_they_claim():
    """kx_secret_key / client_secret_key are crypto_kx_seed_keypair(secret)'s secret key."""
    secret = fresh(32)
    _, expected_sk = kx_seed_keypair(secret)
    for scenario, label in (("py.bytearray.wiped", "kx_secret_key"), ("py.kx.xchacha", "client_secret_key")):
        run = converse("python", scenario, secret, fresh(16))
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


def run_with_probes(scenario, secret=None):
    secret = secret or fresh(32)
    run = converse("python", scenario, secret, fresh(32),
                   lambda t, name, addr, probes: _probe_memory(t, name, addr, probes, secret))
    assert run.rc == 0, run.stderr
    return secret, run


def test_privatekey_dropped_leaves_the_bytes_in_freed_memory():
    secret, run = run_with_probes("py.privatekey.dropped")
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


def test_bytearray_wiped_leaves_nothing():
    secret, run = run_with_probes("py.bytearray.wiped")
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


def test_bytearray_bytes_copy_survives_the_wipe():
    secret, run = run_with_probes("py.bytearray.bytes_copy")
    p = run.probes
    addr = int(run.checkpoints[0][1], 16)
    assert p["in_use"]["at_addr"] == secret
    assert len(p["in_use"]["secret"]) == 2 and (addr, "anon") in p["in_use"]["secret"]
    [copy] = [hit for hit in p["in_use"]["secret"] if hit[0] != addr]
    assert p["wiped"]["at_addr"] == bytes(32)
    assert p["wiped"]["secret"] == [copy]     # the PrivateKey's bytes(buf), beyond the wipe's reach
    assert p["dropped"]["secret"] == [copy]   # freed, unwiped


def test_kx_values_survive_the_drop():
    secret, run = run_with_probes("py.kx.xchacha")
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
