"""The component bank: every normal training image at the working resolution with its class map, instances,
truth labels (synthetic benchmark only) and cut-out parts, plus nearest-reference lookup.

Why: the compositional back-end never invents pixels for a part; it copies real parts of normal images (add,
replace) and fills holes from the most similar normal image (remove, move), so edited images stay realistic and
only the *composition* is wrong. Instances are stored as one int16 map per image (not one mask per part) so a
200-image bank at 256 px stays small.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import cv2
import numpy as np

from comgen.components.composition import compose, rgb_to_lab
from comgen.records import Component, Composition


@dataclass
class BankItem:
    """One part cut out of a normal image (bbox crop) with what it normally lies on (``host`` class).

    ``mask`` is the part's own pixels: parts of other classes that it encloses stay where they are.
    """

    class_id: int
    rgb: np.ndarray  # h x w x 3 uint8
    mask: np.ndarray  # h x w bool
    truth: np.ndarray | None  # h x w uint8 truth part labels (synthetic benchmark) or None
    host: int
    source: int  # index of the image it came from
    instance: int  # index of the component in that image's composition
    color_lab: tuple[float, float, float]
    area: int  # the instance's own area (class statistics)


def object_crop(image: np.ndarray, truth: np.ndarray | None, comp: Composition, j: int,
                pad: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, tuple[int, int]]:
    """Crop of instance ``j`` by its own pixels: (rgb, mask, truth, top-left), ``pad`` px around its bbox."""
    s_h, s_w = image.shape[:2]
    c = comp.components[j]
    y0, x0, y1, x1 = c.bbox
    y0, x0, y1, x1 = max(0, y0 - pad), max(0, x0 - pad), min(s_h, y1 + pad), min(s_w, x1 + pad)
    mask = c.mask[y0:y1, x0:x1].copy()
    return image[y0:y1, x0:x1].copy(), mask, None if truth is None else truth[y0:y1, x0:x1].copy(), (y0, x0)


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
                 part_classes: bool = False, carriers_stay: bool = False) -> None:
        self.images = images
        self.carriers_stay = carriers_stay  # carriers are never moved, resized, swapped or pasted in (``movable``)
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
        # ``part_classes``: each class is one kind of part (the instance stage), so a class can be a surface and a
        # class's spots are a part's spots; the colour classes may merge a surface or several part types in one
        self.frozen: set[int] = set()  # surface classes that edits leave alone (_freeze_surfaces)
        self.occupancy: dict[int, np.ndarray] = {}  # per class: share of images with a part at each pixel
        self.usual_occupancy: dict[int, float] = {}  # per class: that share at its own parts' centroids
        self._build()
        self._build_references()
        self._build_class_stats()
        self.carriers = self._carrier_classes()
        if part_classes:
            self._freeze_surfaces()
            self._build_occupancy()

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
                rgb, mask, truth, _ = object_crop(img, self.truths[i], comp, j, pad)
                self.items.append(BankItem(class_id=c.class_id, rgb=rgb, mask=mask, truth=truth, host=host, source=i,
                                           instance=j, color_lab=c.color_lab, area=c.area))
            self.hosts.append(hosts)

    def _drop_fragments(self) -> None:
        """Forget the instances smaller than ``fragment_share`` of their class's median instance area.

        Why: Low-Density Sampling takes its threshold from the lowest normal log-densities, so one normal image
        whose count is off by a sliver sets it: a tiny corner of a grid cell cut off by a pin made one image hold one
        cell too many, and its threshold then refused every missing pin. The sliver's pixels
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

    #: an instance smaller than this share of its class's median instance area is a sliver, not a part
    #: (``_drop_fragments``)
    fragment_share = 0.1
    #: a class counts as a reliable part when its per-image instance count takes one value in this share of images
    stable_share = 0.6

    def _build_class_stats(self) -> None:
        """Per class: how stable its per-image instance count is, and its median instance area.

        Why: an edit only models a *logical* defect when it acts on a real part. A class whose count varies
        from image to image (a region the learner split unevenly, fragments of a merged part) gives removes
        and adds that leave the scene normal; an instance far from its class's typical size is such a fragment.
        """
        self.count_mode: dict[int, int] = {}
        self.count_share: dict[int, float] = {}
        self.median_area: dict[int, float] = {}
        for k in self.classes():
            counts = np.array([sum(c.class_id == k for c in cs) for cs in self.components])
            mode = int(np.bincount(counts).argmax())
            self.count_mode[k] = mode
            self.count_share[k] = float((counts == mode).mean())
            self.median_area[k] = float(np.median([it.area for it in self.items if it.class_id == k]))

    #: a class is a surface when its instances carry other parts in at least this share of the images ...
    surface_share = 0.5
    #: ... and its instances' median area is at least this share of the image (a ring carries its hole, but is
    #: no surface)
    surface_area = 0.05

    def _freeze_surfaces(self) -> None:
        """Keep edits off the surfaces (a tray, a board) while some other part class has a steady count.

        Why: a surface is the frame the parts lie on. Recolouring, removing or replacing it changes the frame,
        which a composition rule is rarely about; such edits broke a rule only through the parts painted over with
        the surface. Where the surfaces are the only classes of steady count (free parts come one or two at a
        time), they stay editable, so the category still gets recolours (removes and adds never act on a carrier).
        """
        if any(self.stable(k) for k in self.classes() if k not in self.carriers):
            self.frozen = set(self.carriers)

    def _carrier_classes(self) -> set[int]:
        """Classes whose large instances carry other parts in most images (a tray, a board, a fixture).

        Why: the parts lie on a carrier, so it cannot be taken away or doubled while they stay where they are. With
        the instance stage the carriers are the surfaces that ``_freeze_surfaces`` keeps still; with the colour
        classes only remove and add leave them alone (and, with ``carriers_stay``, every edit but recolour), since
        recolouring or replacing a fixture's colour class also edits the parts of that colour.
        """
        carried: dict[int, int] = {}
        for hosts in self.hosts:
            for k in {h for h in hosts if h != self.background}:
                carried[k] = carried.get(k, 0) + 1
        big = self.surface_area * self.size * self.size
        return {k for k, n in carried.items()
                if n >= self.surface_share * max(len(self), 1) and self.median_area.get(k, 0.0) >= big}

    #: a spot is rare for a class when its parts lie there in fewer than this share of the images that they lie at
    #: their own usual spots
    rare_spot_share = 0.25

    def _build_occupancy(self) -> None:
        """Per class: the share of training images with a part of the class at each pixel (blurred by a gap), and
        that share at the class's own parts' centroids (its usual spots).

        Why: moving or swapping a part breaks a composition rule only where the part has a place (a slot, an order,
        a compartment). A part that lies anywhere in normal images is just moved; Low-Density Sampling's coarse
        position features let such moves through.
        """
        s = self.size
        classes = self.classes()
        acc = {k: np.zeros((s, s), np.float32) for k in classes}
        for inst, cs in zip(self.instance_maps, self.components):
            lut = np.array([-1, *[c.class_id for c in cs]], np.int32)
            of = lut[inst]
            for k in {c.class_id for c in cs}:
                acc[k] += of == k
        sigma = max(1.0, s / 64)
        for k in classes:
            occ = cv2.GaussianBlur(acc[k] / max(len(self), 1), (0, 0), sigma)
            self.occupancy[k] = occ
            own = [c.centroid for cs in self.components for c in cs if c.class_id == k]
            if own:
                self.usual_occupancy[k] = float(np.median(occ[self._pixels(own)]))

    def _pixels(self, centroids) -> tuple[np.ndarray, np.ndarray]:
        """Row and column indices of (y, x) centroids [n,2], rounded and kept inside the working size."""
        yx = np.clip(np.rint(np.asarray(centroids, np.float64).reshape(-1, 2)).astype(int), 0, self.size - 1)
        return yx[:, 0], yx[:, 1]

    def rare_spots(self, class_id: int, centroids: np.ndarray) -> np.ndarray:
        """bool [n]: parts of ``class_id`` centred at ``centroids`` [n,2] (y, x) would lie where the class rarely
        does; all True without position evidence (the colour classes), so moves and swaps stay as before."""
        rows, cols = self._pixels(centroids)
        occ = self.occupancy.get(class_id)
        if occ is None:
            return np.ones(len(rows), bool)
        return occ[rows, cols] < self.rare_spot_share * self.usual_occupancy.get(class_id, 0.0)

    def stable(self, class_id: int) -> bool:
        """The class's instance count is (nearly) the same in every normal image, and not zero."""
        return self.count_mode.get(class_id, 0) >= 1 and self.count_share.get(class_id, 0.0) >= self.stable_share \
            and class_id not in self.frozen

    def typical(self, class_id: int, area: float) -> bool:
        """The instance is a whole part of its class (not a fragment or a merged blob) and not a frozen
        surface."""
        return class_id not in self.frozen and _typical_size(area, self.median_area.get(class_id, 0.0))

    def confident(self, c: Component) -> bool:
        """A whole instance of a reliable part class (what remove/add/recolor edits act on)."""
        return self.stable(c.class_id) and self.typical(c.class_id, c.area)

    def removable(self, c: Component) -> bool:
        """What a remove edit may take out: a whole part of a reliable class that carries no other parts. Why:
        removing a fragment of an unreliable class leaves a normal scene; removing a carrier (``carriers``) leaves
        its parts lying on an inpainted smear."""
        return self.confident(c) and c.class_id not in self.carriers

    def addable(self, class_id: int) -> bool:
        """Whether an add edit may put one more part of the class in: a reliable class that is no carrier (a second
        tray pasted over the parts covers them, and breaks a count only by accident)."""
        return self.stable(class_id) and class_id not in self.carriers

    def movable(self, c: Component | BankItem) -> bool:
        """A whole part that can be taken out, put elsewhere, resized or swapped: not a fragment, not a merged
        blob, and with ``carriers_stay`` no carrier: its parts stay where they were, so a tray moved, resized,
        swapped or pasted in for a part covers them with a slab of the surface, which no composition rule is
        about."""
        return self.typical(c.class_id, c.area) and not (self.carriers_stay and c.class_id in self.carriers)

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
