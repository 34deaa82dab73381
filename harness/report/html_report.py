"""report.html: one self-contained page (no network, no script) rendered from the results document.

The page is built in two steps. This module turns the document into a plain *view*: everything the page
shows, already ordered, grouped and laid out (the findings grid first: where the secret survives, from the
document's aggregates; then the runs, the hexdump lines, the coordinates of each address-space picture). The jinja2 templates under templates/ only turn that view
into markup, with autoescaping on: every string that came from a target (region names, notes, reasons)
is escaped there, never marked safe here.

The output is deterministic: nothing depends on the time of rendering, and everything keeps the
document's order, so a golden file can pin it.
"""
from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import jinja2

from ..scan.encodings import fragment_text
from ..snapshot import methods as snapshot_methods
from ..verdict import CRASH_SUBJECT, hit_process
from .findings import Finding, findings

TEMPLATES = Path(__file__).with_name("templates")

OUTCOMES = ("PASS", "FAIL", "INCONCLUSIVE", "ERROR", "SKIP")
# "worst" first: a findings cell shows the worst of its verdicts beside the finding. A SKIP is worse than
# a PASS: something was not verified.
SEVERITY = {"FAIL": 5, "ERROR": 4, "INCONCLUSIVE": 3, "SKIP": 2, "PASS": 1}
LANGUAGES = {"c": "C", "go": "Go", "rust": "Rust", "python": "Python", "java": "Java", "js": "JavaScript",
             "cpp": "C++", "c++": "C++"}
SECRET = "secret"
# Runs of `remanence scan` (a core file, a live process): no canary there; the field holds the first control value's.
ADHOC_TARGETS = ("core", "pid")
EXIT_MEANING = {0: "every verdict as expected", 1: "a secret was found where it must not be",
                3: "some verdicts could not be decided", 130: "the run was interrupted"}

# --- address-space picture geometry (SVG user units; the SVG scales down to the page width) -------------
MAP_MAX_W = 1100.0     # a row of the map wraps past this
BLOCK_H = 30.0
PIN_LANE = 24.0        # room above the blocks for hit markers
LABEL_LANE = 13.0      # each of the two label lanes below the blocks
ROW_H = PIN_LANE + BLOCK_H + 2 * LABEL_LANE + 10.0
BREAK_W = 16.0         # an unmapped hole in the address space, drawn as a break
SEP = 1.5              # between two adjacent mappings
CHAR_W = 5.9           # rough width of one character of a 10px label
STRIP_H = 40.0         # the register-set strip
PAGE = 4096


# --- series charts (a repeating checkpoint's copies per step) ------------------------------------------------
CHART_W, CHART_LEFT, CHART_RIGHT = 360.0, 40.0, 10.0
PANEL_H, PANEL_GAP, CHART_TOP = 64.0, 34.0, 10.0
METHOD_COLOURS = ("#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed")


def _num(x: float) -> str:
    """Coordinates as short, stable strings."""
    return f"{x:.1f}".rstrip("0").rstrip(".") if x != int(x) else str(int(x))


def human_size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            value = n / (1 << shift)
            return f"{value:.0f} {unit}" if value >= 100 or value == int(value) else f"{value:.1f} {unit}"
    return f"{n} B"


def _int(address: str | None) -> int | None:
    if not isinstance(address, str):
        return None
    try:
        return int(address, 16)
    except ValueError:
        return None


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", str(text)).strip("-") or "x"


