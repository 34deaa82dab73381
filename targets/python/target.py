"""remanence Python target: PyNaCl scenarios speaking the protocol of ../PROTOCOL.md over fd 3.

Run as `<venv>/bin/python -E -s target.py <scenario>` (PyNaCl pinned in requirements.txt);
`--list` prints the scenario names. One file on purpose: the harness copies it next to its venv.

The protocol layer is written so that it disturbs the memory under test as little as possible:
control lines are built in a preallocated bytearray (no str formatting, no new bytes object),
written with os.write on a memoryview, and replies are read one byte at a time into a
preallocated buffer with socket.recv_into (its Py_buffer lives on the C stack). Freed pymalloc
blocks are handed out again last-in first-out, so an allocation of the right size class in the
checkpoint path would overwrite exactly the freshest stale copy of a key: os.readv, for one,
allocates its Py_buffer array (80 bytes per buffer) with PyMem_Malloc, the very size class of a
32-byte bytes object (32-byte header + 33 bytes -> 80), and would clobber a dropped key on the
first reply byte. See README.md.
"""

from __future__ import annotations

import ctypes
import gc
import os
import socket
import sys

EXIT_OK, EXIT_USAGE, EXIT_FAILED, EXIT_CHANNEL_CLOSED = 0, 64, 70, 75
CONTROL_FD = 3
SECRET_MAX = 4096
CANARY_MAX = 1 << 20
LINE_MAX = 512
WORD_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
LABEL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")
HEX_DIGITS = b"0123456789abcdef"
# Where a bytes object keeps its data: PyBytesObject is a var-object header plus ob_shash, then
# ob_sval (32 on 64-bit CPython); sys.getsizeof(b"") counts the header and the trailing NUL.
BYTES_DATA_OFFSET = sys.getsizeof(b"") - 1

# ------------------------------------------------------------------------------ registry

REGISTRY: dict = {}


def scenario(name: str):
    """Registers the decorated function under `name`; a duplicate or invalid name aborts at import."""
    def register(fn):
        if not name or not set(name) <= WORD_CHARS:
            sys.stderr.write(f"remanence-target-python: invalid scenario registration '{name}'\n")
            os._exit(1)
        if name in REGISTRY:
            sys.stderr.write(f"remanence-target-python: duplicate scenario registration '{name}'\n")
            os._exit(1)
        REGISTRY[name] = fn
        return fn
    return register


# ------------------------------------------------------------------------------ protocol

class _State:
    secret_len = 0        # REMANENCE_SECRET_LEN
    secret_consumed = 0   # secret bytes read so far by the scenario


STATE = _State()
# The canary: a plain bytearray (pymalloc block, or malloc beyond 512 bytes) kept alive and
# unwiped until the process exits.
CANARY = bytearray()
# Preallocated buffers of the protocol layer (see the module docstring).
_LINE = bytearray(LINE_MAX)
_LINE_VIEW = memoryview(_LINE)
_ONE = bytearray(1)
_REPLY = bytearray(32)
_CHANNEL: list = []  # the socket object over fd 3 (kept for good: its finalizer would close fd 3)


def _exit(code: int) -> None:
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def channel_closed() -> None:
    """The harness went away (EOF or an error on fd 3)."""
    sys.stderr.write("remanence-target-python: control channel closed\n")
    _exit(EXIT_CHANNEL_CLOSED)


def _send_view(view) -> None:
    while len(view):
        try:
            n = os.write(CONTROL_FD, view)
        except OSError:  # EPIPE (Python ignores SIGPIPE), ECONNRESET, EBADF, ...
            channel_closed()
        if n <= 0:
            channel_closed()
        view = view[n:]


def _put(pos: int, text: str) -> int:
    """Copies ASCII `text` into the line buffer at pos (one char at a time: no new objects);
    control characters become '?'; stops short of the buffer's end (room for the newline)."""
    for ch in text:
        if pos >= LINE_MAX - 1:
            break
        c = ord(ch)
        _LINE[pos] = c if 0x20 <= c < 0x7f else 0x3f
        pos += 1
    return pos


def _put_hex(pos: int, value: int) -> int:
    digits = 1
    while value >> (4 * digits):
        digits += 1
    for i in range(digits - 1, -1, -1):
        if pos >= LINE_MAX - 1:
            break
        _LINE[pos] = HEX_DIGITS[(value >> (4 * i)) & 15]
        pos += 1
    return pos


