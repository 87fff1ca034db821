"""The family's rule checker: which of a category's rules a scene breaks, read from its part-label map and image.

Why from pixels and labels, not from the plan: generated anomalies (Stage I) come with an edited label map and
image but no plan, and they must be checked by the same code as the benchmark's own test images. Instances are
connected regions of one part label (the renderer never lets two parts touch); colours are region medians, which
survive lighting, blur and small damage.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

from comgen.data.family.spec import CARRIER_RANGE, SLOT_RANGE, FamilySpec, Rule
from comgen.data.synth.base import components, hue_distance, hue_sat, median_rgb

SIZE_RATIO = 1.2  # the larger of two parts of a same-size pair is at most this much larger (square root of area)
Instance = tuple[np.ndarray, float, float, int]  # mask, cy, cx, area


@lru_cache(maxsize=256)
def _min_area(size: int, radius: float, shape: str) -> float:
    """Pixels below which a region of this part is a speck, not a part: a fifth of its smallest drawn area."""
    r = 0.6 * radius * size  # the smallest scale any scene draws
    area = {"cable": 2.6 * r * 0.3 * r, "rod": 2.4 * r * 0.55 * r, "bolt": 2.2 * r * 0.45 * r}.get(shape, 2.0 * r * r)
    return max(4.0, 0.2 * area)


def instances(spec: FamilySpec, labels: np.ndarray, label: int) -> list[Instance]:
    part = spec.part(label)
    return components(labels == label, _min_area(labels.shape[0], part.radius, part.shape))


def holes(mask: np.ndarray) -> int:
    """Number of enclosed openings of one region (a connector's slots)."""
    contours, hierarchy = cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None:
        return 0
    return int(sum(1 for h in hierarchy[0] if h[3] >= 0))


def filled_area(mask: np.ndarray) -> float:
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    filled = np.zeros(mask.shape, np.uint8)
    cv2.drawContours(filled, contours, -1, 1, -1)
    return float(filled.sum())


def nearest_colour(rgb: np.ndarray, palette) -> int:
    """Index of the palette colour whose hue is nearest."""
    hue = hue_sat(rgb)[0]
    return int(np.argmin([hue_distance(hue, hue_sat(np.asarray(c, np.float32))[0]) for c in palette]))


def _check(spec: FamilySpec, rule: Rule, labels: np.ndarray, image: np.ndarray, found) -> str | None:
    side = labels.shape[0]
    if rule.kind == "count":
        n = sum(len(found(t)) for t in rule.a)
        return None if n == rule.n else f"{rule.text}: found {n}"
    if rule.kind == "relation":
        na, nb = len(found(rule.a[0])), len(found(rule.b))
        return None if na == rule.n * nb else f"{rule.text}: found {na} and {nb}"
    if rule.kind == "required":
        return None if found(rule.a[0]) else f"{rule.text}: found none"
    if rule.kind == "one_of":
        present = bool(found(rule.a[0])) + bool(found(rule.b))
        return None if present == 1 else f"{rule.text}: found {'both' if present == 2 else 'neither'}"
    if rule.kind == "same_size":
        sizes = [np.sqrt(filled_area(m)) for m, *_ in found(rule.a[0])]
        if len(sizes) >= 2 and max(sizes) > SIZE_RATIO * min(sizes):
            return f"{rule.text}: sizes differ by {max(sizes) / min(sizes):.2f}x"
        return None
    if rule.kind == "attribute":
        carriers = found(rule.b)
        if rule.n == 1:
            if len(carriers) != 1:
                return None  # the count rule on the carrier speaks here
            code = holes(carriers[0][0]) - SLOT_RANGE[0]
        else:
            code = len(carriers) - CARRIER_RANGE[0]
        palette = spec.part(rule.a[0]).colors
        subjects = found(rule.a[0])
        if subjects and not 0 <= code < len(palette):
            return f"{rule.text}: no colour is defined for that carrier"
        wrong = [(cy, cx) for m, cy, cx, _ in subjects if nearest_colour(median_rgb(image, m), palette) != code]
        return f"{rule.text}: {len(wrong)} with the wrong colour" if wrong else None
    if rule.kind == "position":
        return _position(spec, rule, found, side)
    raise ValueError(f"unknown rule kind {rule.kind!r}")


def _position(spec: FamilySpec, rule: Rule, found, side: int) -> str | None:
    geo = spec.geometry
    if spec.layout == "grid":
        x0, y0, x1, y1 = geo.grid_box
        rows = geo.grid[0]
        centres = y0 + (np.arange(rows) + 0.5) * (y1 - y0) / rows
        for t in rule.a:
            for _, cy, cx, _ in found(t):
                if int(np.argmin(np.abs(centres - cy / side))) != spec.zones[t]:
                    return f"{rule.text}: a {spec.part(t).name} is in the wrong row"
        return None
    if spec.layout == "row":
        seq = sorted((cx, t) for t in rule.a for _, cy, cx, _ in found(t))
        got = _collapse([t for _, t in seq])
        return None if got == _collapse(list(spec.pattern)) else f"{rule.text}: the order is broken"
    if spec.layout == "tray":
        edges = np.asarray(geo.walls)
        for t in rule.a:
            for _, cy, cx, _ in found(t):
                if int(np.searchsorted(edges, cx / side)) != spec.zones[t]:
                    return f"{rule.text}: a {spec.part(t).name} is in compartment {int(np.searchsorted(edges, cx / side)) + 1}"
        return None
    for _, cy, cx, _ in found(rule.a[0]):
        if cx / side >= 0.5:
            return f"{rule.text}: one lies in the right half"
    return None


def _collapse(seq: list[int]) -> list[int]:
    return [t for i, t in enumerate(seq) if i == 0 or seq[i - 1] != t]


def broken_rules(spec: FamilySpec, labels: np.ndarray, image: np.ndarray) -> list[tuple[int, str]]:
    """(rule index, message) for every rule of ``spec`` that the scene breaks; [] for a normal scene."""
    cache: dict[int, list[Instance]] = {}

    def found(label: int) -> list[Instance]:
        if label not in cache:
            cache[label] = instances(spec, labels, label)
        return cache[label]

    out = []
    for i, rule in enumerate(spec.rules):
        msg = _check(spec, rule, labels, image, found)
        if msg is not None:
            out.append((i, msg))
    return out
