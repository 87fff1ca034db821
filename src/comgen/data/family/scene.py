"""Render a family category's scene: a plan of items (normal, or with one rule broken), then pixels.

Why a plan first: a logical anomaly is a change of the plan (one item fewer, one more, another colour, size,
place or order) that breaks exactly one rule, and the drawing code below never needs to know which. Items that
are ``ghost`` are placed but not painted: their mask is where a missing part should be (LOCO marks it so).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from comgen.data.family.spec import CARRIER_RANGE, FREE_COUNT, SLOT_RANGE, Color, FamilySpec, PartType
from comgen.data.synth import draw
from comgen.data.synth.draw import Canvas

ELONGATED = ("rod", "bolt", "cable")


@dataclass
class Item:
    """One part to draw: where (``zone``: "well:r:c", "slot:i", "comp:k", "left", "right" or "field"), how big,
    which colour, and whether it is a ghost (missing part) or part of the defect's region."""

    label: int
    zone: str
    scale: float
    color: Color
    slots: int = 0
    ghost: bool = False
    region: bool = False


class LayoutError(Exception):
    """The scene did not fit; the caller draws it again with fresh random numbers."""


# -- plans ------------------------------------------------------------------------------------------

def _zone(spec: FamilySpec, label: int) -> str:
    if spec.layout == "tray":
        return f"comp:{spec.zones[label]}"
    if spec.layout == "free" and label in spec.zones:
        return "left"
    return "field"


def _item(spec: FamilySpec, rng: np.random.Generator, label: int, zone: str | None = None) -> Item:
    part = spec.part(label)
    slots = int(np.clip(part.sides, *SLOT_RANGE)) if part.shape == "connector" else 0
    return Item(label, zone or _zone(spec, label), part.radius * float(rng.uniform(0.96, 1.04)), part.colors[0],
                slots)


def _count(rng: np.random.Generator, label: int, fixed: dict[int, int]) -> int:
    if label in fixed:
        return fixed[label]
    return int(rng.integers(FREE_COUNT[0], FREE_COUNT[1] + 1))


def normal_plan(spec: FamilySpec, rng: np.random.Generator) -> list[Item]:
    """Items of a normal scene: every rule holds."""
    fixed: dict[int, int] = {}
    placed: set[int] = set()
    items: list[Item] = []
    geo = spec.geometry
    for rule in spec.rules:
        if rule.kind == "position" and spec.layout == "grid":
            rows, cols = geo.grid
            for r, t in enumerate(rule.a):
                items += [_item(spec, rng, t, f"well:{r}:{c}") for c in range(cols)]
            placed |= set(rule.a)
        elif rule.kind == "position" and spec.layout == "row":
            items += [_item(spec, rng, t, f"slot:{i}") for i, t in enumerate(spec.pattern)]
            placed |= set(rule.a)
        elif rule.kind == "count" and len(rule.a) == 1:
            fixed[rule.a[0]] = rule.n
        elif rule.kind == "relation":
            nb = int(rng.integers(1, 3))
            fixed[rule.b], fixed[rule.a[0]] = nb, rule.n * nb
        elif rule.kind == "attribute" and rule.n == 0:
            fixed[rule.b] = int(rng.integers(CARRIER_RANGE[0], CARRIER_RANGE[1] + 1))
        elif rule.kind == "one_of":
            first = bool(rng.random() < 0.5)
            fixed[rule.a[0]], fixed[rule.b] = int(first), int(not first)
    for part in spec.parts:
        if part.fixture or part.label in placed:
            continue
        items += [_item(spec, rng, part.label) for _ in range(_count(rng, part.label, fixed))]
    for rule in spec.rules:
        if rule.kind == "attribute" and rule.n == 1:  # the carrier's slots vary; the subject's colour follows
            for it in items:
                if it.label == rule.b:
                    it.slots = int(rng.integers(SLOT_RANGE[0], SLOT_RANGE[1] + 1))
        if rule.kind == "same_size":  # the pair shares one size, which varies between images
            s = float(rng.uniform(0.8, 1.2))
            for it in items:
                if it.label == rule.a[0]:
                    it.scale *= s
    _set_codes(spec, items)
    return items