def _put_dec(pos: int, value: int) -> int:
    return _put(pos, str(value))


def _send_line(pos: int) -> None:
    _LINE[pos] = 0x0a
    _send_view(_LINE_VIEW[:pos + 1])


def _recv_into(view) -> int:
    """Up to len(view) bytes from fd 3 into view; EOF or an error exits 75. recv_into keeps its
    Py_buffer on the C stack: no heap allocation. A fd 3 that is not a socket is read with
    os.readv (which allocates, see the module docstring)."""
    try:
        r = _CHANNEL[0].recv_into(view) if _CHANNEL else os.readv(CONTROL_FD, [view])
    except OSError:
        channel_closed()
    if r <= 0:
        channel_closed()
    return r


def read_exact_into(buf) -> None:
    """Reads exactly len(buf) bytes from fd 3 straight into the writable buffer `buf` (recv_into
    writes into it: no intermediate bytes object); EOF exits 75."""
    view = memoryview(buf).cast("B")
    got, n = 0, len(view)
    while got < n:
        got += _recv_into(view[got:] if got else view)
    view.release()


def _read_control_line() -> tuple[int, bool]:
    """Reads one line into _REPLY, byte by byte (never past the newline): (length, ok)."""
    n, ok = 0, True
    while True:
        _recv_into(_ONE)
        c = _ONE[0]
        if c == 0x0a:
            return n, ok
        if c < 0x20 or c > 0x7e:
            ok = False
        if n < len(_REPLY):
            _REPLY[n] = c
            n += 1
        else:
            ok = False


def _word(text: str, chars: frozenset) -> bool:
    """text is non-empty and made of chars (checked char by char: no new objects)."""
    if not text:
        return False
    for ch in text:
        if ch not in chars:
            return False
    return True


def _startswith(buf: bytearray, text: str) -> bool:
    i = 0
    for ch in text:
        if buf[i] != ord(ch):
            return False
        i += 1
    return True


def note(text: str) -> None:
    """`note <key>=<value> ...`: facts worth recording, never the secret."""
    _send_line(_put(_put(0, "note "), text))


def fail(message: str) -> None:
    """`error <message>`, exit 70."""
    sys.stderr.write(f"remanence-target-python: error: {message}\n")
    try:
        _send_line(_put(_put(0, "error "), message))
    finally:
        _exit(EXIT_FAILED)


def secret_len() -> int:
    return STATE.secret_len


def _claim_secret(n: int) -> None:
    left = STATE.secret_len - STATE.secret_consumed
    if n > left:
        fail(f"scenario asked for {n} secret bytes, only {left} left")
    STATE.secret_consumed += n


def read_secret_into(buf) -> None:
    """Reads len(buf) secret bytes from fd 3 straight into `buf` (bytearray or other writable buffer)."""
    _claim_secret(len(buf))
    read_exact_into(buf)


_new_bytes = ctypes.pythonapi.PyBytes_FromStringAndSize
_new_bytes.restype = ctypes.py_object
_new_bytes.argtypes = (ctypes.c_char_p, ctypes.c_ssize_t)


def read_secret_bytes(n: int) -> bytes:
    """The next n secret bytes as a `bytes` object, read straight into its storage: a fresh,
    uninitialised bytes object (PyBytes_FromStringAndSize(NULL, n): never a shared singleton)
    is filled in place by recv_into through a ctypes array laid over its data, before any other
    code can see it. os.read(3, n) would copy whenever the kernel returns fewer than n bytes
    (os.read shrinks its buffer with realloc; pymalloc moves a block that shrinks a lot)."""
    if n < 2:
        fail("read_secret_bytes needs n >= 2")
    b = _new_bytes(None, n)
    read_secret_into((ctypes.c_char * n).from_address(id(b) + BYTES_DATA_OFFSET))
    return b


def bytes_addr(b: bytes) -> int:
    """Address of a bytes object's data (ob_sval)."""
    return id(b) + BYTES_DATA_OFFSET


def bytearray_addr(ba: bytearray) -> int:
    """Address of a bytearray's buffer (ob_start)."""
    view = (ctypes.c_char * len(ba)).from_buffer(ba)
    addr = ctypes.addressof(view)
    del view  # releases the export (a bytearray with an export cannot be resized)
    return addr