class _Ids:
    """Unique, readable, deterministic element ids."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def make(self, *parts: object) -> str:
        base = "-".join(_slug(str(p)) for p in parts)
        candidate, n = base, 2
        while candidate in self.used:
            candidate, n = f"{base}~{n}", n + 1
        self.used.add(candidate)
        return candidate


def worst(outcomes) -> str | None:
    outcomes = [o for o in outcomes if o in SEVERITY]
    return max(outcomes, key=SEVERITY.__getitem__) if outcomes else None


def _basename(name: str) -> str:
    return name.rstrip("/").rsplit("/", 1)[-1] if name.startswith("/") else name


def _flags(region: dict) -> list[dict]:
    """locked / dont_dump as small marks: on, off, or unknown (null: the method cannot tell)."""
    marks = []
    for key, label, title in (("locked", "locked", "mlock'ed (VmFlags lo)"),
                              ("dont_dump", "dont_dump", "MADV_DONTDUMP (VmFlags dd)")):
        value = region.get(key)
        marks.append({"label": label, "state": "on" if value else "unknown" if value is None else "off",
                      "title": title + (": unknown to this method" if value is None else ": yes" if value else ": no")})
    return marks


def _gate(verdict: dict) -> dict | None:
    """The optional gate field: a muted badge for suppressed or baseline findings."""
    gate = verdict.get("gate")
    if not isinstance(gate, dict):
        return None
    state = gate.get("state")
    if state == "suppressed":
        suppression = gate.get("suppression") if isinstance(gate.get("suppression"), dict) else {}
        reason = suppression.get("reason") or "no reason given"
        expires = suppression.get("expires")
        return {"state": "suppressed", "text": f"suppressed: {reason}",
                "title": "suppressed by the gate" + (f" until {expires}" if expires else "")}
    if state == "baseline":
        return {"state": "baseline", "text": "known (baseline)", "title": "already in the baseline: not new"}
    return None


# --- hexdumps --------------------------------------------------------------------------------------------

def _segments(cells: list[tuple[str, str]], spaced: bool) -> list[tuple[str, str]]:
    """Merge (class, text) cells into runs of one class. With `spaced`, cells are hex bytes: one space between
    them, two in the middle of the line; a space inside a highlighted run belongs to the run."""
    out: list[tuple[str, str]] = []

    def add(cls: str, text: str) -> None:
        if out and out[-1][0] == cls:
            out[-1] = (cls, out[-1][1] + text)
        else:
            out.append((cls, text))

    for i, (cls, text) in enumerate(cells):
        if spaced and i:
            add(cls if cls and cells[i - 1][0] == cls else "", "  " if i == 8 else " ")
        add(cls, text)
    return out


def hexdump(hit: dict, secrets_shown: bool) -> dict | None:
    """16 bytes a line, addressed from the hit's address plus context.offset; secret material marked."""
    ctx = hit.get("context")
    if not isinstance(ctx, dict):
        return None
    cells = str(ctx.get("bytes", "")).split()
    n = len(cells)
    offset = int(ctx.get("offset") or 0)
    secret = [False] * n
    for rng in ctx.get("secret_ranges") or []:
        if isinstance(rng, (list, tuple)) and len(rng) == 2:
            for i in range(max(0, int(rng[0])), min(n, int(rng[1]))):
                secret[i] = True
    own_start = -offset
    own_end = own_start + int(hit.get("length") or 0)
    address = _int(hit.get("address"))
    base = None if address is None else address + offset
    lead = 0 if base is None else base % 16
    digits = 12 if base is None or base + n < 1 << 48 else 16
    lines = []
    masked = 0
    for line_start in range(-lead, n, 16):
        hex_cells, ascii_cells = [], []
        for i in range(line_start, line_start + 16):
            if i < 0 or i >= n:
                hex_cells.append(("p", "  "))
                ascii_cells.append(("p", " "))
                continue
            token = cells[i]
            hidden = token == "**"
            masked += hidden
            value = None if hidden else int(token, 16) if re.fullmatch(r"[0-9a-fA-F]{2}", token) else None
            if own_start <= i < own_end:
                cls = "h"
            elif secret[i]:
                cls = "s"
            elif value == 0:
                cls = "z"
            else:
                cls = ""
            hex_cells.append((cls, "**" if hidden else token if value is not None else "??"))
            if hidden:
                ascii_cells.append((cls, "•"))
            elif value is not None and 0x20 <= value < 0x7f:
                ascii_cells.append((cls, chr(value)))
            else:
                ascii_cells.append((cls or "d", "·"))
        if base is None:
            rel = line_start + offset
            label = f"{'-' if rel < 0 else '+'}{abs(rel):06x}"
        else:
            label = f"{base + line_start:0{digits}x}"
        lines.append({"addr": label, "hex": _segments(hex_cells, True), "ascii": _segments(ascii_cells, False)})
    return {"lines": lines, "masked": masked, "relative": base is None,
            "window": f"{n} bytes around the hit, {-offset} before it"}


# --- the address-space picture -----------------------------------------------------------------------------

def _is_memory(region: dict) -> bool:
    return region.get("kind") not in ("registers", "note")


BLOCK_MIN_W = 14.0     # a single page
NOTABLE_MIN_W = 34.0   # a guarded, locked or never-dumped mapping: where a careful program keeps its secrets
LOG_SCALE = (4.0, 16.0)  # width added per doubling of size: fitted to the row, within these bounds


def _pages_log(size: int) -> float:
    return math.log2(max(size, PAGE) / PAGE)


def _log_scale(items: list[dict]) -> float:
    """Per doubling of size, the width that makes one row of blocks fill MAP_MAX_W (within LOG_SCALE)."""
    fixed, logs, prev = 0.0, 0.0, None
    for it in items:
        fixed += it["min_w"] + (0.0 if prev is None else BREAK_W if it["start"] > prev["end"] else SEP)
        logs += _pages_log(it["size"])
        prev = it
    if logs <= 0:
        return LOG_SCALE[1]
    return max(LOG_SCALE[0], min(LOG_SCALE[1], (MAP_MAX_W - 8.0 - fixed) / logs))  # 8: room for rounding


def _region_title(r: dict) -> str:
    start = _int(r.get("start")) or 0
    size = int(r.get("size") or 0)
    flags = [f for f, on in (("locked", r.get("locked")), ("dont_dump", r.get("dont_dump"))) if on]
    return (f"{r.get('name') or r.get('kind')} · {r.get('kind')} · {start:#x}–{start + size:#x} · {human_size(size)}"
            f" · {r.get('perms') or '-'}" + (f" · {', '.join(flags)}" if flags else ""))


def _label_key(item: dict) -> str:
    if item["gap"]:
        return _basename(item["name"]) if item["gap_kind"] != "unreadable" else ""
    kind, name = item["kind"], item["name"]
    if kind == "file":
        return _basename(name)
    if kind in ("heap", "stack", "vdso", "kernel"):
        return name or kind
    return ""


