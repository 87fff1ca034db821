"""Prompt Modifications: plan one edit of a normal composition (remove, add, replace, recolor, move, swap,
resize, plus structural edits inside one component) as an ``EditPlan``.

Why plans and not pixels: Low-Density Sampling must score many candidate edits, and a plan already knows the
edited composition (which components exist, where, how big, which colour) without rendering an image. Only the
kept plans are rendered (``comgen.generate.compositional.render``). Each plan also renders as an edited token
prompt ("a photo of <c1> <c2> <c2>" -> add -> "a photo of <c1> <c2> <c2> <c2>") that the SD back-end can reuse.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np

from comgen.generate.component_bank import BankItem, ComponentBank, dilate, object_crop
from comgen.generate.structural import NEEDS_DONOR
from comgen.records import ALL_EDITS, STRUCTURAL_EDITS, Component, Composition, EditSpec



@dataclass
class Paste:
    """Put ``rgb`` (where ``mask``) with its top-left corner at ``top_left`` (may be clipped by the border)."""

    rgb: np.ndarray
    mask: np.ndarray
    truth: np.ndarray | None
    top_left: tuple[int, int]
    class_id: int
    color_lab: tuple[float, float, float]
    source: int = -1  # bank index of the image the part was cut from (-1: the edited image itself)


@dataclass
class EditPlan:
    """Everything needed to render one edit and to score the composition it produces."""

    edit: EditSpec
    source: int  # bank index of the normal image that is edited
    components: list[Component]  # the composition after the edit
    gate: np.ndarray  # HxW bool: the edited component(s), before and after
    erase: np.ndarray | None = None  # HxW bool: region to refill with what lies beneath
    pastes: list[Paste] = field(default_factory=list)
    recolor: tuple[np.ndarray, np.ndarray] | None = None  # (HxW bool, Lab delta [3])
    structural: dict | None = None  # {"kind", "mask" (HxW bool component), "params"}

    def key(self) -> tuple:
        """Identity of the edit, to refuse duplicates."""
        return edit_key(self.source, self.edit.kind, self.edit.target, self.edit.classes, self.edit.params)


#: params that describe provenance, not the edit itself (excluded from the duplicate key)
PROVENANCE_PARAMS = ("prompt", "source_prompt", "reference", "density_threshold", "donor_id")


def edit_key(source: int, kind: str, target, classes, params: dict) -> tuple:
    """Duplicate key of an edit; parameters rounded so float noise is not 'new'. Rebuildable from a manifest line."""
    def r(v):
        if isinstance(v, float):
            return round(v, 2)
        if isinstance(v, (list, tuple)):
            return tuple(r(x) for x in v)
        return v
    return (int(source), str(kind), tuple(int(t) for t in target), tuple(int(c) for c in classes),
            tuple(sorted((k, r(v)) for k, v in params.items() if k not in PROVENANCE_PARAMS)))


def render_prompt(components: list[Component]) -> str:
    """Token prompt of a composition, tokens ordered by class id."""
    return Composition(image_id="", image_shape=(0, 0), components=list(components)).prompt()


# --- geometry helpers -----------------------------------------------------------------------

def placed_mask(mask: np.ndarray, top_left: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
    """Full-size mask of a crop placed at ``top_left``, clipped at the image border."""
    out = np.zeros(shape, bool)
    y, x = top_left
    h, w = mask.shape
    ys, xs = max(0, y), max(0, x)
    ye, xe = min(shape[0], y + h), min(shape[1], x + w)
    if ye > ys and xe > xs:
        out[ys:ye, xs:xe] = mask[ys - y:ye - y, xs - x:xe - x]
    return out


def component_from_mask(mask: np.ndarray, class_id: int, color_lab) -> Component | None:
    """A Component record for a placed part (None if it fell outside the image)."""
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return None
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    m = cv2.moments(mask[y0:y1, x0:x1].astype(np.uint8), binaryImage=True)
    orient = 0.5 * math.atan2(2 * m["mu11"], m["mu20"] - m["mu02"]) if m["m00"] > 0 else 0.0
    return Component(class_id=class_id, mask=mask, centroid=(float(ys.mean()), float(xs.mean())),
                     area=int(len(ys)), color_lab=tuple(float(v) for v in color_lab),
                     bbox=(int(y0), int(x0), int(y1), int(x1)), orientation=float(orient))


def free_positions(free: np.ndarray, mask: np.ndarray, min_frac: float = 0.97,
                   rng: np.random.Generator | None = None, accept=None, limit: int = 48) -> np.ndarray:
    """Top-left corners [n,2] where ``mask`` lies (almost) entirely on ``free`` pixels, fully inside the image.

    One correlation (OpenCV filter2D, FFT for large kernels) counts the free pixels under the mask at every
    offset, so no Python loop runs over positions. From 128 px up (and with ``rng``) the correlation runs at half
    resolution (about 8x faster, the slowest step of planning at 256 px) and up to ``limit`` random candidates,
    after the optional ``accept(positions) -> bool[n]`` filter, are verified exactly at full resolution.
    """
    h, w = mask.shape
    H, W = free.shape
    if h > H or w > W or not mask.any():
        return np.zeros((0, 2), int)
    coarse = rng is not None and min(H, W) >= 128 and min(h, w) >= 8
    s = 2 if coarse else 1
    f = free.astype(np.float32)
    k = mask.astype(np.float32)
    if s > 1:
        f = cv2.resize(f, (W // s, H // s), interpolation=cv2.INTER_AREA)
        k = cv2.resize(k, (max(1, w // s), max(1, h // s)), interpolation=cv2.INTER_AREA)
    cnt = cv2.filter2D(f, -1, k, anchor=(0, 0), borderType=cv2.BORDER_CONSTANT)
    hh, ww = k.shape
    ok = cnt[: f.shape[0] - hh + 1, : f.shape[1] - ww + 1] >= min_frac * k.sum() - (0.5 if s == 1 else 0.02 * k.sum())
    pos = np.argwhere(ok) * s
    pos = pos[(pos[:, 0] <= H - h) & (pos[:, 1] <= W - w)]
    if accept is not None and len(pos):
        pos = pos[accept(pos)]
    if s == 1 or len(pos) == 0:
        return pos
    pos = pos[rng.permutation(len(pos))[:limit]]
    area = float(mask.sum())
    good = [free[y:y + h, x:x + w][mask].sum() >= min_frac * area - 0.5 for y, x in pos]
    return pos[np.array(good, bool)]


@dataclass
class ObjectCut:
    """Instance ``index`` of a bank image cut out by its own pixels."""

    index: int
    rgb: np.ndarray
    mask: np.ndarray  # crop-sized
    truth: np.ndarray | None
    top_left: tuple[int, int]

    def full_mask(self, shape: tuple[int, int]) -> np.ndarray:
        return placed_mask(self.mask, self.top_left, shape)


def _remaining(comp: Composition, *cuts: ObjectCut) -> list[Component]:
    """The components that stay where they are when ``cuts`` are taken out."""
    gone = {c.index for c in cuts}
    return [x for j, x in enumerate(comp.components) if j not in gone]


def _cut(bank: ComponentBank, i: int, comp: Composition, t: int) -> ObjectCut:
    rgb, mask, truth, tl = object_crop(bank.images[i], bank.truths[i], comp, t)
    return ObjectCut(t, rgb, mask, truth, tl)


def _hole(bank: ComponentBank, mask: np.ndarray) -> np.ndarray:
    """The region to refill where a part was: its mask plus the soft edge and shadow that segmentation leaves
    outside it (~3 px at 256 px; a 1 px margin left a visible ring of the old part)."""
    return dilate(mask, max(1, int(round(3 * bank.size / 256))))


def _parts_on(bank: ComponentBank, i: int, host: int) -> np.ndarray:
    """Pixels of image ``i`` taken by parts, other than the ``host`` surface a part is put on.

    Why not every instance: when the host is itself a part class (a pushpin grid's cells, a breakfast tray), its
    own instances cover all of it, and no extra pin or lime could ever be placed (add and move never ran there).
    """
    return (bank.instance_maps[i] > 0) & (bank.class_maps[i] != host)


def _gap(bank: ComponentBank) -> int:
    """Pixels kept free around other parts where a part is put (4 at 256 px). Why: a pin put 1 px from another
    pin merged with it in the segmentation: one part, and no extra one."""
    return max(1, int(round(bank.size / 64)))


def _pick_clear(pos: np.ndarray, mask: np.ndarray, crowded: np.ndarray,
                rng: np.random.Generator) -> tuple[int, int] | None:
    """A random top-left corner from ``pos`` where ``mask`` covers no ``crowded`` pixel (None when there is none).

    Why: ``free_positions`` forgives a few pixels off the free area, which is right at a host's ragged edge but
    lets a placed part touch another one through the gap (a single pixel at small sizes), and then the two merge into
    one part. A touching draw is dropped and another one drawn, so the draws where nothing touches stay as they were.
    """
    h, w = mask.shape
    pos = list(map(tuple, pos))
    while pos:
        y, x = pos.pop(int(rng.integers(len(pos))))
        if not (crowded[y:y + h, x:x + w] & mask).any():
            return int(y), int(x)
    return None


def _centered(mask: np.ndarray, centroid: tuple[float, float]) -> tuple[int, int]:
    ys, xs = np.nonzero(mask)
    return int(round(centroid[0] - ys.mean())), int(round(centroid[1] - xs.mean()))


def _paste(rgb, mask, truth, top_left, class_id, color_lab, source: int = -1) -> Paste:
    return Paste(rgb=rgb, mask=mask, truth=truth, top_left=(int(top_left[0]), int(top_left[1])),
                 class_id=int(class_id), color_lab=tuple(float(v) for v in color_lab), source=int(source))


def _finish(kind: str, i: int, comp: Composition, targets: list[int], classes: list[int], params: dict,
            keep: list[Component], pastes: list[Paste], erase: np.ndarray | None, extra_gate=None,
            recolor=None, structural=None) -> EditPlan | None:
    shape = comp.image_shape
    new = []
    gate = np.zeros(shape, bool)
    for t in targets:
        gate |= comp.components[t].mask
    for p in pastes:
        m = placed_mask(p.mask, p.top_left, shape)
        c = component_from_mask(m, p.class_id, p.color_lab)
        if c is None:
            return None
        new.append(c)
        gate |= m
    if extra_gate is not None:
        gate |= extra_gate
    comps = keep + new
    spec = EditSpec(kind=kind, target=targets, classes=[int(c) for c in classes], params=params)
    spec.params["source_prompt"] = comp.prompt()
    spec.params["prompt"] = render_prompt(comps)
    return EditPlan(edit=spec, source=i, components=comps, gate=gate, erase=erase, pastes=pastes,
                    recolor=recolor, structural=structural)


# --- logical edits ----------------------------------------------------------------------------

def _random_target(comp: Composition, rng: np.random.Generator, ok: Callable[[Component], bool]) -> int | None:
    """A random instance of ``comp`` that ``ok`` accepts (None when there is none)."""
    idx = [j for j, c in enumerate(comp.components) if ok(c)]
    return None if not idx else int(idx[int(rng.integers(len(idx)))])


def plan_remove(bank: ComponentBank, i: int, comp: Composition, rng: np.random.Generator) -> EditPlan | None:
    t = _random_target(comp, rng, bank.removable)
    if t is None:
        return None
    c = comp.components[t]
    cut = _cut(bank, i, comp, t)
    keep = _remaining(comp, cut)
    full = cut.full_mask(comp.image_shape)
    return _finish("remove", i, comp, [t], [c.class_id], {}, keep, [], _hole(bank, full), extra_gate=full)


def plan_add(bank: ComponentBank, i: int, comp: Composition, rng: np.random.Generator) -> EditPlan | None:
    # an extra part only breaks a fixed count
    classes = [k for k in bank.classes() if bank.addable(k)]
    if not classes:
        return None
    k = int(rng.choice(classes))
    items = [it for it in bank.items_of(k) if bank.movable(it)]
    if not items:
        return None
    it: BankItem = items[int(rng.integers(len(items)))]
    crowded = dilate(_parts_on(bank, i, it.host), _gap(bank))
    pos = free_positions((bank.class_maps[i] == it.host) & ~crowded, it.mask, rng=rng)
    picked = _pick_clear(pos, it.mask, crowded, rng)
    if picked is None:
        return None
    y, x = picked
    pastes = [_paste(it.rgb, it.mask, it.truth, (y, x), k, it.color_lab, it.source)]
    params = {"position": [int(y), int(x)], "bank_source": bank.ids[it.source]}
    return _finish("add", i, comp, [], [k], params, list(comp.components), pastes, None)


def plan_replace(bank: ComponentBank, i: int, comp: Composition, rng: np.random.Generator) -> EditPlan | None:
    t = _random_target(comp, rng, bank.movable)
    if t is None:
        return None
    c = comp.components[t]
    # the stand-in is a whole loose part of another class (not a fragment)
    others = [k for k in bank.classes() if k != c.class_id and any(bank.movable(it) for it in bank.items_of(k))]
    if not others:
        return None
    k = int(rng.choice(others))
    items = [it for it in bank.items_of(k) if bank.movable(it)]
    it = items[int(rng.integers(len(items)))]
    tl = _centered(it.mask, c.centroid)
    pastes = [_paste(it.rgb, it.mask, it.truth, tl, k, it.color_lab, it.source)]
    cut = _cut(bank, i, comp, t)
    keep = _remaining(comp, cut)
    full = cut.full_mask(comp.image_shape)
    params = {"position": [int(tl[0]), int(tl[1])], "bank_source": bank.ids[it.source]}
    return _finish("replace", i, comp, [t], [c.class_id, k], params, keep, pastes, _hole(bank, full), extra_gate=full)


def plan_recolor(bank: ComponentBank, i: int, comp: Composition, rng: np.random.Generator,
                 min_delta: float = 30.0) -> EditPlan | None:
    if not bank.items:
        return None
    t = _random_target(comp, rng, bank.confident)
    if t is None:
        return None
    c = comp.components[t]
    # the new colour is a real colour of *another* part class ("wrong attribute"), clearly away from this class's
    # own colours in any normal image (so one part that comes in several normal colours is not "recoloured"
    # into one of them)
    own = np.array([it.color_lab for it in bank.items_of(c.class_id)])
    colors = np.array([it.color_lab for it in bank.items if it.class_id != c.class_id])
    if len(colors) == 0:
        return None
    dist_own = np.sqrt(((colors[:, None] - own[None]) ** 2).sum(-1)).min(1)
    far = colors[dist_own >= min_delta]
    if len(far) == 0:
        return None
    new = far[int(rng.integers(len(far)))]
    delta = new - np.array(c.color_lab)
    # keep the part's lightness texture, move its mean colour to another real part colour
    recolored = Component(class_id=c.class_id, mask=c.mask, centroid=c.centroid, area=c.area,
                          color_lab=tuple(float(v) for v in new), bbox=c.bbox, orientation=c.orientation)
    keep = [x for j, x in enumerate(comp.components) if j != t] + [recolored]
    params = {"color_lab": [round(float(v), 2) for v in new]}
    plan = _finish("recolor", i, comp, [t], [c.class_id], params, keep, [], None,
                   recolor=(c.mask, delta.astype(np.float32)))
    return plan


def plan_move(bank: ComponentBank, i: int, comp: Composition, rng: np.random.Generator,
              min_shift: float = 0.12) -> EditPlan | None:
    t = _random_target(comp, rng, bank.movable)
    if t is None:
        return None
    c = comp.components[t]
    host = bank.hosts[i][t]
    cut = _cut(bank, i, comp, t)
    full = cut.full_mask(comp.image_shape)
    others = _parts_on(bank, i, host) & ~full
    crowded = dilate(others, _gap(bank))
    free = ((bank.class_maps[i] == host) | full) & ~crowded
    y0, x0 = cut.top_left

    def far_and_rare(p: np.ndarray) -> np.ndarray:
        """Far enough from where the part was and, where the bank knows the class's spots, onto a spot where such a
        part rarely lies."""
        shifted = np.asarray(c.centroid, np.float64)[None] + (p - np.array([y0, x0]))
        return (np.hypot(p[:, 0] - y0, p[:, 1] - x0) >= min_shift * bank.size) & bank.rare_spots(c.class_id, shifted)

    pos = free_positions(free, cut.mask, rng=rng, accept=far_and_rare)
    picked = _pick_clear(pos, cut.mask, crowded, rng)
    if picked is None:
        return None
    y, x = picked
    pastes = [_paste(cut.rgb, cut.mask, cut.truth, (y, x), c.class_id, c.color_lab)]
    keep = _remaining(comp, cut)
    params = {"shift": [int(y - y0), int(x - x0)]}
    return _finish("move", i, comp, [t], [c.class_id], params, keep, pastes, _hole(bank, full), extra_gate=full)


def plan_swap(bank: ComponentBank, i: int, comp: Composition, rng: np.random.Generator,
              max_swap_ratio: float = 8.0) -> EditPlan | None:
    cs = comp.components
    loose = [j for j, c in enumerate(cs) if bank.movable(c)]
    # two parts of comparable size: a connector swapped with one of its levers is not a mix-up a line makes
    # and, where the bank knows the classes' spots, at least one of them lands where its class rarely lies
    pairs = [(a, b) for a in loose for b in loose if a < b and cs[a].class_id != cs[b].class_id
             and max(cs[a].area, cs[b].area) <= max_swap_ratio * min(cs[a].area, cs[b].area)
             and (bank.rare_spots(cs[a].class_id, cs[b].centroid)[0]
                  or bank.rare_spots(cs[b].class_id, cs[a].centroid)[0])]
    if not pairs:
        return None
    a, b = pairs[int(rng.integers(len(pairs)))]
    cuts = {a: _cut(bank, i, comp, a), b: _cut(bank, i, comp, b)}
    pastes = []
    for src, dst in ((a, b), (b, a)):
        o = cuts[src]
        pastes.append(_paste(o.rgb, o.mask, o.truth, _centered(o.mask, cs[dst].centroid), cs[src].class_id,
                             cs[src].color_lab))
    keep = _remaining(comp, cuts[a], cuts[b])
    full = cuts[a].full_mask(comp.image_shape) | cuts[b].full_mask(comp.image_shape)
    return _finish("swap", i, comp, [a, b], [cs[a].class_id, cs[b].class_id], {}, keep, pastes, _hole(bank, full),
                   extra_gate=full)


def plan_resize(bank: ComponentBank, i: int, comp: Composition, rng: np.random.Generator) -> EditPlan | None:
    t = _random_target(comp, rng, bank.movable)
    if t is None:
        return None
    c = comp.components[t]
    scale = float(rng.uniform(0.5, 0.7) if rng.random() < 0.5 else rng.uniform(1.4, 1.8))
    cut = _cut(bank, i, comp, t)
    h, w = cut.mask.shape
    nh, nw = max(2, int(round(h * scale))), max(2, int(round(w * scale)))
    if nh >= bank.size or nw >= bank.size:
        return None

    def scaled(m: np.ndarray) -> np.ndarray:
        return cv2.resize(m.astype(np.uint8), (nw, nh), interpolation=cv2.INTER_NEAREST).astype(bool)

    rgb2 = cv2.resize(cut.rgb, (nw, nh), interpolation=cv2.INTER_LINEAR)
    mask2 = scaled(cut.mask)
    truth2 = None if cut.truth is None else cv2.resize(cut.truth, (nw, nh), interpolation=cv2.INTER_NEAREST)
    if not mask2.any():
        return None
    pastes = [_paste(rgb2, mask2, truth2, _centered(mask2, c.centroid), c.class_id, c.color_lab)]
    keep = _remaining(comp, cut)
    full = cut.full_mask(comp.image_shape)
    return _finish("resize", i, comp, [t], [c.class_id], {"scale": round(scale, 3)}, keep, pastes,
                   _hole(bank, full), extra_gate=full)


# --- structural edits (inside one component; rendered by comgen.generate.structural) -------------

def plan_structural(kind: str, bank: ComponentBank, i: int, comp: Composition,
                    rng: np.random.Generator) -> EditPlan | None:
    if not comp.components:
        return None
    t = int(rng.integers(len(comp.components)))
    c = comp.components[t]
    params = {"seed": int(rng.integers(2 ** 31))}
    if kind in NEEDS_DONOR:
        if len(bank) < 2:
            return None
        params["donor"] = int((i + rng.integers(1, len(bank))) % len(bank))
    return _finish(kind, i, comp, [t], [c.class_id], params, list(comp.components), [], None,
                   structural={"kind": kind, "mask": c.mask, "params": dict(params)})


PLANNERS: dict[str, Callable[..., EditPlan | None]] = {
    "remove": plan_remove, "add": plan_add, "replace": plan_replace, "recolor": plan_recolor,
    "move": plan_move, "swap": plan_swap, "resize": plan_resize,
}


def plan_edit(kind: str, bank: ComponentBank, i: int, comp: Composition, rng: np.random.Generator) -> EditPlan | None:
    """Plan one edit of ``kind`` on bank image ``i`` (None when this image allows no such edit)."""
    if kind in STRUCTURAL_EDITS:
        return plan_structural(kind, bank, i, comp, rng)
    if kind not in PLANNERS:
        raise ValueError(f"unknown edit kind {kind!r}")
    return PLANNERS[kind](bank, i, comp, rng)


def possible_kinds(bank: ComponentBank) -> dict[str, str | None]:
    """For each edit kind, None when it can be applied somewhere in the bank, else the reason why not."""
    has = any(len(cs) for cs in bank.components)
    loose = [[c for c in cs if bank.movable(c)] for cs in bank.components]
    loose_classes = {c.class_id for cs in loose for c in cs}
    multi = any(len({c.class_id for c in cs}) >= 2 for cs in loose)
    untypical = "no part of its class's typical size"
    only_carriers = "no part class but a carrier (the tray or fixture the parts lie on) has the same instance count " \
        "in most training images"
    reasons: dict[str, str | None] = {}
    for k in ALL_EDITS:
        if k == "swap":
            reasons[k] = None if multi else "no image has loose parts of two different classes to swap"
        elif k == "replace":
            reasons[k] = None if len(loose_classes) >= 2 else "fewer than two classes of loose parts were learned"
        elif k == "recolor":
            reasons[k] = None if any(bank.confident(c) for cs in bank.components for c in cs) else \
                "no part class has the same instance count in most training images"
        elif k == "remove":
            reasons[k] = None if any(bank.removable(c) for cs in bank.components for c in cs) else only_carriers
        elif k == "add":
            reasons[k] = None if any(bank.addable(c) and any(bank.movable(it) for it in bank.items_of(c))
                                     for c in bank.classes()) else only_carriers
        elif k in ("move", "resize"):
            reasons[k] = None if any(loose) else untypical
        else:
            reasons[k] = None if has else "no component instance found in any training image"
    return reasons


def discrete_capacity(bank: ComponentBank, kinds: list[str]) -> float:
    """How many distinct edits exist when only parameter-free kinds (remove, swap) are allowed; inf otherwise."""
    if any(k not in ("remove", "swap") for k in kinds):
        return math.inf
    total = 0
    for cs in bank.components:
        if "remove" in kinds:
            total += sum(bank.removable(c) for c in cs)  # what plan_remove may target
        if "swap" in kinds:
            cls = [c.class_id for c in cs]
            total += sum(1 for a in range(len(cs)) for b in range(a + 1, len(cs)) if cls[a] != cls[b])
    return float(total)