def derived(label: str, value) -> None:
    """`derived <label> <n>` then the n raw bytes of `value` (bytes or bytearray, sent from its
    own storage with os.writev: no copy): a value computed from the secret that the harness
    should also look for."""
    if len(label) > 64 or not _word(label, LABEL_CHARS):
        fail("invalid derived label")
    view = memoryview(value).cast("B")
    n = len(view)
    if not 1 <= n <= 4096:
        fail("derived value length out of range 1..4096")
    if STATE.secret_consumed != STATE.secret_len:
        fail("derived value sent before the whole secret was read")
    pos = _put(_put(_put(0, "derived "), label), " ")
    pos = _put_dec(pos, n)
    _LINE[pos] = 0x0a
    _send_view(_LINE_VIEW[:pos + 1])
    _send_view(view)
    view.release()


def checkpoint(name: str, addr: int) -> None:
    """`checkpoint <name> 0x<addr>` (`-` for 0), then waits for `continue`."""
    if not _word(name, WORD_CHARS):
        fail("invalid checkpoint name")
    # Otherwise the unread secret bytes would be taken for a control line.
    if STATE.secret_consumed != STATE.secret_len:
        fail(f"checkpoint {name} reached before the whole secret was read")
    pos = _put(_put(0, "checkpoint "), name)
    if addr:
        pos = _put_hex(_put(pos, " 0x"), addr)
    else:
        pos = _put(pos, " -")
    _send_line(pos)
    n, ok = _read_control_line()
    if not ok or n != 8 or not _startswith(_REPLY, "continue"):
        fail(f"expected 'continue' after checkpoint {name}")


def done() -> None:
    if STATE.secret_consumed != STATE.secret_len:
        fail("scenario did not read the whole secret")
    _send_line(_put(0, "done"))


def need_secret_len(n: int) -> None:
    if STATE.secret_len != n:
        fail(f"this scenario needs a {n}-byte secret, got {STATE.secret_len}")


def collect() -> None:
    """Automatic collection is off (gc.disable() in main): objects die by reference counting at
    `del`; this runs a full collection at a fixed point anyway, for any reference cycle."""
    gc.collect()


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
    addr = bytes_addr(seed)
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
    addr = bytearray_addr(seed)
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
    addr = bytearray_addr(buf)
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
    addr = bytes_addr(seed)
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


# ------------------------------------------------------------------------------ main

def _env_size(name: str, lo: int, hi: int) -> int | None:
    s = os.environ.get(name)
    if not s or not s.isascii() or not s.isdigit():
        return None
    v = int(s)
    return v if lo <= v <= hi else None


def _die_usage(name: str) -> None:
    sys.stderr.write(f"unknown scenario '{name}'; known: {' '.join(sorted(REGISTRY))}\n")
    _exit(EXIT_USAGE)


def main(argv: list[str]) -> None:
    if argv == ["--list"]:
        sys.stdout.write("".join(f"{name}\n" for name in sorted(REGISTRY)))
        _exit(EXIT_OK)
    if len(argv) != 1:
        _die_usage(argv[0] if argv else "")
    fn = REGISTRY.get(argv[0])
    if fn is None:
        _die_usage(argv[0])

    try:
        os.fstat(CONTROL_FD)
    except OSError:
        channel_closed()
    try:
        _CHANNEL.append(socket.socket(fileno=CONTROL_FD))
    except OSError:
        pass  # not a socket: read with os.readv

    _send_line(_put(0, "ready 1"))

    proto = os.environ.get("REMANENCE_PROTOCOL")
    if proto is not None and proto != "1":
        fail("unsupported REMANENCE_PROTOCOL (this target speaks 1)")
    n = _env_size("REMANENCE_SECRET_LEN", 1, SECRET_MAX)
    if n is None:
        fail(f"REMANENCE_SECRET_LEN must be an integer in 1..{SECRET_MAX}")
    m = _env_size("REMANENCE_CANARY_LEN", 1, CANARY_MAX)
    if m is None:
        fail(f"REMANENCE_CANARY_LEN must be an integer in 1..{CANARY_MAX}")
    if NACL_ERROR:
        fail(NACL_ERROR)
    STATE.secret_len = n

    # No automatic garbage collection: objects die by reference counting where a scenario drops
    # them, and a full collection runs only where a scenario calls collect().
    gc.disable()

    CANARY.extend(bytes(m))  # allocated (zeroed) first, then filled in place
    read_exact_into(CANARY)

    fn()

    done()
    _exit(EXIT_OK)


if __name__ == "__main__":
    main(sys.argv[1:])