def layout_map(snapshot: dict) -> dict | None:
    """Lay the snapshot's mappings out in address order: each a block whose width grows with log(size),
    holes in the address space drawn as breaks, rows wrapped; register sets and notes as a strip of threads."""
    items = []
    for r in snapshot.get("regions") or []:
        if not _is_memory(r):
            continue
        start = _int(r.get("start"))
        if start is None:
            continue
        size = int(r.get("size") or 0)
        perms = r.get("perms") or ""
        items.append({"gap": False, "start": start, "end": start + size, "size": size, "kind": r.get("kind"),
                      "name": r.get("name") or "", "perms": perms, "guard": perms.startswith("---"),
                      "locked": bool(r.get("locked")), "dont_dump": bool(r.get("dont_dump")),
                      "title": _region_title(r)})
    for g in snapshot.get("gaps") or []:
        start = _int(g.get("start"))
        if start is None:
            continue
        size = int(g.get("size") or 0)
        kind = g.get("kind") or "unreadable"
        items.append({"gap": True, "gap_kind": kind, "start": start, "end": start + size, "size": size,
                      "kind": kind, "name": g.get("name") or "", "perms": "", "guard": False, "locked": False,
                      "dont_dump": False,
                      "title": f"not in the snapshot ({kind}): {g.get('name') or 'anonymous'} · {start:#x}–"
                               f"{start + size:#x} · {human_size(size)} · {g.get('reason') or ''}"})
    items.sort(key=lambda it: (it["start"], it["gap"], it["end"]))
    strip = _layout_strip(snapshot)
    if not items and not strip:
        return None

    # guarded: a mapping whose neighbours on both sides are PROT_NONE guard pages (sodium_malloc); such
    # mappings, and locked or never-dumped ones, are drawn wider: they are where the story usually is
    for i, it in enumerate(items):
        it["guarded"] = (not it["guard"] and 0 < i < len(items) - 1
                         and items[i - 1]["guard"] and items[i - 1]["end"] == it["start"]
                         and items[i + 1]["guard"] and items[i + 1]["start"] == it["end"])
        notable = it["guarded"] or it["locked"] or it["dont_dump"]
        it["min_w"] = NOTABLE_MIN_W if notable else BLOCK_MIN_W

    rows: list[list[dict]] = [[]]
    breaks: list[dict] = []
    x, row = 0.0, 0
    prev = None
    scale = _log_scale(items)
    for it in items:
        w = round(max(it["min_w"], BLOCK_MIN_W + scale * _pages_log(it["size"])), 1)
        hole = prev is not None and it["start"] > prev["end"]
        lead = BREAK_W if hole else SEP if prev is not None else 0.0
        if x > 0 and x + lead + w > MAP_MAX_W + 0.5:
            if hole:
                breaks.append(_break(x, row, it["start"] - prev["end"]))
            row, x = row + 1, 0.0
            rows.append([])
            lead = 0.0
        elif hole:
            breaks.append(_break(x, row, it["start"] - prev["end"]))
        x += lead
        it.update(x=x, w=w, row=row, y=row * ROW_H + PIN_LANE)
        rows[-1].append(it)
        x += w
        prev = it
    width = max((it["x"] + it["w"] for it in items), default=0.0)

    labels = _place_labels(items)
    blocks = []
    for it in items:
        cls = ["b"]
        if it["gap"]:
            cls.append(f"g-{it['gap_kind']}")
        elif it["guard"]:
            cls.append("guard")
        else:
            cls.append(f"k-{it['kind']}")
            if it["kind"] == "file" and "x" in it["perms"]:
                cls.append("exec")
        blocks.append({"x": _num(it["x"]), "y": _num(it["y"]), "w": _num(it["w"]), "cls": " ".join(cls),
                       "title": it["title"], "locked": it["locked"], "dont_dump": it["dont_dump"],
                       "lock_y": _num(it["y"]), "dd_y": _num(it["y"] + BLOCK_H - 3.5)})
    row_count = len(rows) if items else 0
    height = row_count * ROW_H
    if strip:
        for cell in strip["cells"]:
            cell["y"] = height + 14.0
        for group in strip["groups"]:
            group["y"] = _num(height + 9.0)
        strip["y"] = height
        strip["label_y"] = _num(height + 9.0)
        width = max(width, strip["width"])
        height += STRIP_H
    regions_count = sum(1 for it in items if not it["gap"])
    return {"items": items, "blocks": blocks, "breaks": breaks, "labels": labels, "strip": strip,
            "width": _num(math.ceil(width) + 2), "height": _num(height), "block_h": _num(BLOCK_H),
            "regions": regions_count, "gaps": sum(1 for it in items if it["gap"])}


def _break(x: float, row: int, hole: int) -> dict:
    """Two slashes: the address space goes on, unmapped, for `hole` bytes."""
    x0, y0 = x + 2.0, row * ROW_H + PIN_LANE
    y1, y2 = y0 + 6.0, y0 + BLOCK_H - 6.0
    d = (f"M{_num(x0 + 1)},{_num(y2)} L{_num(x0 + 5)},{_num(y1)} "
         f"M{_num(x0 + 6)},{_num(y2)} L{_num(x0 + 10)},{_num(y1)}")
    return {"x": _num(x0), "y": _num(y0), "d": d, "title": f"unmapped: a hole of {human_size(hole)}"}


