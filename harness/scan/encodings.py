"""The byte strings a secret may leave behind in memory, one `Pattern` per form.

A program rarely keeps a secret only in its raw form: it hex-dumps it for a log,
base64-encodes it into a JSON document, widens it to UTF-16 for a Windows-style API,
or wipes only part of the buffer. Each of those leaves a fixed byte string we can
search for exactly.
"""
from __future__ import annotations

import base64
from dataclasses import dataclass, field

from ..model import Secret
from .aes_schedule import ROUND_KEY_SIZE, ROUNDS, expand_key, word_swapped

# Needles shorter than this are dropped: 8 random bytes occur by chance about once per
# 2**64 positions, while shorter needles (and short text) show up in ordinary memory and
# would give false hits. A secret whose every form is shorter yields no pattern at all.
MIN_NEEDLE_LEN = 8

# A key schedule is also searched by windows of this many consecutive round keys, every one starting on a round key
# past the key's own bytes (a window never is the raw key): 48 surviving bytes in a row are enough to find it.
SCHEDULE_WINDOW_ROUND_KEYS = 2


@dataclass(frozen=True)
class Pattern:
    needle: bytes = field(repr=False)   # the exact bytes to search for; kept out of logs
    secret: str                         # label of the Secret it came from
    encoding: str                       # raw, hex-lower, base64+1, utf16le:hex-lower, aes256-schedule, ...
    # [start, end) of the raw secret (of the expanded schedule for a schedule encoding); None: the whole form
    fragment: tuple[int, int] | None = None


def base64_aligned(value: bytes, offset: int, altchars: bytes | None = None) -> bytes:
    """The base64 characters fully determined by `value` when it starts `offset` (0..2) bytes
    past a 3-byte group boundary of a longer stream. Character i covers stream bits
    [6i, 6i+6); it depends only on the secret iff 8*offset <= 6i and 6i+6 <= 8*(offset+len)."""
    first = -(-8 * offset // 6)                     # ceil: first char not touching the prefix
    end = 8 * (offset + len(value)) // 6            # floor: chars before this lie inside the secret
    encoded = base64.b64encode(bytes(offset) + value, altchars=altchars)
    return encoded[first:end] if end > first else b""


def as_text(data: bytes) -> str:
    """Textual bytes as the string a program would widen: UTF-8 if valid, else one code point per byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def is_schedule(encoding: str) -> bool:
    """Whether an encoding is an AES key schedule: its fragments are byte ranges of the schedule, not of the secret."""
    return encoding.startswith("aes")


def fragment_text(encoding: str, fragment: tuple[int, int] | list[int]) -> str:
    """How reports name a partial copy: its byte range, and for a key schedule the round keys it holds."""
    start, end = fragment
    if is_schedule(encoding):
        return f"round keys {start // ROUND_KEY_SIZE}-{(end - 1) // ROUND_KEY_SIZE} [{start}:{end})"
    return f"fragment [{start}:{end})"


def schedule_forms(value: bytes) -> list[tuple[str, bytes, tuple[int, int] | None]]:
    """A 16-, 24- or 32-byte value's AES-128/192/256 encryption key schedule in the byte orders real code keeps it
    in (measured: libsodium 1.0.18's AES-NI aes256gcm state and Go 1.26's crypto/aes on amd64 keep FIPS-197 byte
    order, Go's generic code (-tags purego) 32-bit words in native order), whole and by windows of round keys."""
    if len(value) not in ROUNDS:
        return []
    schedule = expand_key(value)
    window = SCHEDULE_WINDOW_ROUND_KEYS * ROUND_KEY_SIZE
    first = -(-len(value) // ROUND_KEY_SIZE) * ROUND_KEY_SIZE     # the first round key with no byte of the key
    forms: list[tuple[str, bytes, tuple[int, int] | None]] = []
    for name, laid_out in ((f"aes{8 * len(value)}-schedule", schedule),
                           (f"aes{8 * len(value)}-schedule-u32", word_swapped(schedule))):
        forms.append((name, laid_out, None))
        forms += [(name, laid_out[start:start + window], (start, start + window))
                  for start in range(first, len(laid_out) - window + 1, ROUND_KEY_SIZE)]
    return forms


def patterns_for(secret: Secret, fragment_size: int = 16) -> list[Pattern]:
    """Every form of `secret` worth searching for, most specific first, identical needles merged."""
    value = secret.value
    forms: list[tuple[str, bytes, tuple[int, int] | None]] = [("raw", value, None)]
    forms.append(("hex-lower", value.hex().encode(), None))
    forms.append(("hex-upper", value.hex().upper().encode(), None))
    for alphabet, altchars in (("base64", None), ("base64url", b"-_")):
        for offset in range(3):
            name = alphabet if offset == 0 else f"{alphabet}+{offset}"
            forms.append((name, base64_aligned(value, offset, altchars), None))
    # UTF-16 of the textual forms only: UTF-16 of arbitrary binary is not something programs make.
    textual = ["hex-lower", "hex-upper", "base64"] + (["raw"] if secret.textual else [])
    by_name = {name: needle for name, needle, _ in forms}
    for codec, tag in (("utf-16-le", "utf16le"), ("utf-16-be", "utf16be")):
        for name in textual:
            forms.append((f"{tag}:{name}", as_text(by_name[name]).encode(codec), None))
    # Windows of the raw secret, and of its hex text, aligned to whole bytes: what survives a wipe that missed
    # part of the buffer, or an allocator that reused the head of a dead string (V8's free-list filler).
    if len(value) > fragment_size:
        for i in range(len(value) - fragment_size + 1):
            window = value[i:i + fragment_size]
            for name, needle in (("raw", window), ("hex-lower", window.hex().encode()),
                                 ("hex-upper", window.hex().upper().encode())):
                forms.append((name, needle, (i, i + fragment_size)))
    forms += schedule_forms(value)

    patterns: list[Pattern] = []
    seen: set[bytes] = set()
    for name, needle, fragment in forms:
        if len(needle) < MIN_NEEDLE_LEN or needle in seen:   # the first (most specific) name wins
            continue
        seen.add(needle)
        patterns.append(Pattern(needle, secret.label, name, fragment))
    return patterns
