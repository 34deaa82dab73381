"""One wording for "that value is not one of these": the closest known values first, then all of them."""
from __future__ import annotations

import difflib
from collections.abc import Iterable


def close_matches(value: str, known: Iterable[str]) -> str:
    """"did you mean 'gcore'?" for a near miss among `known`, else ""."""
    close = difflib.get_close_matches(value, list(known), n=3, cutoff=0.6)
    return f"did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def unknown(what: str, value: str, known: Iterable[str]) -> str:
    """"unknown method 'gcor' (did you mean 'gcore'? known: procmem, gcore, ...)"."""
    known = list(known)
    hint = close_matches(value, known)
    return f"unknown {what} {value!r} ({hint + ' ' if hint else ''}known: {', '.join(known)})"