def _place_labels(items: list[dict]) -> list[dict]:
    """Names under groups of adjacent blocks (libc.so.6 under its five mappings), in two lanes, never overlapping."""
    groups: list[dict] = []
    for it in items:
        key = _label_key(it)
        if it.get("guarded"):
            key = "guarded page"
        last = groups[-1] if groups else None
        if (last and key and last["key"] == key and last["row"] == it["row"]
                and last["end_addr"] == it["start"]):
            last["x2"] = it["x"] + it["w"]
            last["end_addr"] = it["end"]
        else:
            groups.append({"key": key, "row": it["row"], "x1": it["x"], "x2": it["x"] + it["w"],
                           "end_addr": it["end"], "strong": it["kind"] in ("heap", "stack") or key == "guarded page"})
    lanes_end: dict[tuple[int, int], float] = {}
    labels = []
    for g in groups:
        if not g["key"]:
            continue
        text = g["key"] if len(g["key"]) <= 26 else g["key"][:25] + "…"
        tw = len(text) * CHAR_W
        center = (g["x1"] + g["x2"]) / 2
        left = max(0.0, center - tw / 2)
        for lane in (0, 1):
            if lanes_end.get((g["row"], lane), -1e9) + 6 <= left:
                lanes_end[(g["row"], lane)] = left + tw
                y = g["row"] * ROW_H + PIN_LANE + BLOCK_H + 11 + lane * LABEL_LANE
                labels.append({"x": _num(left + tw / 2), "y": _num(y), "text": text, "strong": g["strong"],
                               "tick": lane == 1, "tx": _num(center),
                               "ty1": _num(g["row"] * ROW_H + PIN_LANE + BLOCK_H + 1),
                               "ty2": _num(y - 9)})
                break
    return labels


def _layout_strip(snapshot: dict) -> dict | None:
    """Register sets (per thread) and other core notes, as a small strip below the map."""
    notes = [r for r in snapshot.get("regions") or [] if not _is_memory(r)]
    if not notes:
        return None
    threads: dict[object, list[dict]] = {}
    others = []
    for r in notes:
        if r.get("kind") == "registers":
            threads.setdefault(r.get("thread"), []).append(r)
        else:
            others.append(r)
    cells, groups = [], []
    x = 62.0
    for thread, regs in threads.items():
        gx = x
        for r in regs:
            name = str(r.get("register_set") or r.get("name") or "")
            short = name.removeprefix("NT_").removeprefix("X86_")
            w = max(44.0, len(short) * CHAR_W + 10)
            cells.append({"x": x, "w": w, "cls": "b k-registers", "text": short, "key": _note_key(r),
                          "title": f"thread {thread} · {name} · {human_size(int(r.get('size') or 0))} "
                                   f"(register set saved in the core)"})
            x += w + SEP
        groups.append({"x": _num(gx), "text": f"thread {thread}" if thread is not None else "thread ?"})
        x += 10.0
    if others:
        groups.append({"x": _num(x), "text": "notes"})
        for r in others:
            cells.append({"x": x, "w": 14.0, "cls": "b k-note", "text": "", "key": _note_key(r),
                          "title": f"{r.get('name') or 'note'} · {human_size(int(r.get('size') or 0))} (core note)"})
            x += 14.0 + SEP
    for c in cells:
        c["sx"], c["sw"], c["tx"] = _num(c["x"]), _num(c["w"]), _num(c["x"] + c["w"] / 2)
    return {"cells": cells, "groups": groups, "width": x, "threads": len(threads), "notes": len(others)}


def _note_key(r: dict) -> tuple:
    return (r.get("kind"), r.get("name"), r.get("thread"), r.get("register_set"))


def overlay(layout: dict, verdict: dict) -> dict:
    """Per verdict, on top of its snapshot's map: where the hits fall, and the intended region outlined."""
    items = layout["items"]
    pins, outline = [], None
    intended = _int(verdict.get("intended_address"))
    if intended is not None:
        for it in items:
            if it["start"] <= intended < it["end"] and not (outline and not outline["gap"]):
                outline = {"gap": it["gap"], "x": _num(it["x"] - 2.5), "y": _num(it["y"] - 2.5),
                           "w": _num(it["w"] + 5), "h": _num(BLOCK_H + 5),
                           "title": f"intended region: where the scenario keeps the secret ({intended:#x})"
                                    + (" — not in this snapshot" if it["gap"] else "")}
    outcome = verdict.get("outcome")
    tone = "fail" if outcome == "FAIL" else "seen" if verdict.get("expect") == "present" else "obs"
    strip = layout.get("strip")
    for n, hit in enumerate(verdict.get("hits") or [], 1):
        region = hit.get("region") or {}
        address = _int(hit.get("address"))
        what = ("full copy" if hit.get("full") else _fragment_text(hit)) + f" ({hit.get('encoding')})"
        title = f"hit {n}: {what} in {region.get('name') or region.get('kind')}" + (
            f" at {address:#x}" if address is not None else "")
        if hit.get("pid") not in (None, (verdict.get("snapshot") or {}).get("pid")):
            continue    # in another process of the tree: not on this map of the target's memory
        if address is not None and _is_memory(region):
            for it in items:
                if not it["gap"] and it["start"] <= address < it["end"]:
                    frac = (address - it["start"]) / max(it["size"], 1)
                    x = it["x"] + min(it["w"] - 2.0, max(2.0, frac * it["w"]))
                    pins.append({"x": _num(x), "y": _num(it["y"]), "y2": _num(it["y"] + BLOCK_H),
                                 "cy": _num(it["y"] - 14), "tone": tone, "title": title, "n": n})
                    break
        elif strip:
            key = _note_key(region)
            for c in strip["cells"]:
                if c["key"] == key:
                    pins.append({"x": c["tx"], "y": _num(c["y"]), "y2": _num(c["y"] + 20), "cy": _num(c["y"] - 6),
                                 "tone": tone, "title": title, "n": n})
                    break
    return {"pins": pins, "outline": outline}


# --- the view --------------------------------------------------------------------------------------------

def _fragment_text(hit: dict) -> str:
    fragment = hit.get("fragment")
    return fragment_text(hit.get("encoding") or "", fragment) if isinstance(fragment, list) and len(fragment) == 2 \
        else "fragment"


