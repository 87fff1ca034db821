"""The component bank: every normal training image at the working resolution with its class map, instances,
truth labels (synthetic benchmark only) and cut-out parts, plus nearest-reference lookup.

Why: the compositional back-end never invents pixels for a part; it copies real parts of normal images (add,
replace) and fills holes from the most similar normal image (remove, move), so edited images stay realistic and
only the *composition* is wrong. Instances are stored as one int16 map per image (not one mask per part) so a
200-image bank at 256 px stays small.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from functools import cached_property

import cv2
import numpy as np

from comgen.components.composition import compose, rgb_to_lab
from comgen.records import Component, Composition


@dataclass
class Inner:
    """A component enclosed by another one (a lever inside a connector body), in the enclosing crop's frame."""

    index: int  # index in the image's composition
    class_id: int
    mask: np.ndarray  # crop-sized bool
    color_lab: tuple[float, float, float]


@dataclass
class BankItem:
    """One part cut out of a normal image (bbox crop) with what it normally lies on (``host`` class).

    ``mask`` is the part's outline with its holes filled, so a part that encloses parts of other classes (a
    connector body with its levers) is cut, moved and pasted whole; ``inner`` lists those enclosed parts.
    """

    class_id: int
    rgb: np.ndarray  # h x w x 3 uint8
    mask: np.ndarray  # h x w bool (holes filled)
    truth: np.ndarray | None  # h x w uint8 truth part labels (synthetic benchmark) or None
    host: int
    source: int  # index of the image it came from
    instance: int  # index of the component in that image's composition
    color_lab: tuple[float, float, float]
    area: int  # the instance's own area (class statistics)
    inner: list[Inner] = field(default_factory=list)
    encloses: bool = False  # other parts lie inside its holes (only worked out for ComponentBank.container)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``mask`` with every enclosed hole filled (outer contours drawn filled)."""
    m = mask.astype(np.uint8)
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    out = np.zeros_like(m)
    cv2.drawContours(out, contours, -1, 1, thickness=cv2.FILLED)
    return out.astype(bool) | mask


def object_crop(image: np.ndarray, truth: np.ndarray | None, comp: Composition, j: int, pad: int = 2,
                whole: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, tuple[int, int], list[Inner]]:
    """Crop of instance ``j`` as a whole object: (rgb, filled mask, truth, top-left, enclosed components).

    Why: segmentation gives a part's classes separately; editing only the outer class left the inner parts
    behind as a smeared blob (remove) or moved an empty shell (move), as the generated previews showed.
    """
    s_h, s_w = image.shape[:2]
    c = comp.components[j]
    y0, x0, y1, x1 = c.bbox
    y0, x0, y1, x1 = max(0, y0 - pad), max(0, x0 - pad), min(s_h, y1 + pad), min(s_w, x1 + pad)
    filled = fill_holes(c.mask[y0:y1, x0:x1]) if whole else c.mask[y0:y1, x0:x1].copy()
    inner = []
    if whole and filled.sum() > c.area:
        for k, o in enumerate(comp.components):
            if k == j or o.bbox[0] < y0 or o.bbox[1] < x0 or o.bbox[2] > y1 or o.bbox[3] > x1:
                continue
            om = o.mask[y0:y1, x0:x1]
            if (om & filled).sum() >= 0.8 * o.area:
                inner.append(Inner(index=k, class_id=o.class_id, mask=om & filled, color_lab=o.color_lab))
    return (image[y0:y1, x0:x1].copy(), filled, None if truth is None else truth[y0:y1, x0:x1].copy(), (y0, x0),
            inner)


def _typical_size(area: float, median_area: float) -> bool:
    """A whole part of a class whose parts have this median area: not a fragment, not a merged blob."""
    return median_area > 0 and 0.5 * median_area <= area <= 2.0 * median_area


def ring(mask: np.ndarray, width: int) -> np.ndarray:
    """Pixels within ``width`` of ``mask`` but outside it."""
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * width + 1, 2 * width + 1))
    return cv2.dilate(mask.astype(np.uint8), k).astype(bool) & ~mask


