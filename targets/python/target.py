"""remanence Python target: PyNaCl scenarios speaking the protocol of ../PROTOCOL.md over fd 3.

Run as `<venv>/bin/python -E -s target.py <scenario>` (PyNaCl pinned in requirements.txt);
`--list` prints the scenario names. The protocol is remanence.sdk (harness/sdk.py), which the harness
copies next to this file as the package `remanence`; it builds control lines in preallocated buffers so
that the checkpoint path allocates nothing of a key's size class (see README.md).
"""

from __future__ import annotations

from remanence.sdk import (address_of, checkpoint, collect, derived, fail, main, need_secret_len, read_secret_bytes,
                           read_secret_into, scenario)

# ------------------------------------------------------------------------------ PyNaCl

try:
    import nacl
    import nacl.bindings as nb
    from nacl._sodium import ffi as sodium_ffi, lib as sodium_lib
    from nacl.public import Box, PrivateKey, PublicKey
    NACL_ERROR = None
except ImportError as e:  # reported after `ready 1` (exit 70): the venv lacks PyNaCl
    NACL_ERROR = f"PyNaCl is not importable: {e}"


def sodium_memzero(buf) -> None:
    """libsodium's sodium_memzero over a writable buffer, in place (ffi.from_buffer: no copy)."""
    sodium_lib.sodium_memzero(sodium_ffi.from_buffer(buf, require_writable=True), len(buf))


# ------------------------------------------------------------------------------ scenarios

@scenario("py.privatekey.dropped")
def privatekey_dropped() -> None:
    """A nacl.public.PrivateKey made from the secret (32 bytes, in an immutable bytes object, which
    the PrivateKey keeps as its _private_key: no copy) and used for a Box (crypto_box_beforenm:
    the shared key, a bytes object); everything dropped with del + gc.collect()."""
    need_secret_len(PrivateKey.SIZE)
    peer = PublicKey(nb.crypto_scalarmult_base(nb.randombytes(32)))  # a peer's public key, not secret
    seed = read_secret_bytes(PrivateKey.SIZE)
    key = PrivateKey(seed)
    box = Box(key, peer)
    shared = box.shared_key()
    addr = address_of(seed)
    derived("box_shared_key", shared)
    checkpoint("in_use", addr)
    del key, box, shared, seed
    collect()
    checkpoint("dropped", addr)


@scenario("py.bytearray.wiped")
def bytearray_wiped() -> None:
    """The secret read with recv_into straight into a bytearray and used through libsodium with
    ffi.from_buffer (crypto_kx_seed_keypair writes the derived X25519 secret key into a second
    bytearray): PyNaCl's own bindings insist on bytes, which would copy. Both bytearrays are wiped
    with sodium_memzero, then dropped."""
    need_secret_len(32)
    seed = bytearray(32)
    pk, sk = bytearray(32), bytearray(32)
    read_secret_into(seed)
    rc = sodium_lib.crypto_kx_seed_keypair(sodium_ffi.from_buffer(pk, require_writable=True),
                                           sodium_ffi.from_buffer(sk, require_writable=True),
                                           sodium_ffi.from_buffer(seed))
    if rc != 0:
        fail("crypto_kx_seed_keypair failed")
    addr = address_of(seed)
    derived("kx_secret_key", sk)
    checkpoint("in_use", addr)
    sodium_memzero(seed)
    sodium_memzero(sk)
    checkpoint("wiped", addr)
    del seed, sk, pk
    collect()
    checkpoint("dropped", addr)


@scenario("py.bytearray.bytes_copy")
def bytearray_bytes_copy() -> None:
    """As py.bytearray.wiped, but the key is handed to PyNaCl's high-level API the usual way:
    PrivateKey(bytes(buf)). PyNaCl accepts only bytes, so bytes(buf) makes an immutable copy that
    the PrivateKey keeps; wiping the bytearray cannot reach it, and dropping the PrivateKey frees
    it unwiped."""
    need_secret_len(PrivateKey.SIZE)
    buf = bytearray(PrivateKey.SIZE)
    read_secret_into(buf)
    key = PrivateKey(bytes(buf))
    addr = address_of(buf)
    checkpoint("in_use", addr)
    sodium_memzero(buf)
    checkpoint("wiped", addr)
    del key
    collect()
    checkpoint("dropped", addr)


@scenario("py.kx.xchacha")
def kx_xchacha() -> None:
    """crypto_kx between a client whose key pair is seeded by the secret (crypto_kx_seed_keypair)
    and a server with a fresh key pair, then one XChaCha20-Poly1305 message each way with the
    session keys; all values are PyNaCl's bytes. Derived values: the client's X25519 secret key,
    its rx/tx session keys (the server's tx/rx: same values) and the two plaintexts."""
    need_secret_len(nb.crypto_kx_SEED_BYTES)
    seed = read_secret_bytes(nb.crypto_kx_SEED_BYTES)
    client_pk, client_sk = nb.crypto_kx_seed_keypair(seed)
    server_pk, server_sk = nb.crypto_kx_keypair()
    client_rx, client_tx = nb.crypto_kx_client_session_keys(client_pk, client_sk, server_pk)
    server_rx, server_tx = nb.crypto_kx_server_session_keys(server_pk, server_sk, client_pk)
    if client_rx != server_tx or client_tx != server_rx:
        fail("crypto_kx session keys do not match")
    aad = b"remanence py.kx.xchacha"
    plain_c2s, plain_s2c = nb.randombytes(48), nb.randombytes(48)
    nonce_c2s, nonce_s2c = nb.randombytes(24), nb.randombytes(24)
    sealed_c2s = nb.crypto_aead_xchacha20poly1305_ietf_encrypt(plain_c2s, aad, nonce_c2s, client_tx)
    opened_c2s = nb.crypto_aead_xchacha20poly1305_ietf_decrypt(sealed_c2s, aad, nonce_c2s, server_rx)
    sealed_s2c = nb.crypto_aead_xchacha20poly1305_ietf_encrypt(plain_s2c, aad, nonce_s2c, server_tx)
    opened_s2c = nb.crypto_aead_xchacha20poly1305_ietf_decrypt(sealed_s2c, aad, nonce_s2c, client_rx)
    if opened_c2s != plain_c2s or opened_s2c != plain_s2c:
        fail("XChaCha20-Poly1305 round trip failed")
    addr = address_of(seed)
    derived("client_secret_key", client_sk)
    derived("session_rx", client_rx)
    derived("session_tx", client_tx)
    derived("plaintext_c2s", plain_c2s)
    derived("plaintext_s2c", plain_s2c)
    checkpoint("exchanged", addr)
    del seed, client_pk, client_sk, server_pk, server_sk, client_rx, client_tx, server_rx, server_tx
    del plain_c2s, plain_s2c, opened_c2s, opened_s2c, sealed_c2s, sealed_s2c, nonce_c2s, nonce_s2c
    collect()
    checkpoint("dropped", addr)


if __name__ == "__main__":
    main(problem=NACL_ERROR)