def _hit_view(hit: dict, secrets_shown: bool, n: int, dumped: bool) -> dict:
    region = hit.get("region") or {}
    return {
        "n": n, "address": hit.get("address") or "—", "encoding": hit.get("encoding") or "?",
        "full": bool(hit.get("full")),
        "copy_text": "full copy" if hit.get("full") else _fragment_text(hit),
        "length": hit.get("length"), "intended": bool(hit.get("in_intended_region")),
        "guarded": bool(hit.get("guarded")), "fingerprint": hit.get("fingerprint") or "",
        "region_name": region.get("name") or "", "region_base": _basename(region.get("name") or ""),
        "region_kind": region.get("kind") or "?", "perms": region.get("perms") or "",
        "region_range": (f"{region.get('start')} + {human_size(int(region.get('size') or 0))}"
                         if _is_memory(region) else
                         f"thread {region.get('thread')} {region.get('register_set') or ''}".strip()),
        "flags": _flags(region), "hexdump": hexdump(hit, secrets_shown) if dumped else None,
        "process": hit_process(hit),
    }


def _expect_text(expect: str) -> str:
    return {"present": "expect present", "absent": "expect absent", "observe": "observe only",
            "crash": "expect a crash"}.get(expect, expect)


class _MapCache:
    """A snapshot's map is drawn once; a later snapshot with the very same regions and gaps refers to it. At most
    MAPS_MAX are drawn: the hit table says where each copy is, the maps only show it."""

    def __init__(self, ids: _Ids) -> None:
        self.ids = ids
        self.seen: dict[str, tuple[str, dict]] = {}
        self.left_out = 0

    def get(self, snapshot: dict) -> tuple[dict | None, str | None, bool]:
        key = json.dumps([snapshot.get("regions"), snapshot.get("gaps")], sort_keys=True)
        if key in self.seen:
            map_id, layout = self.seen[key]
            return layout, map_id, True
        if len(self.seen) >= MAPS_MAX:
            self.left_out += 1
            return None, None, False
        layout = layout_map(snapshot)
        if layout is None:
            return None, None, False
        map_id = self.ids.make("map", len(self.seen) + 1)
        self.seen[key] = (map_id, layout)
        return layout, map_id, False


def _subject(v: dict) -> str:
    """What a verdict looked for; a document written before the field existed looked for the secret alone."""
    subject = v.get("subject")
    return subject if isinstance(subject, str) and subject else SECRET


def _subject_title(subject: str) -> str:
    if subject.startswith("derived:"):
        return (f"{subject}: a value the target derived from the secret, judged with its own expectation "
                "at this checkpoint and method")
    if subject == CRASH_SUBJECT:
        return f"{subject}: how the target died, against the signals the checkpoint accepts (its core is judged apart)"
    return f"{subject}: the value this verdict looked for"


# Verdicts shown in full (the map, every hit with its hexdump, the snapshot's gaps): those that explain a failure or
# a missing piece of evidence. The others are one line each (their reason names the first hits), passes collapsed.
DETAILED = ("FAIL", "INCONCLUSIVE")
# A map (the snapshot's address space with its hits pinned) for the verdicts whose copies fail: it shows where they
# are. Of a suite's snapshot (~60 KiB of SVG for 160 regions) at most MAPS_MAX, so a run where everything fails stays
# a page a browser opens at once.
MAPPED = ("FAIL",)
MAPS_MAX = 16
# Of a detailed verdict's hits, the first HITS_SHOWN in its table, the first DUMPS_SHOWN with their hexdump; results.json
# holds every one.
HITS_SHOWN, DUMPS_SHOWN = 8, 3


def _verdict_view(v: dict, vid: str, secrets_shown: bool, maps: _MapCache, control_word: str) -> dict:
    detailed = v.get("outcome") in DETAILED
    snap = v.get("snapshot") if isinstance(v.get("snapshot"), dict) else None
    snapshot = None
    if snap is not None and detailed:
        layout, map_id, reused = maps.get(snap) if v.get("outcome") in MAPPED and v.get("hits") else (None, None, False)
        gaps = snap.get("gaps") or []
        gap_kinds: dict[str, int] = {}
        for g in gaps:
            gap_kinds[g.get("kind")] = gap_kinds.get(g.get("kind"), 0) + 1
        snapshot = {
            "method": snap.get("method"), "captured": human_size(snap.get("captured_bytes")),
            "duration": snap.get("duration_s"), "notes": snap.get("notes") or [], "kept_path": snap.get("kept_path"),
            "not_produced": snap.get("not_produced"), "gaps": gaps,
            "gap_summary": ", ".join(f"{n} {k}" for k, n in gap_kinds.items()),
            "layout": layout, "map_id": map_id, "reused": reused,
            "overlay": overlay(layout, v) if layout else None,
        }
    scan = v.get("scan") or {}
    subject = _subject(v)
    hits = (v.get("hits") or []) if detailed else []
    return {
        "id": vid, "scenario": v.get("scenario"), "repetition": v.get("repetition"),
        "checkpoint": v.get("checkpoint"), "method": v.get("method"), "expect": v.get("expect"),
        # None for the planted secret: only other subjects are marked
        "subject_key": subject, "subject": None if subject == SECRET else subject,
        "subject_title": _subject_title(subject), "control_word": control_word,
        "expect_text": _expect_text(v.get("expect")), "why": v.get("why") or "", "outcome": v.get("outcome"),
        "reason": v.get("reason") or "", "canary_seen": v.get("canary_seen"),
        "intended_address": v.get("intended_address"),
        "scan": f"{human_size(scan.get('bytes'))} in {scan.get('duration_s')} s" if scan.get("bytes") else None,
        "detailed": detailed, "snapshot": snapshot,
        "hits": [_hit_view(h, secrets_shown, n, n <= DUMPS_SHOWN) for n, h in enumerate(hits[:HITS_SHOWN], 1)],
        "hit_count": len(v.get("hits") or []), "hits_more": max(0, len(hits) - HITS_SHOWN),
        "gate": _gate(v), "fingerprints": v.get("fingerprints") or [],
    }


