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

# Needles shorter than this are dropped: 8 random bytes occur by chance about once per
# 2**64 positions, while shorter needles (and short text) show up in ordinary memory and
# would give false hits. A secret whose every form is shorter yields no pattern at all.
MIN_NEEDLE_LEN = 8


@dataclass(frozen=True)
class Pattern:
    needle: bytes = field(repr=False)   # the exact bytes to search for; kept out of logs
    secret: str                         # label of the Secret it came from
    encoding: str                       # raw, hex-lower, base64+1, utf16le:hex-lower, ...
    fragment: tuple[int, int] | None = None   # [start, end) of the raw secret; None: whole secret


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

    patterns: list[Pattern] = []
    seen: set[bytes] = set()
    for name, needle, fragment in forms:
        if len(needle) < MIN_NEEDLE_LEN or needle in seen:   # the first (most specific) name wins
            continue
        seen.add(needle)
        patterns.append(Pattern(needle, secret.label, name, fragment))
    return patterns
