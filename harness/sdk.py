"""remanence.sdk: write a remanence target in Python (the protocol of targets/PROTOCOL.md, version 1).

A test program run by `target = "program"` scenarios (or by the built-in Python target) talks to the
harness over fd 3::

    from remanence import sdk

    n = sdk.start()                       # fd 3, `ready 1`, the REMANENCE_* checks, the canary
    key = bytearray(n)
    sdk.read_secret_into(key)             # the secret, straight into your own buffer
    sdk.checkpoint("in_use", sdk.address_of(key))    # snapshots taken while this waits
    wipe(key)
    sdk.checkpoint("after_wipe", sdk.address_of(key))
    sdk.done()                            # exit 0

`fail(message)` ends with exit 70, a closed channel with exit 75. Every exit is `os._exit` after
flushing stdout and stderr: no interpreter finalization runs after the last snapshot.

Standard library only, and nothing else of the remanence package: the built-in Python target imports
this file inside a venv of its own where remanence is not installed.

The module disturbs the memory under test as little as it can. A dropped key lives on in a freed
pymalloc block, and pymalloc hands freed blocks of a size class out again last-in first-out, so one
allocation of a key's size class in the checkpoint path would overwrite exactly the freshest stale copy
(os.readv, for one, allocates its Py_buffer array, 80 bytes per buffer, with PyMem_Malloc: the size
class of a 32-byte bytes object). So control lines are built in a preallocated bytearray one character
at a time (no str formatting, no new bytes object) and written with os.write on a memoryview; replies
are read one byte at a time into a preallocated buffer with socket.recv_into (its Py_buffer lives on
the C stack); derived values are sent from their own storage. See targets/python/README.md.
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
DERIVED_MAX = 4096
LABEL_MAX = 64
LINE_MAX = 512
WORD_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
LABEL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")
HEX_DIGITS = b"0123456789abcdef"
# Where a bytes object keeps its data: PyBytesObject is a var-object header plus ob_shash, then
# ob_sval (32 on 64-bit CPython); sys.getsizeof(b"") counts the header and the trailing NUL.
BYTES_DATA_OFFSET = sys.getsizeof(b"") - 1


# ------------------------------------------------------------------------------ state and buffers

class _State:
    started = False
    secret_len = 0        # REMANENCE_SECRET_LEN
    secret_consumed = 0   # secret bytes read so far


STATE = _State()
# The canary: a plain bytearray (pymalloc block, or malloc beyond 512 bytes) kept alive and unwiped
# until the process exits: every snapshot must show it (the positive control).
CANARY = bytearray()
_LINE = bytearray(LINE_MAX)
_LINE_VIEW = memoryview(_LINE)
_ONE = bytearray(1)
_REPLY = bytearray(32)
_CHANNEL: list = []  # the socket object over fd 3 (kept for good: its finalizer would close fd 3)


def _program() -> str:
    return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "remanence.sdk"


def _exit(code: int) -> None:
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def channel_closed() -> None:
    """The harness went away (EOF or an error on fd 3): exit 75."""
    sys.stderr.write(f"{_program()}: control channel closed\n")
    _exit(EXIT_CHANNEL_CLOSED)


def _require_started() -> None:
    if not STATE.started:
        raise RuntimeError("remanence.sdk.start() must be called first")


# ------------------------------------------------------------------------------ lines out, bytes in

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
    """Copies ASCII `text` into the line buffer at pos (one char at a time: no new objects); control
    characters become '?'; stops short of the buffer's end (room for the newline)."""
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


def _send_line(pos: int) -> None:
    _LINE[pos] = 0x0a
    _send_view(_LINE_VIEW[:pos + 1])


def _recv_into(view) -> int:
    """Up to len(view) bytes from fd 3 into view; EOF or an error exits 75. recv_into keeps its Py_buffer
    on the C stack: no heap allocation. A fd 3 that is not a socket is read with os.readv (which
    allocates, see the module docstring)."""
    try:
        r = _CHANNEL[0].recv_into(view) if _CHANNEL else os.readv(CONTROL_FD, [view])
    except OSError:
        channel_closed()
    if r <= 0:
        channel_closed()
    return r


def _read_exact_into(buf) -> None:
    """Exactly len(buf) bytes from fd 3 straight into the writable buffer `buf`; EOF exits 75."""
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