def build_view(doc: dict) -> dict:
    ids = _Ids()
    maps = _MapCache(ids)
    secrets_shown = bool(doc.get("secrets_shown"))
    runs = doc.get("runs") or []
    verdicts = doc.get("verdicts") or []

    has_subjects = any(_subject(v) != SECRET for v in verdicts)
    targets: dict[str, str] = {}
    for r in runs:
        targets.setdefault(r.get("scenario"), r.get("target"))

    # verdict views, keyed by run
    by_run: dict[tuple, list[dict]] = {}
    all_views = []
    for v in verdicts:
        subject = _subject(v)
        vid = ids.make("v", v.get("scenario"), v.get("repetition"), v.get("checkpoint"), v.get("method"),
                       *(() if subject == SECRET else (subject,)))
        view = _verdict_view(v, vid, secrets_shown, maps,
                             "control" if targets.get(v.get("scenario")) in ADHOC_TARGETS else "canary")
        all_views.append(view)
        by_run.setdefault((v.get("scenario"), v.get("repetition")), []).append(view)

    # scenarios in the order they first appear, each with its runs
    scenarios: dict[str, dict] = {}
    run_keys = set()
    for r in runs:
        name = r.get("scenario")
        sc = scenarios.get(name)
        if sc is None:
            source = r.get("target_source") if isinstance(r.get("target_source"), dict) else None
            sc = scenarios[name] = {
                "name": name, "id": ids.make("s", name), "target": r.get("target") or "?",
                "language": LANGUAGES.get(str(r.get("target")), str(r.get("target") or "other")),
                "entry": r.get("entry"), "description": r.get("description") or "", "source": r.get("source"),
                "target_source": f"{source.get('path')}:{source.get('line')}" if source else None, "runs": []}
        key = (name, r.get("repetition"))
        run_keys.add(key)
        secret = r.get("secret") or {}
        sc["runs"].append({
            "id": ids.make("r", name, r.get("repetition")), "repetition": r.get("repetition"),
            "secret_form": secret.get("form"), "secret_length": secret.get("length"),
            "secret_sha": secret.get("sha256_prefix"), "canary_sha": r.get("canary_sha256_prefix"),
            "canary_label": "control" if r.get("target") in ADHOC_TARGETS else "canary",
            "pid": r.get("pid"), "exit": r.get("exit"), "notes": r.get("notes") or [], "error": r.get("error"),
            "skip_reason": r.get("skip_reason"), "target_output": r.get("target_output") or "",
            "duration": r.get("duration_s"), "verdicts": by_run.get(key, [])})
    # verdicts whose run is not in the document (tolerated: a hand-made or partial document)
    for key, views in by_run.items():
        if key in run_keys:
            continue
        name = key[0]
        sc = scenarios.setdefault(name, {"name": name, "id": ids.make("s", name), "target": "?", "language": "other",
                                         "entry": None, "description": "", "source": None, "target_source": None,
                                         "runs": []})
        sc["runs"].append({"id": ids.make("r", name, key[1]), "repetition": key[1], "secret_form": None,
                           "secret_length": None, "secret_sha": None, "canary_sha": None, "canary_label": "canary",
                           "pid": None, "exit": None,
                           "notes": [], "error": None, "skip_reason": None, "target_output": "", "duration": None,
                           "verdicts": views})
    curves = _curves(doc.get("series") or [])
    for sc in scenarios.values():
        sc["curves"] = curves.get(sc["name"], [])
        for chart in sc["curves"]:
            chart["id"] = ids.make("c", sc["name"], chart["title"])
        for run in sc["runs"]:
            run["detailed"] = [vd for vd in run["verdicts"] if vd["detailed"]]
            lines = [vd for vd in run["verdicts"] if not vd["detailed"]]
            run["lines"] = lines
            run["lines_open"] = any(vd["outcome"] != "PASS" for vd in lines)
            run["lines_counts"] = ", ".join(f"{n} {o}" for o, n in
                                            Counter(vd["outcome"] for vd in lines).most_common())
        sc["repeated"] = len(sc["runs"]) > 1
        sc["worst"] = worst(v["outcome"] for run in sc["runs"] for v in run["verdicts"])
        for run in sc["runs"]:
            run["worst"] = worst(v["outcome"] for v in run["verdicts"])

    # methods: the canonical ones first, then any other in order of appearance
    seen_methods = []
    for v in verdicts:
        if v.get("method") not in seen_methods:
            seen_methods.append(v.get("method"))
    methods = [m for m in snapshot_methods.names() if m in seen_methods] + \
        [m for m in seen_methods if m not in snapshot_methods.names()]

    grid = _findings(doc, all_views, scenarios, methods)
    summary = doc.get("summary") or {}
    counts = [{"outcome": o, "n": int(summary.get(o, 0) or 0)} for o in OUTCOMES]
    counts += [{"outcome": o, "n": int(n)} for o, n in summary.items() if o not in OUTCOMES]
    total = sum(c["n"] for c in counts) or 1
    for c in counts:
        c["pct"] = _num(round(100.0 * c["n"] / total, 2))
    machine = [{"key": k, "value": v if isinstance(v, str) else json.dumps(v, sort_keys=True)}
               for k, v in (doc.get("machine") or {}).items() if v is not None]
    exit_code = doc.get("exit_code")
    tool = doc.get("tool") or {}
    return {
        "title": f"remanence report · exit {exit_code}",
        "tool": f"{tool.get('name', 'remanence')} {tool.get('version', '')}".strip(),
        "started_at": doc.get("started_at"), "finished_at": doc.get("finished_at"),
        "interrupted": bool(doc.get("interrupted")), "secrets_shown": secrets_shown,
        "exit_code": exit_code, "exit_meaning": EXIT_MEANING.get(exit_code, ""),
        "exit_tone": {0: "PASS", 1: "FAIL", 3: "INCONCLUSIVE", 130: "ERROR"}.get(exit_code, "SKIP"),
        "counts": counts, "verdict_total": sum(c["n"] for c in counts), "run_total": len(runs),
        "scenario_total": len(scenarios), "machine": machine, "findings": grid, "methods": methods,
        "has_subjects": has_subjects,
        "scenarios": list(scenarios.values()), "has_maps": any(v["snapshot"] and v["snapshot"]["layout"]
                                                             for v in all_views),
        "maps_left_out": maps.left_out, "maps_max": MAPS_MAX,
        "schema_version": doc.get("schema_version"),
    }