def _code(items: list[Item], rule) -> int:
    """Palette index that the attribute rule's carrier selects in this plan."""
    carriers = [it for it in items if it.label == rule.b and not it.ghost]
    if rule.n == 1:
        return carriers[0].slots - SLOT_RANGE[0] if carriers else 0
    return len(carriers) - CARRIER_RANGE[0]


def _set_codes(spec: FamilySpec, items: list[Item]) -> None:
    for rule in spec.rules:
        if rule.kind == "attribute":
            palette = spec.part(rule.a[0]).colors
            idx = int(np.clip(_code(items, rule), 0, len(palette) - 1))
            for it in items:
                if it.label == rule.a[0]:
                    it.color = palette[idx]


def _ghost(items: list[Item], rng: np.random.Generator, pick: list[int]) -> None:
    it = items[pick[int(rng.integers(len(pick)))]]
    it.ghost = it.region = True


def broken_plan(spec: FamilySpec, rng: np.random.Generator, defect: str) -> list[Item]:
    """Items of a scene that breaks exactly the rule that lists ``defect``."""
    rule = next(r for r in spec.rules if defect in r.defects)
    items = normal_plan(spec, rng)
    if rule.kind in ("attribute", "same_size") and not any(it.label == rule.a[0] for it in items):
        raise LayoutError("no part to recolour or resize in this draw")
    of = lambda label: [i for i, it in enumerate(items) if it.label == label]  # noqa: E731
    if rule.kind == "count" and defect.startswith("missing"):
        _ghost(items, rng, [i for t in rule.a for i in of(t)])
    elif rule.kind == "count":  # extra
        items.append(replace(_like(spec, rng, items, rule.a[0]), region=True))
    elif rule.kind == "relation":
        if rng.random() < 0.5 and of(rule.a[0]):
            _ghost(items, rng, of(rule.a[0]))
        else:
            items.append(replace(_like(spec, rng, items, rule.a[0]), region=True))
    elif rule.kind == "attribute":
        palette = spec.part(rule.a[0]).colors
        right = int(np.clip(_code(items, rule), 0, len(palette) - 1))
        wrong = palette[(right + 1 + int(rng.integers(len(palette) - 1))) % len(palette)]
        for i in of(rule.a[0]):
            items[i].color, items[i].region = wrong, True
    elif rule.kind == "same_size":
        i = of(rule.a[0])[int(rng.integers(2))]
        items[i].scale *= 0.6 if rng.random() < 0.5 else 1.5
        items[i].region = True
    elif rule.kind == "position":
        _misplace(spec, rng, items, rule)
    elif rule.kind == "required":
        for i in of(rule.a[0]):
            items[i].ghost = items[i].region = True
    elif rule.kind == "one_of" and defect.startswith("both"):
        missing = rule.b if of(rule.a[0]) else rule.a[0]
        items.append(replace(_item(spec, rng, missing), region=True))
    elif rule.kind == "one_of":
        for i in of(rule.a[0]) + of(rule.b):
            items[i].ghost = items[i].region = True
    _set_codes(spec, [it for it in items if not (rule.kind == "attribute" and it.label == rule.a[0])])
    return items


def _like(spec: FamilySpec, rng: np.random.Generator, items: list[Item], label: int) -> Item:
    """A new item of ``label`` that matches its siblings (same size and colour), so only the count changes."""
    twins = [it for it in items if it.label == label]
    new = _item(spec, rng, label)
    if twins:
        new.scale, new.color, new.slots = twins[0].scale, twins[0].color, twins[0].slots
    return new


def _misplace(spec: FamilySpec, rng: np.random.Generator, items: list[Item], rule) -> None:
    if spec.layout in ("grid", "row"):
        key = (lambda it: it.zone.split(":")[1]) if spec.layout == "grid" else (lambda it: it.zone)
        pairs = []
        for i, a in enumerate(items):
            for j, b in enumerate(items):
                if i < j and a.label != b.label and a.label in rule.a and b.label in rule.a:
                    adjacent = spec.layout == "grid" or abs(int(key(a).split(":")[-1]) - int(key(b).split(":")[-1])) == 1
                    if adjacent:
                        pairs.append((i, j))
        i, j = pairs[int(rng.integers(len(pairs)))]
        items[i].zone, items[j].zone = items[j].zone, items[i].zone
        items[i].region = items[j].region = True
        return
    movable = [i for i, it in enumerate(items) if it.label in rule.a]
    if not movable:
        raise LayoutError("nothing to misplace")
    it = items[movable[int(rng.integers(len(movable)))]]
    if spec.layout == "tray":
        comps = len(spec.geometry.walls) + 1
        it.zone = f"comp:{(spec.zones[it.label] + 1 + int(rng.integers(comps - 1))) % comps}"
    else:
        it.zone = "right"
    it.region = True