# ------------------------------------------------------------------------------ the conversation

def _env_size(name: str, lo: int, hi: int) -> int | None:
    s = os.environ.get(name)
    if not s or not s.isascii() or not s.isdigit():
        return None
    v = int(s)
    return v if lo <= v <= hi else None


def start(problem: str | None = None) -> int:
    """Opens the conversation and returns the secret's length in bytes: checks fd 3 (exit 75 without
    it), sends `ready 1`, checks the REMANENCE_* variables (an `error` line and exit 70 if they are
    wrong), reports `problem` the same way if given (e.g. a dependency that failed to import), turns
    automatic garbage collection off, and reads the canary into a heap buffer kept until exit.

    With automatic collection off, objects die by reference counting where the program drops them,
    and a full collection runs only where it calls collect(): the same run gives the same memory.
    Call gc.enable() after start() to test a program under the collector's own timing."""
    if STATE.started:
        raise RuntimeError("remanence.sdk.start() called twice")
    try:
        os.fstat(CONTROL_FD)
    except OSError:
        channel_closed()
    try:
        _CHANNEL.append(socket.socket(fileno=CONTROL_FD))
    except OSError:
        pass  # not a socket: read with os.readv
    STATE.started = True

    _send_line(_put(0, "ready 1"))

    proto = os.environ.get("REMANENCE_PROTOCOL")
    if proto is not None and proto != "1":
        fail("unsupported REMANENCE_PROTOCOL (this program speaks 1)")
    n = _env_size("REMANENCE_SECRET_LEN", 1, SECRET_MAX)
    if n is None:
        fail(f"REMANENCE_SECRET_LEN must be an integer in 1..{SECRET_MAX}")
    m = _env_size("REMANENCE_CANARY_LEN", 1, CANARY_MAX)
    if m is None:
        fail(f"REMANENCE_CANARY_LEN must be an integer in 1..{CANARY_MAX}")
    if problem:
        fail(problem)
    STATE.secret_len = n

    gc.disable()
    CANARY.extend(bytes(m))  # allocated (zeroed) first, then filled in place
    _read_exact_into(CANARY)
    return n


def secret_len() -> int:
    return STATE.secret_len


def need_secret_len(n: int) -> None:
    """Fails (exit 70) unless the secret is n bytes long."""
    if STATE.secret_len != n:
        fail(f"this scenario needs a {n}-byte secret, got {STATE.secret_len}")


def read_secret_into(buf) -> None:
    """Reads the next len(buf) secret bytes from fd 3 straight into `buf`, any writable buffer (a
    bytearray, a memoryview of one, a ctypes array, an mmap): recv_into writes into it, no
    intermediate object ever holds them. May be called several times for consecutive parts."""
    _require_started()
    n = memoryview(buf).nbytes
    left = STATE.secret_len - STATE.secret_consumed
    if n > left:
        fail(f"asked for {n} secret bytes, only {left} left")
    STATE.secret_consumed += n
    _read_exact_into(buf)


_new_bytes = ctypes.pythonapi.PyBytes_FromStringAndSize
_new_bytes.restype = ctypes.py_object
_new_bytes.argtypes = (ctypes.c_char_p, ctypes.c_ssize_t)


def read_secret_bytes(n: int) -> bytes:
    """The next n secret bytes as a `bytes` object, read straight into its storage: a fresh,
    uninitialised bytes object (PyBytes_FromStringAndSize(NULL, n): never a shared singleton) is filled
    in place by recv_into through a ctypes array laid over its data, before any other code can see it.
    os.read(3, n) would copy whenever the kernel returns fewer than n bytes (os.read shrinks its buffer
    with realloc; pymalloc moves a block that shrinks a lot)."""
    if n < 2:
        fail("read_secret_bytes needs n >= 2")
    b = _new_bytes(None, n)
    read_secret_into((ctypes.c_char * n).from_address(id(b) + BYTES_DATA_OFFSET))
    return b


def address_of(obj) -> int:
    """Where `obj` keeps its data: a bytes object's ob_sval, a ctypes object's storage, or the start of
    any writable buffer (bytearray, memoryview, mmap)."""
    if isinstance(obj, bytes):
        return id(obj) + BYTES_DATA_OFFSET
    try:
        return ctypes.addressof(obj)
    except TypeError:  # not a ctypes object
        pass
    first = ctypes.c_char.from_buffer(obj)
    addr = ctypes.addressof(first)
    del first     # releases the export (a bytearray with an export cannot be resized)
    return addr