# A mark per finding (findings.py's states), so a column of cells reads at a glance.
GLYPHS = {"full copy": "●", "found": "●", "mixed": "◑", "fragments": "◐", "clean": "○", "no copy found": "○",
          "no evidence": "?", "crash check": "✕"}
TONES = {True: "expected", False: "unexpected", None: "neutral"}


def _point(f: Finding) -> dict:
    """One finding as a findings cell shows it: the state (or the counts over repetitions), its mark, the regions,
    expected or not, and the gate's outcomes beside it."""
    outcomes = dict(f.gate)
    title = (f"{f.checkpoint} · {f.method}" + (f" · {f.subject}" if f.subject != SECRET else "")
             + f" · {_expect_text(f.expect)}: {f.text} over {f.runs} run(s) · "
             + ", ".join(f"{o} {n}" for o, n in f.gate))
    return {"kind": _slug(f.state), "word": f.counts or f.state, "glyph": GLYPHS.get(f.state, "·"),
            "tone": TONES[f.expected], "regions": ", ".join(f.regions), "title": title,
            "outcome": worst(outcomes), "outcomes": outcomes}


def _findings(doc: dict, views: list[dict], scenarios: dict[str, dict], methods: list[str]) -> list[dict]:
    """Findings first: per language, per scenario, a row per checkpoint (and subject other than the secret), a cell per
    method: the finding (findings.py: what the aggregates say was found, in which kinds of region, expected or not),
    with the gate's outcome beside it. A repeating checkpoint's steps share a row: a mark per step."""
    verdicts = doc.get("verdicts") or []
    steps = {(v.get("scenario"), v.get("checkpoint")): v["step"] for v in verdicts if isinstance(v.get("step"), dict)}
    views_by_key: dict[tuple, list[dict]] = {}
    for vd in views:
        views_by_key.setdefault((vd["scenario"], vd["checkpoint"], vd["method"], vd["subject_key"]), []).append(vd)
    rows: dict[tuple, dict] = {}
    for f in findings(doc):
        step = steps.get((f.scenario, f.checkpoint))
        checkpoint = step.get("checkpoint") if step else f.checkpoint
        row = rows.setdefault((f.scenario, checkpoint, f.subject), {
            "scenario": f.scenario, "checkpoint": checkpoint, "subject": None if f.subject == SECRET else f.subject,
            "stepped": step is not None, "by_method": {}})
        point = _point(f)
        matching = views_by_key.get((f.scenario, f.checkpoint, f.method, f.subject), [])
        target = next((vd for vd in matching if vd["outcome"] == point["outcome"]), matching[0] if matching else None)
        point["href"] = "#" + target["id"] if target else None
        point["gated"] = bool(matching) and all(vd["gate"] for vd in matching if vd["outcome"] == point["outcome"])
        row["by_method"].setdefault(f.method, []).append(point)
    groups: dict[str, dict] = {}
    placed: dict[str, dict] = {}
    for row in rows.values():
        name = row["scenario"]
        sc = placed.get(name)
        if sc is None:
            known = scenarios.get(name) or {"language": "other", "id": None, "description": "", "runs": []}
            group = groups.setdefault(known["language"], {"language": known["language"], "scenarios": []})
            sc = placed[name] = {"name": name, "id": known["id"], "description": known["description"],
                                 "runs": len(known["runs"]), "rows": []}
            group["scenarios"].append(sc)
        cells = []
        for m in methods:
            points = row["by_method"].get(m)
            if not points:
                cells.append({"method": m, "outcome": None})
                continue
            last = points[-1]
            tones = {p["tone"] for p in points}
            outcome = worst(o for p in points for o in p["outcomes"])
            first = next((p for p in points if p["outcome"] == outcome), last)
            cells.append({
                "method": m, "outcome": outcome, "kind": last["kind"], "word": last["word"], "glyph": last["glyph"],
                "tone": "unexpected" if "unexpected" in tones else "expected" if tones == {"expected"} else "neutral",
                "regions": last["regions"],
                "title": last["title"] if len(points) == 1 else
                f"{len(points)} steps, the word is the last one's: {last['title']}", "href": first["href"],
                "gated": all(p["gated"] for p in points if p["outcome"] == outcome),
                "steps": points if row["stepped"] else []})
        sc["rows"].append({"checkpoint": row["checkpoint"], "subject": row["subject"], "cells": cells,
                           "steps": max(map(len, row["by_method"].values())) if row["stepped"] else 0})
    return list(groups.values())