def dilate(mask: np.ndarray, width: int) -> np.ndarray:
    if width <= 0:
        return mask.copy()
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * width + 1, 2 * width + 1))
    return cv2.dilate(mask.astype(np.uint8), k).astype(bool)


class ComponentBank:
    """Normal images, their segmentations and parts, indexed for editing."""

    def __init__(self, images: np.ndarray, class_maps: np.ndarray, truths: list[np.ndarray | None],
                 ids: list[str], paths: list[str], background: int, min_area: int,
                 max_part_area: float | None = None, whole_objects: bool | None = None,
                 strict_parts: bool | None = None, placement_check: bool | None = None,
                 twin_classes: bool | None = None) -> None:
        if twin_classes is not None:
            self.twin_classes = twin_classes
        if placement_check is not None:
            self.placement_check = placement_check
        if max_part_area is not None:
            self.max_part_area = max_part_area
        if whole_objects is not None:
            self.whole_objects = whole_objects
        if strict_parts is not None:
            self.strict_parts = strict_parts
        self.images = images
        self.class_maps = class_maps
        self.truths = truths
        self.ids = ids
        self.paths = paths
        self.background = background
        self.min_area = min_area
        self.size = images.shape[1]
        self.instance_maps: list[np.ndarray] = []
        self.components: list[list[Component]] = []  # masks dropped (see composition())
        self.items: list[BankItem] = []
        self.hosts: list[list[int]] = []
        self._build()
        self._build_references()
        self._build_class_stats()

    def __len__(self) -> int:
        return len(self.images)

    def _build(self) -> None:
        for i, (img, cm) in enumerate(zip(self.images, self.class_maps)):
            comp = compose(cm, img, self.ids[i], background=self.background, min_area=self.min_area,
                           lab=rgb_to_lab(img))
            inst = np.zeros(cm.shape, np.int16)
            for j, c in enumerate(comp.components):
                inst[c.mask] = j + 1
                c.mask = None  # type: ignore[assignment]  # rebuilt on demand from the instance map
            self.instance_maps.append(inst)
            self.components.append(comp.components)
        self._drop_fragments()
        if self.twin_classes:
            self._merge_twins()
        pad = 2
        s = self.size
        for i, (img, cm) in enumerate(zip(self.images, self.class_maps)):
            comp = self._composition(i)
            hosts = []
            for j, c in enumerate(comp.components):
                r = ring(c.mask, max(2, s // 64))
                vals = cm[r]
                vals = vals[vals != c.class_id]
                host = int(np.bincount(vals).argmax()) if len(vals) else self.background
                hosts.append(host)
                rgb, mask, truth, _, inner = object_crop(img, self.truths[i], comp, j, pad, self.whole_objects)
                # only the container rule reads it: no second crop per part at start-up otherwise
                encloses = (self.strict_parts and not self.whole_objects
                            and bool(object_crop(img, None, comp, j, pad)[4]))
                self.items.append(BankItem(class_id=c.class_id, rgb=rgb, mask=mask, truth=truth, host=host, source=i,
                                           instance=j, color_lab=c.color_lab, area=c.area, inner=inner,
                                           encloses=encloses))
            self.hosts.append(hosts)

    def _drop_fragments(self) -> None:
        """Forget the instances smaller than ``fragment_share`` of their class's median instance area.

        Why: Low-Density Sampling takes its threshold from the lowest normal log-densities, so one normal image
        whose count is off by a sliver sets it. On the built-in pushpin_grid (40 images) an 11-px corner of a cell
        cut off by a pin (1.2% of the median cell) made one image hold 10 cells: log-density -453 against a median
        of -48, a 1st-percentile threshold of -307, and every missing pin (about -250) refused. The sliver's pixels
        keep their class in the class map; it is only not counted or edited as a part.
        """
        areas: dict[int, list[int]] = {}
        for cs in self.components:
            for c in cs:
                areas.setdefault(c.class_id, []).append(c.area)
        floor = {k: self.fragment_share * float(np.median(v)) for k, v in areas.items()}
        for i, cs in enumerate(self.components):
            keep = [c.area >= floor[c.class_id] for c in cs]
            if all(keep):
                continue
            lut = np.zeros(len(cs) + 1, np.int16)
            lut[1:][keep] = np.arange(1, sum(keep) + 1)
            self.instance_maps[i] = lut[self.instance_maps[i]]
            self.components[i] = [c for c, k in zip(cs, keep) if k]

    #: give a class's parts of a clearly other size to their size twin (``_merge_twins``); off by default, see
    #: CompositionalConfig.twin_classes
    twin_classes = False
    #: sizes of one class's parts form two groups when the largest gap between sorted areas is this ratio or
    #: more, and the groups' median areas are ``twin_spread`` apart or more
    twin_gap = 1.5
    twin_spread = 4.0
    #: a group and a class are twins when their median areas lie within this ratio of each other ...
    twin_area_ratio = 1.5
    #: ... and at most this share of the images that hold the rarer of the two holds both
    twin_overlap = 0.05

    def _merge_twins(self) -> int:
        """Move the parts of one size group of a class into another class of that size that never shares an image
        with them; returns how many parts moved.

        Why: pixel clustering groups parts by colour. A part that comes in several colours (a cable that is
        yellow, blue or red, one per image) then lands partly in its own class and partly in the class of
        another part of a similar colour (the purple levers). Neither class has a stable count, so no logical
        edit acts on the cable: no missing cable, no wrong cable colour. Parts of one class with two clearly
        different sizes (a tenth of a cable's area for a lever), whose larger group matches another class in size
        and never meets it in an image, are one part in another colour: merged, the cable class holds one cable in
        every image.
        """
        moved = 0
        for a in sorted({c.class_id for cs in self.components for c in cs}):
            parts = [(i, j) for i, cs in enumerate(self.components) for j, c in enumerate(cs) if c.class_id == a]
            if len(parts) < 4:
                continue
            log_area = np.log([self.components[i][j].area for i, j in parts])
            ordered = np.sort(log_area)
            g = int(np.argmax(np.diff(ordered)))
            cut = (ordered[g] + ordered[g + 1]) / 2
            spread = np.median(ordered[g + 1:]) - np.median(ordered[:g + 1])
            if ordered[g + 1] - ordered[g] < np.log(self.twin_gap) or spread < np.log(self.twin_spread):
                continue
            for in_group in (log_area > cut, log_area <= cut):
                group = [p for p, m in zip(parts, in_group) if m]
                b = self._twin_of(a, group)
                if b is None:
                    continue
                if moved == 0:
                    self.class_maps = self.class_maps.copy()  # the caller's maps stay as the model gave them
                for i, j in group:
                    self.components[i][j].class_id = b
                    self.class_maps[i][self.instance_maps[i] == j + 1] = b
                moved += len(group)
                break
        return moved

    def _twin_of(self, a: int, group: list[tuple[int, int]]) -> int | None:
        """The class (not ``a``) whose parts have the group's size and (almost) never share an image with it."""
        area = float(np.median([self.components[i][j].area for i, j in group]))
        images = {i for i, _ in group}
        for b in sorted({c.class_id for cs in self.components for c in cs} - {a}):
            b_parts = [(i, c.area) for i, cs in enumerate(self.components) for c in cs if c.class_id == b]
            b_area = float(np.median([s for _, s in b_parts]))
            if not 1 / self.twin_area_ratio <= area / b_area <= self.twin_area_ratio:
                continue
            # only whole parts of b count: a sliver of b's colour at another part's edge is no second part
            b_images = {i for i, s in b_parts if _typical_size(s, b_area)}
            if b_images and len(images & b_images) <= self.twin_overlap * min(len(images), len(b_images)):
                return b
        return None

    #: an instance smaller than this share of its class's median instance area is a sliver, not a part
    #: (``_drop_fragments``)
    fragment_share = 0.1
    #: a class counts as a reliable part when its per-image instance count takes one value in this share of images
    stable_share = 0.6
    #: the largest instance (share of the image area) that remove/add/move/resize/swap/replace act on. Why: a
    #: component covering a third of the image (a tray insert, a grid frame) is the scene's fixture, not a loose
    #: part; moving or duplicating it pastes a second tray. 1.0 (the default, see CompositionalConfig) = no limit.
    max_part_area = 1.0
    #: cut a part whole (holes filled, the parts it encloses go with it) rather than its own class's pixels only
    whole_objects = False
    #: no container cut by its own pixels is edited (``container``), swap/replace pair parts of comparable
    #: extent (``comgen.generate.edits``); off by default, see CompositionalConfig.strict_parts
    strict_parts = False

    def _build_class_stats(self) -> None:
        """Per class: how stable its per-image instance count is, and its median instance area.

        Why: an edit only models a *logical* defect when it acts on a real part. A class whose count varies
        from image to image (a region the learner split unevenly, fragments of a merged part) gives removes
        and adds that leave the scene normal; an instance far from its class's typical size is such a fragment.
        """
        self.enclosing_share: dict[int, float] = {}
        for k in self.classes():
            self.enclosing_share[k] = float(np.mean([it.encloses for it in self.items_of(k)]))
        self.count_mode: dict[int, int] = {}
        self.count_share: dict[int, float] = {}
        self.median_area: dict[int, float] = {}
        for k in self.classes():
            counts = np.array([sum(c.class_id == k for c in cs) for cs in self.components])
            mode = int(np.bincount(counts).argmax())
            self.count_mode[k] = mode
            self.count_share[k] = float((counts == mode).mean())
            self.median_area[k] = float(np.median([it.area for it in self.items if it.class_id == k]))

    #: a part class sits at fixed places when, around its parts, at least this share of the other normal images
    #: hold a part of the class too (``place_share``)
    fixed_place_share = 0.5
    #: placement edits (remove, add, move, swap, replace) act only on classes at fixed places; see
    #: CompositionalConfig.placement_check
    placement_check = False

    @cached_property
    def place_share(self) -> dict[int, float]:
        """Per class: the mean, over its parts, of the share of the *other* normal images holding the class that
        have a pixel of it within one part width (the square root of its median area) of the part's centre.
        Computed on first use (only ``fixed_place`` with the check on needs it), not at start-up.

        Why: a detector that compares an image with normal references sees a missing, extra or moved part only
        where normal images agree on what lies there. Where parts lie anywhere (screws in a bag), the hole looks
        like normal bag and the extra part like any normal part, so such an edit labels normal-looking pixels as a
        defect. On the built-in screw_bag at 128 px (generator benchmark, two seeds) the full ComGEN set gave
        structural AUROC 0.567 (network alone 0.484), without any logical edit 0.749 (0.712). Measured only; the
        rule that acts on it (``placement_check``) is off by default, see CompositionalConfig.
        """
        shares_by_class: dict[int, float] = {}
        for k in self.classes():
            parts = [(i, c) for i, cs in enumerate(self.components) for c in cs if c.class_id == k]
            holders = {i for i, _ in parts}  # images that hold the class: a rare class is not a loose one
            if len(holders) < 2:
                shares_by_class[k] = 1.0
                continue
            width = max(1, int(round(np.sqrt(self.median_area[k]))))
            at = {i: [] for i, _ in parts}  # each part's centre, per image
            for i, c in parts:
                at[i].append((min(self.size - 1, max(0, int(round(c.centroid[0])))),
                              min(self.size - 1, max(0, int(round(c.centroid[1]))))))
            total = np.zeros((self.size, self.size), np.int32)
            square = np.ones((2 * width + 1, 2 * width + 1), np.uint8)  # separable: fast for large parts
            own = {}
            for i in holders:  # one image at a time: memory stays one map
                near = cv2.dilate((self.class_maps[i] == k).astype(np.uint8), square).astype(bool)
                total += near
                own[i] = [int(near[y, x]) for y, x in at[i]]
            shares = [(total[y, x] - o) / (len(holders) - 1) for i in at for (y, x), o in zip(at[i], own[i])]
            shares_by_class[k] = float(np.mean(shares))
        return shares_by_class

    def fixed_place(self, class_id: int) -> bool:
        """The class's parts lie where other normal images have such parts too (always, with the check off)."""
        return not self.placement_check or self.place_share.get(class_id, 1.0) >= self.fixed_place_share

    def stable(self, class_id: int) -> bool:
        """The class's instance count is (nearly) the same in every normal image, and not zero."""
        return self.count_mode.get(class_id, 0) >= 1 and self.count_share.get(class_id, 0.0) >= self.stable_share

    def typical(self, class_id: int, area: float) -> bool:
        """The instance is a whole part of its class, not a fragment or a merged blob."""
        return _typical_size(area, self.median_area.get(class_id, 0.0))

    def confident(self, c: Component) -> bool:
        """A whole instance of a reliable part class (what remove/add/recolor edits act on)."""
        return self.stable(c.class_id) and self.typical(c.class_id, c.area)

    def small(self, area: float) -> bool:
        """Small enough to be a loose part (see ``max_part_area``)."""
        return area <= self.max_part_area * self.size ** 2

    def removable(self, c: Component) -> bool:
        """What a remove edit may take out. Why: removing a fragment of an unreliable class leaves a normal scene,
        removing the fixture leaves no scene, and (``strict_parts``) removing a container cut by its own pixels
        leaves its content floating (fruit without its tray, levers without their connector). A part that lies
        anywhere (``fixed_place``) leaves a hole that looks normal."""
        return (self.confident(c) and self.small(c.area) and not self.container(c.class_id)
                and self.fixed_place(c.class_id))

    #: a class counts as a container when at least this share of its instances has other parts in its holes
    container_share = 0.5

    def container(self, class_id: int) -> bool:
        """With ``strict_parts``: its parts hold other parts (a grid's cells hold pins, a connector its levers), and
        they are cut by their own pixels (``whole_objects`` off). Why: moving, swapping or pasting such a part alone
        carries a hole where its content was and leaves the content behind; pushpin cells swapped with pins did
        just that."""
        return (self.strict_parts and not self.whole_objects
                and self.enclosing_share.get(class_id, 0.0) >= self.container_share)

    def movable(self, c: Component | BankItem) -> bool:
        """A whole part that can be taken out, put elsewhere, resized or swapped: not a fragment, not a tray (nor,
        with ``strict_parts``, a container cut without its content)."""
        return self.typical(c.class_id, c.area) and self.small(c.area) and not self.container(c.class_id)

    def _build_references(self) -> None:
        """Global colour descriptors (16x16 Lab thumbnails) and each image's nearest other normal image."""
        thumbs = np.stack([cv2.resize(rgb_to_lab(im), (16, 16), interpolation=cv2.INTER_AREA).ravel()
                           for im in self.images])
        sq = (thumbs ** 2).sum(1)
        d = sq[:, None] + sq[None] - 2 * thumbs @ thumbs.T
        np.fill_diagonal(d, np.inf)
        self.descriptors = thumbs
        self.nearest = d.argmin(1) if len(self.images) > 1 else np.zeros(1, int)

    def composition(self, i: int) -> Composition:
        """Full Composition of bank image ``i`` (masks rebuilt from its instance map; a small LRU cache keeps
        recently used ones, since candidate edits revisit the same images). Treat it as read-only."""
        cache = self.__dict__.setdefault("_cache", OrderedDict())
        if i in cache:
            cache.move_to_end(i)
            return cache[i]
        comp = self._composition(i)
        cache[i] = comp
        if len(cache) > self.cache_size:
            cache.popitem(last=False)
        return comp

    cache_size = 32

    def _composition(self, i: int) -> Composition:
        inst = self.instance_maps[i]
        comps = []
        for j, c in enumerate(self.components[i]):
            comps.append(Component(class_id=c.class_id, mask=inst == j + 1, centroid=c.centroid, area=c.area,
                                   color_lab=c.color_lab, bbox=c.bbox, orientation=c.orientation))
        return Composition(image_id=self.ids[i], image_shape=(self.size, self.size), components=comps)

    def items_of(self, class_id: int) -> list[BankItem]:
        return [it for it in self.items if it.class_id == class_id]

    def classes(self) -> list[int]:
        return sorted({it.class_id for it in self.items})

    def reference(self, i: int) -> int:
        return int(self.nearest[i])