# -- pixels -----------------------------------------------------------------------------------------

def shape_mask(cv: Canvas, part: PartType, x: float, y: float, scale: float, angle: float, slots: int) -> np.ndarray:
    """The part's pixels at (x, y) with radius ``scale`` and rotation ``angle`` (degrees)."""
    r, s = scale, part.shape
    if s == "disc":
        return draw.circle(cv, x, y, r)
    if s == "ring":
        return draw.ring(cv, x, y, r, 0.5 * r)
    if s == "square":
        return draw.rotated_rect(cv, x, y, 1.5 * r, 1.5 * r, angle)
    if s == "polygon":
        return draw.polygon(cv, x, y, 1.1 * r, part.sides, np.deg2rad(angle))
    if s == "rod":
        return draw.rotated_rect(cv, x, y, 2.4 * r, 0.55 * r, angle)
    if s == "bolt":
        t = np.deg2rad(angle)
        shaft = draw.rotated_rect(cv, x, y, 2.2 * r, 0.45 * r, angle)
        hx, hy = x + 1.1 * r * np.cos(t), y + 1.1 * r * np.sin(t)
        return shaft | draw.rotated_rect(cv, hx, hy, 0.5 * r, 1.0 * r, angle)
    if s == "cable":
        t = np.deg2rad(angle)
        d = np.array([np.cos(t), np.sin(t)]) * 1.3 * r
        n = np.array([-np.sin(t), np.cos(t)]) * 0.6 * r
        pts = draw.bezier((x - d[0], y - d[1]), (x + n[0], y + n[1]), (x + d[0], y + d[1]))
        return draw.polyline(cv, [tuple(p) for p in pts], 0.3 * r)
    if s == "connector":
        return _connector(cv, x, y, r, slots)
    raise ValueError(f"unknown shape {s!r}")


def _connector(cv: Canvas, x: float, y: float, r: float, slots: int) -> np.ndarray:
    """A body with ``slots`` rectangular openings in a row (holes in the mask)."""
    w, h = 2.4 * r, 1.3 * r
    body = draw.rect(cv, x - w / 2, y - h / 2, x + w / 2, y + h / 2)
    k = max(slots, 1)
    x0 = cv.px(x - w / 2)
    x1 = cv.px(x + w / 2)
    y0, y1 = cv.px(y - 0.22 * h), cv.px(y + 0.22 * h)
    step = (x1 - x0) / (2 * k + 1)
    for i in range(k):
        a = int(round(x0 + (2 * i + 1) * step))
        b = max(a + 1, int(round(x0 + (2 * i + 2) * step)) - 1)
        body[y0:y1 + 1, a:b] = False
    return body


def _anchor(spec: FamilySpec, zone: str, off: tuple[float, float]) -> tuple[float, float] | None:
    geo = spec.geometry
    if zone.startswith("well:"):
        _, r, c = zone.split(":")
        x0, y0, x1, y1 = geo.grid_box
        rows, cols = geo.grid
        return (x0 + (int(c) + 0.5) * (x1 - x0) / cols + off[0], y0 + (int(r) + 0.5) * (y1 - y0) / rows + off[1])
    if zone.startswith("slot:"):
        i = int(zone.split(":")[1])
        return 0.06 + (i + 0.5) * 0.88 / geo.row_slots + off[0], geo.row_y + off[1]
    return None


def zone_box(spec: FamilySpec, zone: str, off: tuple[float, float]) -> tuple[float, float, float, float]:
    """The free-placement box (x0, y0, x1, y1) of a zone."""
    geo = spec.geometry
    x0, y0, x1, y1 = geo.field
    if zone.startswith("comp:"):
        k = int(zone.split(":")[1])
        edges = (geo.tray_box[0], *geo.walls, geo.tray_box[2])
        return edges[k] + 0.02 + off[0], y0 + 0.02 + off[1], edges[k + 1] - 0.02 + off[0], y1 - 0.02 + off[1]
    if zone == "left":
        return x0, y0, 0.46, y1
    if zone == "right":
        return 0.54, y0, x1, y1
    return x0, y0, x1, y1


