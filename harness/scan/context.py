"""The bytes around a hit, for hexdumps, and which of them are secret material.

Reports show a window of memory around each hit; by default every byte that could be secret
material is masked. That is more than the hit itself: a window can hold the tail of a partial
wipe shorter than a fragment, or a neighbouring copy in another encoding. So any run of at least
MASK_MIN_RUN bytes that also occurs in one of the secret's encoded forms is masked too.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..model import Hit, Secret, Snapshot

from .encodings import patterns_for

CONTEXT_RADIUS = 64
MASK_MIN_RUN = 4


@dataclass(frozen=True)
class HitContext:
    start: int                                 # offset of the window's first byte from the hit's first byte (<= 0)
    data: bytes = field(repr=False)            # the window, unmasked: never write it out without masking
    secret_ranges: tuple[tuple[int, int], ...]  # [start, end) within `data` that are (or may be) secret material

    def masked_hex(self, reveal: bool = False) -> list[str]:
        """Two hex digits per byte; secret material as '**' unless `reveal`."""
        cells = [f"{b:02x}" for b in self.data]
        if not reveal:
            for start, end in self.secret_ranges:
                cells[start:end] = ["**"] * (end - start)
        return cells


def _merge(ranges: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    merged: list[list[int]] = []
    for start, end in sorted(ranges):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return tuple((s, e) for s, e in merged)


def _material_runs(window: bytes, forms: list[bytes]) -> list[tuple[int, int]]:
    """Ranges of `window` of MASK_MIN_RUN+ bytes that also occur in some form of the secret."""
    grams = {form[i:i + MASK_MIN_RUN] for form in forms for i in range(len(form) - MASK_MIN_RUN + 1)}
    return [(i, i + MASK_MIN_RUN) for i in range(len(window) - MASK_MIN_RUN + 1) if window[i:i + MASK_MIN_RUN] in grams]


def secret_material(secret: Secret) -> list[bytes]:
    """Every byte string the secret may appear as: computed once per run, used for every hit's window."""
    return [p.needle for p in patterns_for(secret)] + [secret.value]


def mask_secret(text: bytes, material: list[bytes], mask: bytes = b"[secret]") -> bytes:
    """`text` (a program's output, a command line) with every form in `material` (secret_material()) 4 bytes or
    longer replaced by `mask`, the longest first."""
    for needle in sorted({m for m in material if len(m) >= MASK_MIN_RUN}, key=len, reverse=True):
        text = text.replace(needle, mask)
    return text


def hit_context(snapshot: Snapshot, hit: Hit, material: list[bytes], radius: int = CONTEXT_RADIUS) -> HitContext:
    """Read the window around `hit` from the snapshot file (within its region); `material` is secret_material()."""
    region_start = hit.region.file_offset
    window_start = max(region_start, hit.file_offset - radius)
    window_end = min(region_start + hit.region.size, hit.file_offset + hit.length + radius)
    with open(snapshot.path, "rb") as f:
        f.seek(window_start)
        window = f.read(window_end - window_start)
    own = (hit.file_offset - window_start, hit.file_offset - window_start + hit.length)
    return HitContext(window_start - hit.file_offset, window, _merge([own, *_material_runs(window, material)]))