def note(text: str) -> None:
    """`note <key>=<value> ...`: facts worth recording in the report, never the secret."""
    _require_started()
    _send_line(_put(_put(0, "note "), text))


def derived(label: str, value) -> None:
    """`derived <label> <n>` then the n raw bytes of `value` (any buffer, sent from its own storage: no
    copy): a value computed from the secret that the harness looks for too. Send it before the first
    checkpoint whose scenario file has an expectation for it."""
    _require_started()
    if len(label) > LABEL_MAX or not _word(label, LABEL_CHARS):
        fail("invalid derived label")
    view = memoryview(value).cast("B")
    n = len(view)
    if not 1 <= n <= DERIVED_MAX:
        fail(f"derived value length out of range 1..{DERIVED_MAX}")
    if STATE.secret_consumed != STATE.secret_len:
        fail("derived value sent before the whole secret was read")
    pos = _put(_put(_put(0, "derived "), label), " ")
    _send_line(_put(pos, str(n)))
    _send_view(view)
    view.release()


def checkpoint(name: str, addr: int | None) -> None:
    """`checkpoint <name> 0x<addr>` (`-` for None or 0: no address), then waits for `continue`, by which
    time the harness has taken its snapshots. `addr` is where the secret is kept, or was."""
    _require_started()
    if not _word(name, WORD_CHARS):
        fail("invalid checkpoint name")
    # Otherwise the unread secret bytes would be taken for a control line.
    if STATE.secret_consumed != STATE.secret_len:
        fail(f"checkpoint {name} reached before the whole secret was read")
    pos = _put(_put(0, "checkpoint "), name)
    pos = _put_hex(_put(pos, " 0x"), addr) if addr else _put(pos, " -")
    while True:
        _send_line(pos)
        n, ok = _read_control_line()
        if not (ok and n == 7 and _startswith(_REPLY, "collect")):
            break
        gc.collect()   # a full collection, then the same checkpoint again
    if not ok or n != 8 or not _startswith(_REPLY, "continue"):
        fail(f"expected 'continue' after checkpoint {name}")


def collect() -> None:
    """A full garbage collection at a fixed point (automatic collection is off after start())."""
    gc.collect()


def done() -> None:
    """`done`, exit 0."""
    _require_started()
    if STATE.secret_consumed != STATE.secret_len:
        fail("the program did not read the whole secret")
    _send_line(_put(0, "done"))
    _exit(EXIT_OK)


def fail(message: str) -> None:
    """`error <message>` (never the secret), exit 70."""
    sys.stderr.write(f"{_program()}: error: {message}\n")
    try:
        if STATE.started:
            _send_line(_put(_put(0, "error "), message))
    finally:
        _exit(EXIT_FAILED)


# ------------------------------------------------------------------------------ optional registry

REGISTRY: dict = {}


def scenario(name: str):
    """Registers the decorated function under `name` for main(); a duplicate or invalid name exits 1
    at import, before main runs."""
    def register(fn):
        if not _word(name, WORD_CHARS):
            sys.stderr.write(f"{_program()}: invalid scenario registration '{name}'\n")
            _exit(1)
        if name in REGISTRY:
            sys.stderr.write(f"{_program()}: duplicate scenario registration '{name}'\n")
            _exit(1)
        REGISTRY[name] = fn
        return fn
    return register


def _die_usage(name: str) -> None:
    sys.stderr.write(f"unknown scenario '{name}'; known: {' '.join(sorted(REGISTRY))}\n")
    _exit(EXIT_USAGE)


def main(argv: list[str] | None = None, problem: str | None = None) -> None:
    """Runs the registered scenario named by argv (default sys.argv[1:]): `--list` prints the names
    sorted; an unknown or missing name, or extra arguments, exit 64; otherwise start(problem), the
    scenario, done()."""
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--list"]:
        sys.stdout.write("".join(f"{name}\n" for name in sorted(REGISTRY)))
        _exit(EXIT_OK)
    if len(argv) != 1:
        _die_usage(argv[0] if argv else "")
    fn = REGISTRY.get(argv[0])
    if fn is None:
        _die_usage(argv[0])
    start(problem)
    fn()
    done()