def _draw_fixture(cv: Canvas, spec: FamilySpec, off: tuple[float, float]) -> None:
    fixtures = [p for p in spec.parts if p.fixture]
    if not fixtures:
        return
    fx = fixtures[0]
    rng, geo, ox, oy = cv.rng, spec.geometry, off[0], off[1]
    colour = draw.jitter_color(rng, fx.colors[0], 6)
    darker = tuple(0.8 * c for c in colour)
    if spec.layout == "grid":
        x0, y0, x1, y1 = geo.grid_box
        cv.paint(draw.rect(cv, x0 + ox, y0 + oy, x1 + ox, y1 + oy), colour, fx.label, texture=fx.texture)
        rows, cols = geo.grid
        cw, ch = (x1 - x0) / cols, (y1 - y0) / rows
        for r in range(rows):
            for c in range(cols):
                cx, cy = x0 + (c + 0.5) * cw + ox, y0 + (r + 0.5) * ch + oy
                cv.paint(draw.rect(cv, cx - 0.42 * cw, cy - 0.42 * ch, cx + 0.42 * cw, cy + 0.42 * ch), darker, fx.label)
    elif spec.layout == "row":
        cv.paint(draw.rect(cv, 0.03 + ox, geo.row_y - 0.1 + oy, 0.97 + ox, geo.row_y + 0.1 + oy), colour, fx.label,
                 texture=fx.texture)
    elif spec.layout == "tray":
        x0, y0, x1, y1 = geo.tray_box
        cv.paint(draw.rect(cv, x0 + ox, y0 + oy, x1 + ox, y1 + oy), colour, fx.label, texture=fx.texture)
        for w in geo.walls:
            cv.paint(draw.rect(cv, w - 0.01 + ox, y0 + oy, w + 0.01 + ox, y1 + oy), darker, fx.label)


def _angle(rng: np.random.Generator, part: PartType, zone: str) -> float:
    if zone.startswith(("slot:", "well:")) and part.shape in ELONGATED:
        return 90.0 + float(rng.uniform(-8, 8))  # upright, so a row of them fits side by side
    return float(rng.uniform(0, 180))


def render_objects(spec: FamilySpec, rng: np.random.Generator, size: int,
                   items: list[Item]) -> tuple[Canvas, list[np.ndarray]]:
    """Draw the fixture, then anchored items (wells, slots), then freely placed ones; returns the canvas (not yet
    finished: structural damage may follow) and the defect's regions."""
    cv = Canvas(size, rng, spec.background)
    off = (float(rng.uniform(-0.012, 0.012)), float(rng.uniform(-0.012, 0.012)))
    _draw_fixture(cv, spec, off)
    occupied = np.zeros((size, size), bool)
    gap = max(2, cv.px(0.012))
    regions: list[np.ndarray] = []
    order = sorted(range(len(items)), key=lambda i: _anchor(spec, items[i].zone, off) is None)
    for i in order:
        it = items[i]
        part = spec.part(it.label)
        anchor = _anchor(spec, it.zone, off)
        angle = _angle(rng, part, it.zone)
        if anchor is not None:
            x, y = anchor[0] + rng.uniform(-0.008, 0.008), anchor[1] + rng.uniform(-0.008, 0.008)
            mask = shape_mask(cv, part, x, y, it.scale, angle, it.slots)
            if (draw.dilate(mask, gap) & occupied).any():
                raise LayoutError("anchored part overlaps")
        else:
            x0, y0, x1, y1 = zone_box(spec, it.zone, off)
            region = draw.rect(cv, x0, y0, x1, y1)
            got = draw.place(cv, lambda x, y: (shape_mask(cv, part, x, y, it.scale, _angle(rng, part, it.zone),
                                                          it.slots), None),
                             region, occupied, gap=gap, clearance=0.5 * it.scale)
            if got is None:
                raise LayoutError(f"{part.name} does not fit")
            mask = got[0]
        occupied |= mask
        if not it.ghost:
            cv.paint(mask, draw.jitter_color(rng, it.color, 6), it.label, texture=part.texture,
                     shade=0.2 if part.shape in ("disc", "ring") else 0.0)
        if it.region:
            regions.append(mask if it.ghost else draw.dilate(mask, 1))
    return cv, regions
