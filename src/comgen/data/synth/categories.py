"""The four synthetic categories, each modelled on the logical rules of one MVTec LOCO category.

- ``breakfast_tray`` (breakfast_box): fixed compartments and item counts.
- ``pushpin_grid`` (pushpins): exactly one yellow pin per grid cell, separators intact.
- ``screw_bag`` (screw_bag): fixed part counts at random positions, screws of full length.
- ``cable_pair`` (splicing_connectors): both connectors have the same size; the cable joins them and its
  colour encodes that size.

Each category renders a scene (normal, one logical or one structural defect) and checks the rules on a
truth label map plus the RGB image (colour rules). The checker reads geometry from the label map only
(tray/box/connector bounds), so it works on any pose jitter and on edited label maps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from comgen.data.synth import draw
from comgen.data.synth.base import (STRUCTURAL, Scene, add_structural, bbox, color_rule, components,
                                    hue_distance, hue_sat, median_rgb)
from comgen.data.synth.draw import Canvas


@dataclass(frozen=True)
class Category:
    """Static description of a category: part names, rules, defect types and their GT saturation."""

    name: str
    parts: dict[int, str]
    rules: tuple[str, ...]
    logical: tuple[str, ...]
    items: tuple[int, ...]  # part labels that structural defects may hit
    structural: tuple[str, ...] = STRUCTURAL

    def render(self, rng: np.random.Generator, size: int, defect: str | None) -> Scene:
        for _ in range(200):  # a failed placement restarts the scene with fresh draws (still seeded)
            cv = Canvas(size, rng, self.background)
            regions = self._draw(cv, defect if defect in self.logical else None)
            if regions is None:
                continue
            if defect in self.structural:
                regions = [add_structural(cv, defect, self.items)]
            return Scene(image=draw.finish(cv), labels=cv.labels, defect=defect, regions=regions)
        raise RuntimeError(f"{self.name}: could not lay out a scene at {size} px")

    background = (60, 62, 68)  # class attribute (not a field): each category overrides it

    def _draw(self, cv: Canvas, defect: str | None) -> list[np.ndarray] | None:
        raise NotImplementedError

    def check(self, labels: np.ndarray, image: np.ndarray) -> list[str]:
        raise NotImplementedError

    def truth_info(self) -> dict:
        """Extra keys of ``truth/parts.json`` (the family's categories add their rule types)."""
        return {}


def _jit(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _nominal(size: int, area_frac: float, keep: float = 0.3) -> float:
    """Minimum component area (pixels) counted as an item: ``keep`` of its nominal area."""
    return max(3.0, keep * area_frac * size * size)


# -- breakfast tray ---------------------------------------------------------------------------------

ORANGE_R, LIME_R = 0.085, 0.07
ORANGE, LIME = (236, 136, 28), (118, 188, 52)


class BreakfastTray(Category):
    def _draw(self, cv: Canvas, defect: str | None) -> list[np.ndarray] | None:
        rng = cv.rng
        ox, oy = rng.uniform(-0.025, 0.025, 2)
        x0, y0, x1, y1 = 0.06 + ox, 0.12 + oy, 0.94 + ox, 0.88 + oy
        mid = (x0 + x1) / 2
        cv.paint(draw.rect(cv, x0, y0, x1, y1), draw.jitter_color(rng, (226, 222, 208), 8), 1, texture=0.015)
        cv.paint(draw.rect(cv, mid - 0.012, y0, mid + 0.012, y1), draw.jitter_color(rng, (188, 184, 172), 6), 1)
        left = draw.rect(cv, x0 + 0.025, y0 + 0.025, mid - 0.025, y1 - 0.025)
        right = draw.rect(cv, mid + 0.025, y0 + 0.025, x1 - 0.025, y1 - 0.025)
        regions: list[np.ndarray] = []
        cereal = draw.rect(cv, mid + 0.04, y0 + 0.05, x1 - 0.04, y1 - 0.05)
        for _ in range(4):  # ragged edge of the heap
            cereal |= draw.circle(cv, _jit(rng, mid + 0.08, x1 - 0.08), _jit(rng, y0 + 0.08, y1 - 0.08), 0.08)
        cereal &= right
        if defect == "missing_cereal":
            regions.append(cereal)
        else:
            cv.paint(cereal, draw.jitter_color(rng, (168, 112, 56), 10), 4, texture=0.14)
        occupied = np.zeros_like(left)

        def fruit(r: float):
            return lambda x, y: (draw.circle(cv, x, y, r * rng.uniform(0.93, 1.07)), None)

        def put(region: np.ndarray, r: float, color, label: int | None) -> np.ndarray | None:
            nonlocal occupied
            got = draw.place(cv, fruit(r), region, occupied, gap=max(2, cv.px(0.02)), clearance=0.9 * r)
            if got is None:
                return None
            occupied = occupied | got[0]
            if label is not None:
                cv.paint(got[0], draw.jitter_color(rng, color, 10), label, texture=0.03, shade=0.3)
            return got[0]

        orange, lime = ORANGE, LIME
        n_orange = 1 if defect in ("missing_orange", "misplaced_orange") else 2
        for _ in range(n_orange):
            if put(left, ORANGE_R, orange, 2) is None:
                return None
        for i in range(2 if defect == "extra_lime" else 1):
            m = put(left, LIME_R, lime, 3)
            if m is None:
                return None
            if i == 1:
                regions.append(draw.dilate(m, 1))
        if defect == "missing_orange":
            m = put(left, ORANGE_R, orange, None)  # where the second orange should be
            if m is None:
                return None
            regions.append(draw.dilate(m, 1))
        if defect == "misplaced_orange":
            occupied = np.zeros_like(occupied)
            m = put(right, ORANGE_R, orange, 2)
            if m is None:
                return None
            regions.append(draw.dilate(m, 1))
        return regions

    def check(self, labels: np.ndarray, image: np.ndarray) -> list[str]:
        s = labels.shape[0]
        box = bbox(labels > 0)
        if box is None:
            return ["no tray in the image"]
        y0, x0, y1, x1 = box
        mid = (x0 + x1) / 2
        msgs = []
        for label, name, r, want, ref in ((2, "orange", ORANGE_R, 2, ORANGE), (3, "lime", LIME_R, 1, LIME)):
            comps = components(labels == label, _nominal(s, math.pi * r * r))
            msgs += color_rule(labels, image, label, name, ref, _nominal(s, math.pi * r * r))
            n_left = sum(cx < mid for _, _, cx, _ in comps)
            if n_left != want:
                msgs.append(f"fruit compartment holds {n_left} {name}(s), expected {want}")
            if len(comps) - n_left:
                msgs.append(f"{len(comps) - n_left} {name}(s) in the cereal compartment")
        xm = int(round(mid))
        cereal = labels == 4
        right_frac = cereal[y0:y1 + 1, xm:x1 + 1].mean()
        left_frac = cereal[y0:y1 + 1, x0:xm].mean()
        if right_frac < 0.4:
            msgs.append(f"cereal covers {right_frac:.0%} of its compartment, expected most of it")
        if left_frac > 0.05:
            msgs.append("cereal spilled into the fruit compartment")
        return msgs


# -- pushpin grid -----------------------------------------------------------------------------------

PIN_R, ROWS, COLS = 0.045, 3, 3
YELLOW_HUE = 25.0


def _grid_bounds(x0: float, y0: float, x1: float, y1: float):
    xs = [x0 + (x1 - x0) * j / COLS for j in range(COLS + 1)]
    ys = [y0 + (y1 - y0) * i / ROWS for i in range(ROWS + 1)]
    return xs, ys


def _separators(xs, ys, wall: float):
    """Separator segments: ('v', row, j) between column j-1 and j, ('h', i, col) between row i-1 and i."""
    segs = []
    for r in range(ROWS):
        for j in range(1, COLS):
            segs.append((("v", r, j), (xs[j] - wall, ys[r], xs[j] + wall, ys[r + 1])))
    for i in range(1, ROWS):
        for c in range(COLS):
            segs.append((("h", i, c), (xs[c], ys[i] - wall, xs[c + 1], ys[i] + wall)))
    return segs


class PushpinGrid(Category):
    def _draw(self, cv: Canvas, defect: str | None) -> list[np.ndarray] | None:
        rng = cv.rng
        ox, oy = rng.uniform(-0.025, 0.025, 2)
        x0, y0, x1, y1 = 0.07 + ox, 0.08 + oy, 0.93 + ox, 0.92 + oy
        wall = 0.011
        cv.paint(draw.rect(cv, x0, y0, x1, y1), draw.jitter_color(rng, (150, 160, 178), 8), 1, texture=0.02)
        frame = draw.rect(cv, x0, y0, x1, y1) & ~draw.rect(cv, x0 + 0.02, y0 + 0.02, x1 - 0.02, y1 - 0.02)
        wall_col = draw.jitter_color(rng, (92, 98, 118), 6)
        cv.paint(frame, wall_col, 2)
        xs, ys = _grid_bounds(x0, y0, x1, y1)
        segs = _separators(xs, ys, wall)
        regions: list[np.ndarray] = []
        drop = int(rng.integers(len(segs))) if defect == "missing_separator" else -1
        walls = np.zeros((cv.size, cv.size), bool)
        for k, (_, (a, b, c, d)) in enumerate(segs):
            m = draw.rect(cv, a, b, c, d)
            if k == drop:
                regions.append(draw.dilate(m, 1))
            else:
                walls |= m
        cv.paint(walls, wall_col, 2)
        cells = [(r, c) for r in range(ROWS) for c in range(COLS)]
        special = cells[int(rng.integers(len(cells)))]
        yellow, blue = (236, 198, 40), (60, 92, 222)
        occupied = np.zeros((cv.size, cv.size), bool)
        for r, c in cells:
            inner = draw.rect(cv, xs[c] + 0.02, ys[r] + 0.02, xs[c + 1] - 0.02, ys[r + 1] - 0.02)
            if defect == "missing_pin" and (r, c) == special:
                regions.append(inner)
                continue
            n = 2 if defect == "extra_pin" and (r, c) == special else 1
            for i in range(n):
                rad = PIN_R * rng.uniform(0.94, 1.06)
                got = draw.place(cv, lambda x, y, rad=rad: (draw.circle(cv, x, y, rad), None),
                                 inner, occupied, gap=max(2, cv.px(0.015)), clearance=0.9 * rad)
                if got is None:
                    return None
                occupied |= got[0]
                wrong = defect == "wrong_color_pin" and (r, c) == special
                cv.paint(got[0], draw.jitter_color(rng, blue if wrong else yellow, 10), 3, texture=0.03, shade=0.35)
                if wrong or i == 1:
                    regions.append(draw.dilate(got[0], 1))
        return regions

    def check(self, labels: np.ndarray, image: np.ndarray) -> list[str]:
        s = labels.shape[0]
        box = bbox(np.isin(labels, (1, 2)))
        if box is None:
            return ["no pushpin box in the image"]
        y0, x0, y1, x1 = (v / s for v in box)
        x1, y1 = x1 + 1 / s, y1 + 1 / s
        xs, ys = _grid_bounds(x0, y0, x1, y1)
        msgs = []
        counts = np.zeros((ROWS, COLS), int)
        for m, cy, cx, _ in components(labels == 3, _nominal(s, math.pi * PIN_R**2)):
            c = int(np.clip(np.searchsorted(xs, cx / s) - 1, 0, COLS - 1))
            r = int(np.clip(np.searchsorted(ys, cy / s) - 1, 0, ROWS - 1))
            counts[r, c] += 1
            hue, sat = hue_sat(median_rgb(image, m))
            if hue_distance(hue, YELLOW_HUE) > 12 or sat < 80:
                msgs.append(f"pin in cell ({r},{c}) is not yellow")
        for r, c in zip(*np.nonzero(counts != 1)):
            msgs.append(f"cell ({r},{c}) holds {counts[r, c]} pins, expected 1")
        wall = labels == 2
        for (kind, i, j), (a, b, c, d) in _separators(xs, ys, 0.0):
            if kind == "v":
                xc = int(round(a * s))
                lo, hi = int(b * s + 0.25 * (d - b) * s), int(d * s - 0.25 * (d - b) * s)
                band = wall[lo:hi + 1, max(xc - 1, 0):xc + 2]
                frac = band.any(1).mean() if band.size else 0.0
            else:
                yc = int(round(b * s))
                lo, hi = int(a * s + 0.25 * (c - a) * s), int(c * s - 0.25 * (c - a) * s)
                band = wall[max(yc - 1, 0):yc + 2, lo:hi + 1]
                frac = band.any(0).mean() if band.size else 0.0
            if frac < 0.5:
                msgs.append(f"separator {kind}{i}.{j} is missing")
        return msgs


# -- screw bag --------------------------------------------------------------------------------------

SCREW_L, SCREW_W, SHORT_L, MIN_SCREW_L = 0.28, 0.04, 0.11, 0.22
NUT_R, WASHER_R = 0.055, 0.05
BAG_PARTS = {2: "screw", 3: "nut", 4: "washer"}
BAG_COLORS = {2: (168, 170, 176), 3: (204, 164, 62), 4: (46, 46, 52)}


class ScrewBag(Category):
    background = (70, 76, 70)

    def _draw(self, cv: Canvas, defect: str | None) -> list[np.ndarray] | None:
        rng = cv.rng
        ox, oy = rng.uniform(-0.025, 0.025, 2)
        bag = draw.ellipse(cv, 0.5 + ox, 0.5 + oy, 0.44, 0.42, rng.uniform(-6, 6))
        cv.paint(bag, draw.jitter_color(rng, (204, 214, 226), 8), 1, texture=0.05)
        region = draw.erode(bag, cv.px(0.03))
        counts = {2: 2, 3: 2, 4: 2}
        special = int(rng.choice([2, 3, 4]))
        if defect == "missing_part":
            counts[special] = 1
        elif defect == "extra_part":
            counts[special] = 3
        short_index = 0 if defect == "short_screw" else -1
        washer_r = max(WASHER_R, 2.6 / cv.size)  # small images: keep every item a few pixels wide
        occupied = np.zeros((cv.size, cv.size), bool)
        placed: dict[int, list[np.ndarray]] = {2: [], 3: [], 4: []}
        regions: list[np.ndarray] = []
        for label in (2, 3, 4):
            for i in range(counts[label]):
                if label == 2:
                    length = (SHORT_L if i == short_index else SCREW_L) * rng.uniform(0.96, 1.04)
                    make = lambda x, y, length=length: _screw(cv, x, y, length)  # noqa: E731
                elif label == 3:
                    make = lambda x, y: (draw.polygon(cv, x, y,  # noqa: E731
                                                 max(NUT_R * rng.uniform(0.95, 1.05), 2.6 / cv.size), 6,
                                                 rng.uniform(0, 1)), None)
                else:
                    make = lambda x, y: (draw.circle(cv, x, y, washer_r), None)  # noqa: E731
                got = draw.place(cv, make, region, occupied, gap=max(1, cv.px(0.025)),
                                 clearance=SCREW_W / 2 if label == 2 else 0.9 * washer_r)
                if got is None:
                    return None
                m = got[0]
                occupied |= m
                if label == 2:
                    cv.paint(m, draw.jitter_color(rng, BAG_COLORS[2], 8), 2, texture=0.06, shade=0.2)
                elif label == 3:
                    cv.paint(m, draw.jitter_color(rng, BAG_COLORS[3], 10), 3, texture=0.04, shade=0.25)
                else:
                    ys, xs = np.nonzero(m)
                    inner = draw.circle(cv, xs.mean() / cv.size, ys.mean() / cv.size, washer_r * 0.4)
                    cv.paint(m & ~inner, draw.jitter_color(rng, BAG_COLORS[4], 6), 4, texture=0.05)
                placed[label].append(m)
        if defect == "missing_part":
            regions += [draw.dilate(m, 1) for m in placed[special]]
        elif defect == "extra_part":
            regions.append(draw.dilate(placed[special][-1], 1))
        elif defect == "short_screw":
            regions.append(draw.dilate(placed[2][0], 1))
        return regions

    def check(self, labels: np.ndarray, image: np.ndarray) -> list[str]:
        s = labels.shape[0]
        if not (labels == 1).any():
            return ["no bag in the image"]
        msgs = []
        nominal = {2: SCREW_L * SCREW_W, 3: 2.6 * NUT_R**2, 4: math.pi * WASHER_R**2 * 0.8}
        for label, name in BAG_PARTS.items():
            comps = components(labels == label, _nominal(s, nominal[label], 0.25))
            msgs += color_rule(labels, image, label, name, BAG_COLORS[label], _nominal(s, nominal[label], 0.25))
            if len(comps) != 2:
                msgs.append(f"bag holds {len(comps)} {name}s, expected 2")
            if label == 2:
                for k, (m, _, _, _) in enumerate(comps):
                    pts = np.column_stack(np.nonzero(m)[::-1]).astype(np.float32)
                    (_, _), (w, h), _ = cv2.minAreaRect(pts)
                    if max(w, h) / s < MIN_SCREW_L:
                        msgs.append(f"screw {k} is too short ({max(w, h) / s:.2f} of the image, expected >= {MIN_SCREW_L})")
        return msgs


def _screw(cv: Canvas, x: float, y: float, length: float):
    ang = cv.rng.uniform(0, 180)
    width = max(SCREW_W, 2.2 / cv.size)  # a thinner shaft breaks apart when rasterised at 32 px
    m = draw.rotated_rect(cv, x, y, length, width, ang)
    t = math.radians(ang)
    hx, hy = x + math.cos(t) * length / 2, y + math.sin(t) * length / 2
    return m | draw.circle(cv, hx, hy, width * 0.85), None


# -- cable pair -------------------------------------------------------------------------------------

CABLE_COLORS = {2: (236, 206, 40), 3: (40, 92, 222), 5: (214, 40, 40)}
CABLE_NAMES = {2: "yellow", 3: "blue", 5: "red"}
CONN_W = 0.15


CABLE_AREA_MAX = 1.5  # a second cable overlapping the first shows as one piece of about twice the area


def _cable_area(size: int) -> float:
    """Nominal visible area (pixels) of one cable: about 0.6 of the image wide, 0.035 of it thick."""
    return 0.6 * size * 0.035 * size


def _conn_h(k: int) -> float:
    return 0.07 + 0.05 * k


def _levers(cv: Canvas, body: np.ndarray, k: int) -> np.ndarray:
    """``k`` horizontal lever bands inside a connector body, laid out in whole pixel rows.

    Why pixel rows: at 32-48 px a 5-lever connector has ~2 px per lever; rasterising rotated
    rectangles there merges neighbours, and the lever count is a rule the truth must keep exact.
    """
    xs = np.flatnonzero(body.any(0))
    cx, half = (xs[0] + xs[-1]) / 2, max(1.0, 0.25 * len(xs))
    c0, c1 = int(round(cx - half)), int(round(cx + half)) + 1
    ys = np.flatnonzero(body[:, c0:c1].all(1))  # rows where the whole lever column lies inside the body
    top, height = ys[0] + 1, max(len(ys) - 2, 2 * k - 1)
    pitch = height / k
    thick = max(1, int(0.45 * pitch))
    out = np.zeros_like(body)
    for i in range(k):
        y0 = int(round(top + (i + 0.5) * pitch - thick / 2))
        out[y0:y0 + thick, c0:c1] = True
    return out & body


class CablePair(Category):
    background = (48, 54, 58)

    def _draw(self, cv: Canvas, defect: str | None) -> list[np.ndarray] | None:
        rng = cv.rng
        ox = rng.uniform(-0.025, 0.025)
        k = int(rng.choice(list(CABLE_COLORS)))
        k_right = int(rng.choice([v for v in CABLE_COLORS if v != k])) if defect == "mismatched_connectors" else k
        yl = _jit(rng, 0.5 - 0.3 + _conn_h(k) / 2, 0.5 + 0.3 - _conn_h(k) / 2)
        yr = _jit(rng, 0.5 - 0.3 + _conn_h(k_right) / 2, 0.5 + 0.3 - _conn_h(k_right) / 2)
        xl, xr = 0.2 + ox, 0.8 + ox
        ctrl = (0.5 + ox + rng.uniform(-0.05, 0.05), (yl + yr) / 2 + rng.uniform(-0.25, 0.25))
        pts = draw.bezier((xl + CONN_W / 4, yl), ctrl, (xr - CONN_W / 4, yr))
        cable = draw.polyline(cv, [tuple(p) for p in pts], 0.035)
        regions: list[np.ndarray] = []
        color_k = k
        if defect == "wrong_cable_color":
            color_k = int(rng.choice([v for v in CABLE_COLORS if v != k]))
        if defect == "missing_cable":
            regions.append(draw.dilate(cable, 1))
        else:
            cv.paint(cable, draw.jitter_color(rng, CABLE_COLORS[color_k], 10), 3, texture=0.04)
        body_col = draw.jitter_color(rng, (226, 226, 220), 6)
        lever_col = draw.jitter_color(rng, (120, 70, 150), 8)
        bodies = []
        for x, y, kk in ((xl, yl, k), (xr, yr, k_right)):
            ang = rng.uniform(-4, 4)
            h = _conn_h(kk)
            body = draw.rotated_rect(cv, x, y, CONN_W, h, ang)
            cv.paint(body, body_col, 1, texture=0.02)
            cv.paint(_levers(cv, body, kk), lever_col, 2)
            bodies.append(body)
        if defect == "wrong_cable_color":
            regions.append(draw.dilate(cable & ~(bodies[0] | bodies[1]), 1))
        if defect == "mismatched_connectors":
            regions.append(draw.dilate(bodies[1], 1))
        return regions

    def check(self, labels: np.ndarray, image: np.ndarray) -> list[str]:
        s = labels.shape[0]
        conns = components(np.isin(labels, (1, 2)), _nominal(s, CONN_W * _conn_h(2), 0.4))
        if len(conns) != 2:
            return [f"{len(conns)} connectors in the image, expected 2"]
        conns.sort(key=lambda c: c[2])
        levers = labels == 2
        counts = [len(components(levers & m, 2)) for m, _, _, _ in conns]
        msgs = []
        if counts[0] != counts[1]:
            msgs.append(f"connectors have {counts[0]} and {counts[1]} levers; they must match")
        cable = labels == 3
        min_piece = _nominal(s, 0.3 * 0.03, 0.3)
        if cable.sum() < min_piece:
            return msgs + ["cable is missing"]
        pieces = components(cable, min_piece)
        # the area test needs a cable several pixels wide: below ~96 px line rasterisation alone varies it by 1.6x
        if len(pieces) > 1 or (s >= 96 and cable.sum() > CABLE_AREA_MAX * _cable_area(s)):
            msgs.append("more than one cable" if len(pieces) > 1 else
                        f"cable covers {cable.sum() / _cable_area(s):.1f}x the area of one cable")
        near = draw.dilate(cable, 2)
        if not all((near & m).any() for m, _, _, _ in conns):
            msgs.append("cable does not join both connectors")
        hue, _ = hue_sat(median_rgb(image, cable))
        seen = min(CABLE_COLORS, key=lambda kk: hue_distance(hue, hue_sat(np.asarray(CABLE_COLORS[kk]))[0]))
        want = counts[0]
        if want in CABLE_COLORS and seen != want:
            msgs.append(f"cable is {CABLE_NAMES[seen]} but connectors have {want} levers "
                        f"(expects {CABLE_NAMES[want]})")
        elif want not in CABLE_COLORS:
            msgs.append(f"connector with {want} levers is not a valid size")
        return msgs


CATEGORY_SPECS: dict[str, Category] = {
    c.name: c for c in (
        BreakfastTray(
            name="breakfast_tray",
            parts={1: "tray", 2: "orange", 3: "lime", 4: "cereal"},
            rules=("the fruit (left) compartment holds exactly 2 oranges and 1 lime",
                   "oranges are orange and limes are green",
                   "no fruit lies in the cereal (right) compartment",
                   "cereal fills most of the right compartment and none of the left"),
            logical=("missing_orange", "extra_lime", "missing_cereal", "misplaced_orange"),
            items=(2, 3, 4)),
        PushpinGrid(
            name="pushpin_grid",
            parts={1: "box", 2: "separator", 3: "pin"},
            rules=(f"each of the {ROWS}x{COLS} cells holds exactly one pin", "every pin is yellow",
                   "every separator between neighbouring cells is present"),
            logical=("missing_pin", "extra_pin", "wrong_color_pin", "missing_separator"),
            items=(3, 1)),
        ScrewBag(
            name="screw_bag",
            parts={1: "bag", 2: "screw", 3: "nut", 4: "washer"},
            rules=("the bag holds exactly 2 screws, 2 nuts and 2 washers",
                   "screws are steel grey, nuts brass, washers black",
                   f"every screw is at least {MIN_SCREW_L} of the image long"),
            logical=("missing_part", "extra_part", "short_screw"),
            items=(2, 3, 4)),
        CablePair(
            name="cable_pair",
            parts={1: "connector", 2: "lever", 3: "cable"},
            rules=("there are exactly 2 connectors with the same number of levers",
                   "exactly one cable joins both connectors",
                   "the cable colour encodes the connector size (2 yellow, 3 blue, 5 red)"),
            logical=("mismatched_connectors", "wrong_cable_color", "missing_cable"),
            items=(1, 3)),
    )
}


def category_spec(name: str):
    """A built-in category, or a category of the procedural family (``family_<seed>``)."""
    from comgen.data.family.spec import is_family

    if is_family(name):
        from comgen.data.family.category import family_category

        return family_category(name)
    return CATEGORY_SPECS[name]


def known_category(name: str) -> bool:
    from comgen.data.family.spec import is_family

    return name in CATEGORY_SPECS or is_family(name)