def _curves(series: list[dict]) -> dict[str, list[dict]]:
    """Per scenario, one chart per repeating checkpoint and subject: a line per method of the mean full copies per
    step over the repetitions that measured it, and a line of the rate (repetitions with a full copy); the document's
    series (document.series) are the data, nothing is recomputed from verdicts here."""
    charts: dict[tuple, dict] = {}
    for s in series:
        key = (s.get("scenario"), s.get("checkpoint"), s.get("subject"))
        chart = charts.setdefault(key, {"scenario": key[0], "checkpoint": key[1], "subject": key[2],
                                        "repetitions": len(s.get("repetitions") or []), "lines": []})
        chart["lines"].append(s)
    by_scenario: dict[str, list[dict]] = {}
    for chart in charts.values():
        by_scenario.setdefault(chart["scenario"], []).append(_chart(chart))
    return by_scenario


def _chart(chart: dict) -> dict:
    steps = max((len(s.get("steps") or []) for s in chart["lines"]), default=0)
    labels = {}
    for s in chart["lines"]:
        for st in s.get("steps") or []:
            labels.setdefault(st["index"], st["label"])
    count = max(labels, default=1)
    plot_w = CHART_W - CHART_LEFT - CHART_RIGHT
    top = max([1] + [max(c for c in st["full"] if c is not None) for s in chart["lines"] for st in s.get("steps") or []
                     if any(c is not None for c in st["full"])])

    def x(index: int) -> float:
        return CHART_LEFT + (plot_w * (index - 1) / (count - 1) if count > 1 else plot_w / 2)

    panels = [("copies", CHART_TOP, top), ("rate", CHART_TOP + PANEL_H + PANEL_GAP, 1)]
    lines = []
    for n, s in enumerate(chart["lines"]):
        colour = METHOD_COLOURS[n % len(METHOD_COLOURS)]
        for panel, y0, high in panels:
            points = []
            for st in s.get("steps") or []:
                measured = [c for c in st["full"] if c is not None]
                if not measured:
                    continue
                value = sum(measured) / len(measured) if panel == "copies" else st["found"] / st["measured"]
                fragments = sum(c for c in st["fragments"] if c is not None)
                title = (f"{s['method']}, step {st['index']} ({st['label']}): " +
                         (f"{_num(round(value, 2))} full cop{'y' if value == 1 else 'ies'} on average over {len(measured)} "
                          f"repetition(s), {fragments} fragment(s)" if panel == "copies" else
                          f"{st['found']} of {st['measured']} repetition(s) had a full copy"))
                points.append({"x": _num(round(x(st["index"]), 1)),
                               "y": _num(round(y0 + PANEL_H * (1 - value / high), 1)), "title": title})
            lines.append({"method": s["method"], "panel": panel, "colour": colour, "points": points,
                          "path": " ".join(f"{p['x']},{p['y']}" for p in points)})
    ticks = [{"x": _num(round(x(i), 1)), "text": str(i)} for i in sorted(labels)
             if count <= 12 or i in (1, count) or (i - 1) % max(1, round(count / 6)) == 0]
    subject = "" if chart["subject"] == SECRET else f" ({chart['subject']})"
    first, last = labels.get(1, ""), labels.get(count, "")
    return {
        "title": f"{chart['checkpoint']}{subject}: copies per step",
        "desc": f"Full copies of the {chart['subject']} found at each of {steps} steps of checkpoint {chart['checkpoint']} "
                f"(step 1: {first}; step {count}: {last}), one line per method: above, the mean over "
                f"{chart['repetitions']} repetition(s); below, the share of repetitions with at least one full copy.",
        "width": _num(CHART_W), "height": _num(CHART_TOP + 2 * PANEL_H + PANEL_GAP + 30),
        "left": _num(CHART_LEFT), "right": _num(CHART_W - CHART_RIGHT),
        "panels": [{"name": name, "top": _num(y0), "bottom": _num(y0 + PANEL_H), "mid": _num(y0 + PANEL_H / 2),
                    "high": ("100%" if name == "rate" else str(high)),
                    "axis": "copies" if name == "copies" else "rate"} for name, y0, high in panels],
        "ticks": ticks, "tick_y": _num(CHART_TOP + 2 * PANEL_H + PANEL_GAP + 12),
        "label_y": _num(CHART_TOP + 2 * PANEL_H + PANEL_GAP + 26), "xlabel": f"step: 1 = {first}, {count} = {last}",
        "lines": lines, "methods": [{"method": s["method"], "colour": METHOD_COLOURS[n % len(METHOD_COLOURS)]}
                                    for n, s in enumerate(chart["lines"])],
    }


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                             keep_trailing_newline=True)
    env.filters["size"] = human_size
    return env


@dataclass(frozen=True)
class HtmlReporter:
    format: str = "html"
    filename: str = "report.html"

    def render(self, doc: dict) -> str:
        return environment().get_template("report.html.j2").render(v=build_view(doc))
