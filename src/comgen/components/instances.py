"""Instance-aware component classes: split the pixel learner's colour classes into part types by instance shape.

Why: colour clustering of pixels gives one class per colour, so parts of one colour and different shapes (screws,
nuts and washers of one metal) share a token, and a part whose colour is close to the background's stays
background. CSAD (BMVC 2024) and ComAD describe each part instance rather than each pixel; this stage does the
same on top of the pixel classes, with NumPy and OpenCV only (the export runtime runs it unchanged):

- *Surfaces* are the pixel classes whose connected regions are large (the background, a tray, a box). They keep
  their pixel class; their internal structure (wells, walls) stays part of them. A surface that meets the
  background without a real edge is a band of uneven light and joins the background (``shading_classes``). A
  small region of a surface's class lying apart from it on another surface is a part of the surface's colour
  (``surface_pieces``: a steel bolt beside a light grey fixture), and its instances form a group of their own.
- *Low-contrast parts* are found as blobs that stand out from a smooth model of the background's own colour (a
  normalised convolution of the background pixels), with a threshold set from the training images' noise; each
  blob may reach out over its blurred edge to half its peak (``hysteresis``, an option).
- *Parts of the background's colour lying on a surface* are the islands of the background's class that other
  classes enclose (a dark part on a light fixture). As options, each takes the inner half of the blurred fringe
  around it (``island_fringes``), and they form a group of their own (``ISLANDS``), apart from the faint blobs.
- *Instances* are the connected regions of every other class, and the blobs; touching parts are split by a
  watershed on the distance transform.
- Each instance is described by its shape (area, elongation, circularity, solidity, holes), colour and pooled
  backbone features. Within each group (one pixel class, or the background's blobs) the instances are clustered
  with k-means; a split is kept only when it is clean (silhouette), each cluster is a real share of the
  instances, and the clusters' per-image counts are about as steady as the group's total. A split that is driven
  by colour alone is kept only when the clusters appear together in images; otherwise it is one part that comes
  in several colours. Each cluster is then tried again (divisive), where a split needs every cluster's count per
  image to be steady: two close part types are otherwise hidden by a third, more distinct one.
- Each final cluster is last searched for *shape modes* (``shape_modes``): part types of one colour whose counts
  vary from image to image fail the steady-count rule, but every instance of a manufactured part has nearly the
  same shape, so the types stand out as tight, dense modes of the shape descriptors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from comgen.components.composition import enclosed_holes

#: group id of the low-contrast blobs found on the background (pixel classes use their own ids)
BLOBS = -1
#: group id of the islands of the background's colour lying on a surface (``island_mask``): the pieces of the
#: background's class (``piece_group(0)``)
ISLANDS = -2

#: natural units of the shape descriptors: log area, log elongation, circularity, solidity, holes
SHAPE_UNITS = np.array([0.25, 0.15, 0.08, 0.05, 0.5], np.float32)
SHAPE_DIMS = len(SHAPE_UNITS)
#: shape columns the mode search reads: all but the holes, whose count varies within a type (a connector's slots
#: are found whole in one image and merged in the next)
MODE_DIMS = 4
COLOR_UNIT = 6.0  # Lab units
PIECE_ON = 0.75  # a surface's piece is a part when this share of the pixels around it is one other surface's
COMPACT = 0.8  # a surface whose pixels lie at least this much in large regions may have pieces


def piece_group(surface: int) -> int:
    """Group id of the pieces of surface class ``surface`` (``surface_pieces``): below ``BLOBS``, apart from the
    pixel classes' own ids."""
    return -2 - surface


def piece_host(group: int) -> int | None:
    """The surface class whose pieces ``group`` holds, or None for a pixel class's group or the blobs."""
    return -2 - group if group <= -2 else None


@dataclass
class InstanceOptions:
    """The instance stage's settings (fields of LearnerConfig, gathered here so the stage has one argument)."""

    surface_share: float = 0.05
    blob_sigma: float = 12.0
    blob_noise: float = 8.0
    blob_smooth: float = 1.5
    rim_px: float = 3.0
    shading_ratio: float = 3.0  # a surface whose edge with the background is at most this times the background's
    # own texture (median Lab gradient) is the background under uneven light, not a surface of its own
    blob_min_de: float = 2.0
    min_area: float = 0.0005
    k_max: int = 4
    silhouette: float = 0.5
    min_share: float = 0.05
    deep_weight: float = 0.5
    color_weight: float = 1.0
    together: float = 0.3
    min_presence: float = 0.3
    count_slack: float = 0.1
    split_touching: bool = True
    split_depth: int = 2  # levels of splits: 2 tries each cluster of the first split again
    steady: float = 0.8  # a steady split: every cluster's usual count per image holds in this share of the images
    steady_silhouette: float = 0.3  # ... and its silhouette is at least this
    trim: float = 0.1  # share of a group's instances a steady split may set aside as outliers
    metric_floor: float = 0.25  # adaptive metric: smallest within-cluster spread, in natural units
    metric_clip: float = 5.0  # ... and the largest weight against the median column's
    shape_modes: bool = True  # split a final cluster into its tight shape modes (``shape_modes``)
    mode_spread: float = 1.5  # a mode's largest standard deviation over the shape columns, in natural units
    mode_share: float = 0.1  # a mode's smallest size, as a share of its cluster's instances (at least 5)
    mode_trade: float = -0.3  # two modes whose counts per image correlate below this are one type's halves
    mode_gap: float = 1.5  # ... as are two modes whose centres are closer than this, in natural units
    surface_pieces: bool = True  # small regions of a surface's class lying apart from it are parts (``surface_pieces``)
    # the three options below are off by default (a stage saved without them segments as before); 0.5, 6 and True
    # turn them on as designed
    blob_hysteresis: float = 0.0  # a blob reaches out to where its deviation falls to this share of its peak, if
    # that is below the threshold (``hysteresis``; 0 = off)
    fringe_px: float = 0.0  # an island of the background's colour takes the fringe around it up to this width (px at
    # 256 px) where it lies on a surface (``island_fringes``; 0 = off)
    islands_apart: bool = False  # islands of the background's colour form a group of their own (``ISLANDS``), apart
    # from the faint blobs on the background


#: options that a stage saves only where they are on, so a stage with them off reads in runtimes that predate them
#: (a bundle whose stage has one on is format 7: ``detect.bundle._grows_parts``)
OFF_OPTIONS = {"blob_hysteresis": 0.0, "fringe_px": 0.0, "islands_apart": False}


def saved_options(opt: InstanceOptions) -> dict[str, Any]:
    """The options as a stage saves them: every setting, less those of ``OFF_OPTIONS`` that are off."""
    return {k: v for k, v in opt.__dict__.items() if k not in OFF_OPTIONS or v != OFF_OPTIONS[k]}


@dataclass
class Group:
    """One group's sub-classes: descriptor scaling, cluster centres and the final class id of each cluster."""

    mean: np.ndarray
    scale: np.ndarray
    centroids: np.ndarray
    classes: np.ndarray
    presence: np.ndarray | None = None  # share of the fit images showing each class slot (fitting only)
    #: shape modes that refine a cluster (``shape_modes``): the cluster each refines, its centre on the first
    #: ``MODE_DIMS`` shape columns in natural units, and its slot in ``classes``
    mode_parent: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    mode_centroids: np.ndarray = field(default_factory=lambda: np.zeros((0, MODE_DIMS), np.float32))
    mode_slot: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def assign(self, desc: np.ndarray) -> np.ndarray:
        """Class of each instance: its nearest centre, then, in a cluster refined by shape modes, its nearest mode."""
        z = (desc - self.mean) * self.scale
        d = ((z[:, None, :] - self.centroids[None]) ** 2).sum(-1)
        return self.classes[self.refine_slots(desc, d.argmin(1))]

    def refine_slots(self, desc: np.ndarray, cluster: np.ndarray) -> np.ndarray:
        """The class slot of each instance given its cluster: the slot of its nearest shape mode where the cluster
        has modes, the cluster's own slot elsewhere."""
        if not len(self.mode_parent):
            return cluster
        s = desc[:, :MODE_DIMS] / SHAPE_UNITS[:MODE_DIMS]
        d = ((s[:, None, :] - self.mode_centroids[None]) ** 2).sum(-1)
        d[self.mode_parent[None, :] != cluster[:, None]] = np.inf
        refined = np.isfinite(d).any(1)
        out = cluster.copy()
        out[refined] = self.mode_slot[d[refined].argmin(1)]
        return out


MODE_ARRAYS = ("mode_parent", "mode_centroids", "mode_slot")


@dataclass
class InstanceStage:
    """The fitted stage: final class of every surface, the blob threshold, and every group's sub-classes."""

    surface_class: dict[int, int]
    groups: dict[int, Group]
    blob_tau: float
    num_classes: int
    surfaces: tuple[int, ...] = (0,)
    options: InstanceOptions = field(default_factory=InstanceOptions)
    shading: tuple[int, ...] = ()  # pixel classes read as the background (see ``shading_classes``)

    def renumber(self, order: list[int]) -> None:
        """Renumber the final classes: class ``order[i]`` becomes class ``i``."""
        new = np.empty(self.num_classes, np.int64)
        new[np.asarray(order)] = np.arange(self.num_classes)
        self.surface_class = {c: int(new[v]) for c, v in self.surface_class.items()}
        for grp in self.groups.values():
            grp.classes = new[grp.classes]

    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays: dict[str, np.ndarray] = {}
        for g, grp in self.groups.items():
            for name in ("mean", "scale", "centroids", "classes") + (MODE_ARRAYS if len(grp.mode_parent) else ()):
                arrays[f"instances.{g}.{name}"] = np.ascontiguousarray(getattr(grp, name), dtype=np.float32)
        meta = {"surface_class": {str(k): v for k, v in self.surface_class.items()}, "groups": sorted(self.groups),
                "blob_tau": self.blob_tau if np.isfinite(self.blob_tau) else None, "num_classes": self.num_classes,
                "surfaces": list(self.surfaces), "options": saved_options(self.options), "shading": list(self.shading)}
        return arrays, meta

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> InstanceStage:
        groups = {}
        for g in meta["groups"]:
            a = {n: arrays[f"instances.{g}.{n}"] for n in ("mean", "scale", "centroids", "classes")}
            grp = Group(a["mean"], a["scale"], a["centroids"], a["classes"].astype(np.int64))
            if f"instances.{g}.mode_parent" in arrays:  # a stage without shape modes saves none
                parent, centres, slot = (arrays[f"instances.{g}.{n}"] for n in MODE_ARRAYS)
                grp.mode_parent, grp.mode_slot = parent.astype(np.int64), slot.astype(np.int64)
                grp.mode_centroids = centres
                m = len(parent)
                if not m or centres.shape != (m, MODE_DIMS) or slot.shape != (m,) \
                        or not 0 <= grp.mode_parent.min() <= grp.mode_parent.max() < len(grp.centroids) \
                        or not 0 <= grp.mode_slot.min() <= grp.mode_slot.max() < len(grp.classes):
                    raise ValueError(f"group {g}'s shape modes do not match its clusters and classes")
            groups[int(g)] = grp
        tau = meta.get("blob_tau")
        return cls({int(k): int(v) for k, v in meta["surface_class"].items()}, groups,
                   float("inf") if tau is None else float(tau), int(meta["num_classes"]),
                   tuple(int(c) for c in meta["surfaces"]), InstanceOptions(**meta.get("options", {})),
                   tuple(int(c) for c in meta.get("shading", ())))

    def refine(self, pixel_map: np.ndarray, lab: np.ndarray, deep: np.ndarray | None) -> np.ndarray:
        """Final class map of one image from its pixel classes, Lab colour and (upsampled) deep features."""
        pixel_map = as_background(pixel_map, self.shading)
        pixel_map = absorb_rims(pixel_map, set(self.surfaces), self.options.rim_px * pixel_map.shape[0] / 256,
                                self.options.surface_share)
        blobs = blob_mask(lab, pixel_map, self.blob_tau, self.options, set(self.surfaces)) \
            if BLOBS in self.groups else None
        islands = island_mask(lab, pixel_map, self.options, set(self.surfaces)) \
            if ISLANDS in self.groups and self.options.islands_apart else None
        pieces = [h for h in map(piece_host, self.groups) if h not in (None, 0)]  # the background's are the islands
        labels, groups = find_instances(pixel_map, blobs, set(self.surface_class), self.options, pieces,
                                        set(self.surfaces), islands)
        out = np.zeros(pixel_map.shape, np.uint8)
        for c, final in self.surface_class.items():
            out[pixel_map == c] = final
        for g, grp in self.groups.items():  # pixels of a group outside any kept instance: its largest class
            if g >= 0:
                out[pixel_map == g] = grp.classes[0]
        if len(groups):
            desc = describe(labels, len(groups), lab, deep)
            cls = np.zeros(len(groups) + 1, np.int64)
            for g, grp in self.groups.items():
                idx = np.flatnonzero(groups == g)
                if len(idx):
                    cls[idx + 1] = grp.assign(desc[idx])
            inst = labels > 0
            out[inst] = cls[labels[inst]]
        return out


# -- finding instances ------------------------------------------------------------------------------

def background_field(lab: np.ndarray, mask: np.ndarray, sigma: float, iters: int = 2,
                     tau: float = np.inf) -> np.ndarray:
    """Smooth estimate of the background's colour everywhere: a normalised convolution of the masked pixels.

    Each pass drops the pixels that stand out from the previous estimate by more than ``tau``, so a part that
    the pixel classes left in the background does not pull the estimate towards its own colour.
    """
    m = mask.astype(np.float32)
    field = lab
    for _ in range(iters):
        w = cv2.GaussianBlur(m, (0, 0), sigma)
        num = cv2.GaussianBlur(lab * m[..., None], (0, 0), sigma)
        field = num / np.maximum(w, 1e-3)[..., None]
        if not np.isfinite(tau):
            break
        m = (mask & (np.linalg.norm(lab - field, axis=-1) <= tau)).astype(np.float32)
    return field


def blob_deviation(lab: np.ndarray, bg: np.ndarray, opt: InstanceOptions, tau: float = np.inf) -> np.ndarray:
    """Lab distance of every pixel from the background model (0 outside the background).

    The signed difference is smoothed over a few pixels before its length is taken: sensor noise averages out
    while a part's offset, the same over its whole area, does not.
    """
    size = lab.shape[0]
    field = background_field(lab, bg, opt.blob_sigma * size / 256, iters=2 if np.isfinite(tau) else 1, tau=tau)
    diff = cv2.GaussianBlur(np.ascontiguousarray(lab - field), (0, 0), opt.blob_smooth * size / 256)
    d = np.linalg.norm(diff, axis=-1)
    d[~bg] = 0.0
    return d


def blob_mask(lab: np.ndarray, pixel_map: np.ndarray, tau: float, opt: InstanceOptions,
              surfaces: set[int]) -> np.ndarray:
    """Parts left in the background class: pixels that stand out from the background model by more than ``tau``
    (reaching out over their blurred edge, ``hysteresis``), and, unless ``opt.islands_apart``, the islands of the
    background's class (``island_mask``)."""
    bg = pixel_map == 0
    size = lab.shape[0]
    r = max(1, int(round(size / 128)))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    m = np.zeros(bg.shape, np.uint8)
    if np.isfinite(tau):
        dev = blob_deviation(lab, bg, opt, tau)
        inner = cv2.erode(bg.astype(np.uint8), kernel)  # the rims of other classes' regions are not blobs
        if opt.blob_hysteresis > 0:  # nor do they seed or link blobs
            m = hysteresis(np.where(inner > 0, dev, 0.0), tau, opt.blob_hysteresis)
        else:
            m = (dev > tau).astype(np.uint8)
        m = cv2.morphologyEx(m, cv2.MORPH_CLOSE, kernel)
        m &= inner
    if opt.islands_apart:  # the islands are searched on their own, the blobs on the open background only
        return m.astype(bool) & ~background_islands(bg, opt.surface_share)
    return m.astype(bool) | island_mask(lab, pixel_map, opt, surfaces)


def island_mask(lab: np.ndarray, pixel_map: np.ndarray, opt: InstanceOptions, surfaces: set[int]) -> np.ndarray:
    """bool mask: the islands of the background's class enclosed by other classes (a part of the background's
    colour lying on a fixture), each with its fringe (``island_fringes``)."""
    islands = background_islands(pixel_map == 0, opt.surface_share)
    if opt.fringe_px > 0 and islands.any():
        islands = island_fringes(pixel_map, lab, islands, surfaces, opt.fringe_px * pixel_map.shape[0] / 256)
    return islands


def hysteresis(dev: np.ndarray, high: float, share: float) -> np.ndarray:
    """uint8 mask: each connected region of pixels above ``share * high`` that holds a pixel above ``high``, cut
    where its deviation falls below ``share`` of its own peak (or below ``high``, whichever is lower).

    Why: a faint part's deviation from the background falls off over its blurred edge, so a threshold set above
    the noise keeps only its core, and its shape reads smaller and rounder than the part's. A blurred step's edge
    lies where the step has fallen to half its height; the weaker pixels of a region belong to the part where
    they join its core, and noise, which rarely reaches ``high``, stays out.
    """
    weak = (dev > share * high).astype(np.uint8)
    n, comp = cv2.connectedComponents(weak, connectivity=8)
    seeded = np.zeros(n, bool)
    seeded[np.unique(comp[dev > high])] = True
    seeded[0] = False
    peak = np.zeros(n, np.float64)
    np.maximum.at(peak, comp.ravel(), dev.ravel())
    cut = np.minimum(high, share * peak)
    return (seeded[comp] & (dev > cut[comp])).astype(np.uint8)


def island_fringes(pixel_map: np.ndarray, lab: np.ndarray, islands: np.ndarray, surfaces: set[int],
                   width: float) -> np.ndarray:
    """bool mask: ``islands`` each grown over the pixels between it and the surface it lies on, up to ``width``,
    as far as their colour is nearer the island's than the surface's.

    Why: a dark part on a light fixture has a dark core, which may take the background's colour (an island), and
    a blurred fringe of intermediate colour, which takes another class (the class of thin dark parts, or of a
    tray's edges). The part is its core and the inner half of its fringe (a blurred step's edge lies half-way
    between the two colours): the core alone reads too small, and the fringe alone reads as a ring of another
    class. An island is grown only where the pixels just beyond ``width`` are mostly one surface other than the
    background; the hole of a ring lying on the background (a view of the background through the ring) is left
    alone.
    """
    w = max(1, int(round(width)))
    n, comp, stats, _ = cv2.connectedComponentsWithStats(islands.astype(np.uint8), connectivity=8)
    out = islands.copy()
    cross = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    h_img, w_img = pixel_map.shape
    for i in range(1, n):
        x, y, bw, bh = (int(v) for v in stats[i, :4])
        pad = w + 2
        sl = (slice(max(0, y - pad), min(h_img, y + bh + pad)), slice(max(0, x - pad), min(w_img, x + bw + pad)))
        region = (comp[sl] == i).astype(np.uint8)
        dist = cv2.distanceTransform(1 - region, cv2.DIST_L2, 3)
        shell = (dist > w) & (dist <= w + 2)
        around = pixel_map[sl][shell]
        if not around.size:
            continue
        host = int(np.bincount(around).argmax())
        if host == 0 or host not in surfaces or (around == host).mean() < 0.5:
            continue
        crop = lab[sl]
        core = np.median(crop[region > 0], axis=0)
        surface = np.median(crop[shell & (pixel_map[sl] == host)], axis=0)
        nearer = np.linalg.norm(crop - core, axis=-1) < np.linalg.norm(crop - surface, axis=-1)
        free = ((pixel_map[sl] != host) & nearer).astype(np.uint8)
        grown = region
        for _ in range(w):
            grown = cv2.dilate(grown, cross) & free | region
        out[sl] |= grown.astype(bool)
    return out


def background_islands(bg: np.ndarray, max_share: float) -> np.ndarray:
    """bool mask: regions of the background's class enclosed by other classes (clear of the image border) and
    smaller than ``max_share`` of the image: a part of the background's colour lying on a fixture, not the
    background."""
    n, comp, stats, _ = cv2.connectedComponentsWithStats(bg.astype(np.uint8), connectivity=8)
    if n <= 2:
        return np.zeros(bg.shape, bool)
    border = np.unique(np.concatenate([comp[0], comp[-1], comp[:, 0], comp[:, -1]]))
    small = stats[:, cv2.CC_STAT_AREA] < max_share * bg.size
    islands = np.flatnonzero(small & ~np.isin(np.arange(n), border))
    islands = islands[islands > 0]
    return np.isin(comp, islands) if len(islands) else np.zeros(bg.shape, bool)


def fit_blob_threshold(devs: list[np.ndarray], bgs: list[np.ndarray], opt: InstanceOptions) -> float:
    """The background's noise level, from the deviations of all its training pixels: median + k * MAD."""
    v = np.concatenate([d[b] for d, b in zip(devs, bgs)])
    if v.size == 0:
        return float("inf")
    med = float(np.median(v))
    mad = float(np.median(np.abs(v - med))) * 1.4826
    return max(opt.blob_min_de, med + opt.blob_noise * mad)


def _split_touching(region: np.ndarray) -> np.ndarray:
    """Label image of one connected region, split where two blobs touch (watershed on the distance transform)."""
    dist = cv2.distanceTransform(region.astype(np.uint8), cv2.DIST_L2, 3)
    peaks = (dist >= 0.7 * float(dist.max())).astype(np.uint8)
    n, markers = cv2.connectedComponents(peaks)
    if n <= 2:
        return region.astype(np.int32)
    img = cv2.cvtColor(cv2.normalize(dist, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8), cv2.COLOR_GRAY2BGR)
    markers = markers.astype(np.int32)
    markers[(region == 0)] = n  # the outside is its own marker, removed below
    cv2.watershed(255 - img, markers)
    markers[(markers == n) | (markers < 0) | (region == 0)] = 0
    return markers


def _ring(region: np.ndarray) -> np.ndarray:
    """bool mask: the pixels touching ``region`` (8-neighbours) outside it."""
    return (cv2.dilate(region.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0) & ~region


def absorb_rims(pixel_map: np.ndarray, surfaces: set[int], rim_px: float, island_share: float = 0.0) -> np.ndarray:
    """Give thin regions of the non-surface classes to the class they border (other than the background).

    Why: blurred edges between two colours form their own colour, so the pixel classes hold rims (a yellow-grey
    halo around every yellow part, a band along a tray's edge). A rim is at most ``rim_px`` thick and belongs
    to the part or the surface it surrounds; a thin part lying on the background alone (a wire) is kept. Where
    a rim lies between a surface and an island of the background's class (``background_islands`` below
    ``island_share`` of the image: a part of the background's colour lying on a fixture), its pixels next to the island
    are that part's edge and join it; the rest stays with the surface, as the blur between them is shared.
    """
    out = pixel_map.copy()
    near_island = None  # the rim's pixels next to an island of the background's class: a third of its width
    if island_share > 0:
        r = max(1, int(round(rim_px / 3)))
        near_island = cv2.dilate(background_islands(pixel_map == 0, island_share).astype(np.uint8),
                                 np.ones((2 * r + 1, 2 * r + 1), np.uint8)) > 0
    for c in np.unique(pixel_map):
        c = int(c)
        if c in surfaces:
            continue
        mask = (pixel_map == c).astype(np.uint8)
        n, comp = cv2.connectedComponents(mask, connectivity=8)
        if n <= 1:
            continue
        dist = cv2.distanceTransform(mask, cv2.DIST_L2, 3)
        thick = np.zeros(n, np.float32)
        np.maximum.at(thick, comp.ravel(), dist.ravel())
        for i in np.flatnonzero(thick[1:] <= rim_px) + 1:
            region = comp == i
            around = pixel_map[_ring(region)]
            around = around[(around != c) & (around != 0)]
            if around.size:
                out[region] = host = int(np.bincount(around).argmax())
                if near_island is not None and host in surfaces:
                    out[region & near_island] = 0
    return out


def surface_pieces(pixel_map: np.ndarray, surface: int, surfaces: set[int], opt: InstanceOptions) -> np.ndarray:
    """bool mask: the regions of a surface's class that are small (under ``opt.surface_share`` of the image) and
    lie on another surface (at least ``PIECE_ON`` of the pixels around them are one large region of another
    surface's class).

    Why: the pixel stage gives a part whose colour lies near a fixture's (a steel bolt beside a light grey tray)
    the fixture's class, and a surface's class is never split into instances, so the part would read as a piece
    of the fixture. A surface is large; a part of its colour lying apart from it, on the background or on another
    surface, is small. A small region enclosed by a part (a ring's hole, also where the ring has the background's
    colour) or lying between parts or between two surfaces (a blurred edge that took the surface's colour) is no
    part.
    """
    big = opt.surface_share * pixel_map.size
    mask = (pixel_map == surface).astype(np.uint8)
    _, comp, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    small = np.flatnonzero(stats[1:, cv2.CC_STAT_AREA] < big) + 1
    out = np.zeros(pixel_map.shape, bool)
    if not len(small):
        return out
    host = np.full(pixel_map.shape, -1, np.int64)  # each host surface's large regions (not a dark ring's island)
    for c in surfaces - {surface}:
        _, hc, hs, _ = cv2.connectedComponentsWithStats((pixel_map == c).astype(np.uint8), connectivity=8)
        large = np.flatnonzero(hs[1:, cv2.CC_STAT_AREA] >= big) + 1
        host[np.isin(hc, large)] = c
    for i in small:
        x, y, w, h = (int(v) for v in stats[i, :4])
        sl = (slice(max(0, y - 1), y + h + 1), slice(max(0, x - 1), x + w + 1))
        region = comp[sl] == i
        ring = _ring(region)
        on = host[sl][ring]
        on = on[on >= 0]
        if on.size and np.bincount(on).max() >= PIECE_ON * ring.sum():
            out[sl] |= region
    return out


def compact_surfaces(pixel_maps: np.ndarray, surfaces: set[int], share: float) -> set[int]:
    """The surfaces other than the background whose pixels lie, in the median image showing them, mostly
    (``COMPACT``) in regions of at least ``share`` of the image: a fixture or a tray, which may have parts of its
    colour lying apart (``surface_pieces``), and not the grains of a texture, which are all pieces."""
    size = pixel_maps.shape[1] * pixel_maps.shape[2]
    out = set()
    for c in surfaces - {0}:
        shares = []
        for m in pixel_maps:
            mask = (m == c).astype(np.uint8)
            total = int(mask.sum())
            if not total:
                continue
            _, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
            area = stats[1:, cv2.CC_STAT_AREA]
            shares.append(float(area[area >= share * size].sum()) / total)
        if shares and float(np.median(shares)) >= COMPACT:
            out.add(c)
    return out


def find_instances(pixel_map: np.ndarray, blobs: np.ndarray | None, surfaces: set[int], opt: InstanceOptions,
                   pieces: list[int] | tuple[int, ...] = (), hosts: set[int] | None = None,
                   islands: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Instances of one image: a label image (0 = none, i = instance i) and the group of each instance.

    ``surfaces``: the classes that hold no instances. The surfaces of ``pieces`` are searched for parts of their
    colour lying on one of ``hosts`` (``surface_pieces``; the stage's surfaces, by default ``surfaces``).
    ``blobs`` and ``islands`` (group ``ISLANDS``) take their pixels from every other group."""
    size = pixel_map.shape[0]
    min_area = max(4, int(round(opt.min_area * size * size)))
    labels = np.zeros(pixel_map.shape, np.int32)
    groups: list[int] = []
    free = np.ones(pixel_map.shape, bool)  # a blob or an island takes the fringe around it
    for taken in (blobs, islands):
        if taken is not None:
            free &= ~taken
    if blobs is not None and islands is not None:
        blobs = blobs & ~islands  # an island's fringe is its own, not a blob's
    masks = [(int(c), (pixel_map == c) & free) for c in np.unique(pixel_map) if int(c) not in surfaces]
    if blobs is not None and blobs.any():
        masks.append((BLOBS, blobs))
    if islands is not None and islands.any():
        masks.append((ISLANDS, islands))
    masks += [(piece_group(c), surface_pieces(pixel_map, c, surfaces if hosts is None else hosts, opt) & free)
              for c in pieces]
    for g, mask in masks:
        n, comp, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
        for i in np.flatnonzero(stats[1:, cv2.CC_STAT_AREA] >= min_area) + 1:
            x, y, w, h = (int(v) for v in stats[i, :4])
            crop = comp[y:y + h, x:x + w] == i
            parts = _split_touching(crop) if opt.split_touching and _is_lumpy(crop, stats[i, 4]) else crop.astype(
                np.int32)
            for j in range(1, int(parts.max()) + 1):
                sub = parts == j
                if sub.sum() < min_area:
                    continue
                groups.append(g)
                labels[y:y + h, x:x + w][sub] = len(groups)
    return labels, np.asarray(groups, np.int64)


def _is_lumpy(crop: np.ndarray, area: int) -> bool:
    """Whether a region may be two touching parts: clearly less convex than one part."""
    cnts, _ = cv2.findContours(crop.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    hull = cv2.contourArea(cv2.convexHull(np.concatenate(cnts)))
    return hull > 0 and area / hull < 0.8


# -- describing instances ---------------------------------------------------------------------------

def shape_descriptor(mask: np.ndarray, image_area: float) -> np.ndarray:
    """log area share, log elongation, circularity, solidity, holes of one instance mask (a tight crop)."""
    m = mask.astype(np.uint8)
    area = float(m.sum())
    mo = cv2.moments(m, binaryImage=True)
    cov = np.array([[mo["mu20"], mo["mu11"]], [mo["mu11"], mo["mu02"]]]) / max(area, 1.0)
    ev = np.linalg.eigvalsh(cov)
    elong = 0.5 * np.log((ev[1] + 0.1) / (ev[0] + 0.1))
    cnts, hier = cv2.findContours(m, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    outer = [c for c, h in zip(cnts, hier[0]) if h[3] < 0] if hier is not None else []
    perim = sum(cv2.arcLength(c, True) for c in outer) or 1.0
    hull = cv2.contourArea(cv2.convexHull(np.concatenate(outer))) if outer else area
    holes = enclosed_holes(cnts, hier, 0.01 * area)
    return np.array([np.log(area / image_area), elong, min(4 * np.pi * area / perim ** 2, 1.2),
                     min(area / max(hull, 1.0), 1.0), holes], np.float32)


def describe(labels: np.ndarray, n: int, lab: np.ndarray, deep: np.ndarray | None) -> np.ndarray:
    """Descriptors [n, 5 + 4 + d]: shape, colour (mean Lab, std L) and mean deep features of every instance."""
    inside = np.flatnonzero(labels.ravel())  # the instances' own pixels: label 0 is never read
    flat = labels.ravel()[inside]
    counts = np.maximum(np.bincount(flat, minlength=n + 1)[1:].astype(np.float64), 1.0)

    def mean_of(values: np.ndarray) -> np.ndarray:
        v = values.reshape(labels.size, -1)[inside].astype(np.float64)
        return np.stack([np.bincount(flat, weights=v[:, c], minlength=n + 1)[1:] for c in range(v.shape[1])],
                        1) / counts[:, None]

    col = mean_of(lab)
    l_std = np.sqrt(np.maximum(mean_of(lab[..., 0] ** 2)[:, 0] - col[:, 0] ** 2, 0.0))
    shapes = np.zeros((n, SHAPE_DIMS), np.float32)
    area = float(labels.size)
    for i, sl in enumerate(_bboxes(labels, n)):
        if sl is not None:
            shapes[i] = shape_descriptor(labels[sl] == i + 1, area)
    parts = [shapes, col.astype(np.float32), l_std[:, None].astype(np.float32)]
    if deep is not None:
        parts.append(mean_of(deep).astype(np.float32))
    return np.concatenate(parts, 1)


def _bboxes(labels: np.ndarray, n: int) -> list[tuple[slice, slice] | None]:
    """Bounding box slices of instances 1..n (None for an id with no pixel)."""
    ys, xs = np.nonzero(labels)
    ids = labels[ys, xs] - 1
    lo_y, lo_x = np.full(n, labels.shape[0]), np.full(n, labels.shape[1])
    hi_y, hi_x = np.full(n, -1), np.full(n, -1)
    np.minimum.at(lo_y, ids, ys)
    np.minimum.at(lo_x, ids, xs)
    np.maximum.at(hi_y, ids, ys)
    np.maximum.at(hi_x, ids, xs)
    return [(slice(int(lo_y[i]), int(hi_y[i]) + 1), slice(int(lo_x[i]), int(hi_x[i]) + 1)) if hi_y[i] >= 0 else None
            for i in range(n)]


# -- fitting ----------------------------------------------------------------------------------------

def descriptor_scale(desc: np.ndarray, opt: InstanceOptions) -> tuple[np.ndarray, np.ndarray]:
    """Mean and per-column weights: shape and colour in natural units, deep features standardised (one scale)."""
    mean = desc.mean(0)
    scale = np.empty(desc.shape[1], np.float32)
    scale[:SHAPE_DIMS] = 1.0 / SHAPE_UNITS
    scale[SHAPE_DIMS:SHAPE_DIMS + 3] = opt.color_weight / COLOR_UNIT
    scale[SHAPE_DIMS + 3] = opt.color_weight / COLOR_UNIT
    if desc.shape[1] > SHAPE_DIMS + 4:
        deep = desc[:, SHAPE_DIMS + 4:]
        sd = float(np.sqrt((deep.std(0) ** 2).mean())) or 1.0
        scale[SHAPE_DIMS + 4:] = opt.deep_weight / (sd * np.sqrt(deep.shape[1])) * np.sqrt(SHAPE_DIMS)
    return mean.astype(np.float32), scale


def _together(labels: np.ndarray, image_of: np.ndarray, a: int, b: int) -> float:
    """Share of the images showing cluster ``a`` or ``b`` that show both."""
    ia, ib = set(image_of[labels == a]), set(image_of[labels == b])
    either = len(ia | ib)
    return len(ia & ib) / either if either else 0.0


def _count_matrix(labels: np.ndarray, image_of: np.ndarray, k: int, n_img: int) -> np.ndarray:
    """[k, images]: each cluster's instance count in each image."""
    counts = np.zeros((k, max(n_img, 1)), np.int64)
    np.add.at(counts, (labels, image_of), 1)
    return counts


def _modal_counts(labels: np.ndarray, image_of: np.ndarray, k: int, n_img: int) -> tuple[np.ndarray, np.ndarray]:
    """Per cluster, its most common instance count per image and the share of images in which it takes that value."""
    return _modal(_count_matrix(labels, image_of, k, n_img))


def _modal(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``_modal_counts`` of a count matrix [k, images]."""
    hists = [np.bincount(c) for c in counts]
    return np.array([h.argmax() for h in hists]), np.array([h.max() / counts.shape[1] for h in hists])


def count_stability(labels: np.ndarray, image_of: np.ndarray, k: int, n_img: int) -> float:
    """Mean over clusters of the share of images in which the cluster's instance count takes its most common value.

    Why: a real part type has a steady count in normal images (two screws, one nut); a split that cuts one part
    type in two by an accident of shape or colour makes both halves' counts vary from image to image.
    """
    return float(np.mean(_modal_counts(labels, image_of, k, n_img)[1]))


def steady_counts(labels: np.ndarray, image_of: np.ndarray, k: int, n_img: int) -> np.ndarray:
    """Per cluster, the share of images in which its instance count takes its most common value; 0 where that
    value is zero (a thing that is usually absent is steadily absent, which says nothing about a part type)."""
    mode, share = _modal_counts(labels, image_of, k, n_img)
    return np.where(mode > 0, share, 0.0)


def adaptive_metric(z: np.ndarray, labels: np.ndarray, k: int, opt: InstanceOptions) -> np.ndarray:
    """Per-column weights from the clusters' pooled spread: columns along which the clusters are tight count more.

    Why: two part types of one colour differ in a few columns (circularity, area) while colour and texture vary
    as much within each type; a plain Euclidean k-means then cuts along the noisy columns instead.
    """
    within = np.sqrt(sum(((z[labels == j] - z[labels == j].mean(0)) ** 2).sum(0) for j in range(k)) / len(z))
    w = 1.0 / np.maximum(within, opt.metric_floor)
    return np.clip(w / np.median(w), 1.0 / opt.metric_clip, opt.metric_clip)


def _small_clusters(lab: np.ndarray, k: int, opt: InstanceOptions) -> np.ndarray:
    """Per cluster of ``lab``, whether it is too small to be a part type (under 2 instances or ``opt.min_share``)."""
    return np.bincount(lab, minlength=k) < max(2, opt.min_share * len(lab))


def _kmeans(z: np.ndarray, k: int, seed: int) -> np.ndarray:
    from sklearn.cluster import KMeans

    return KMeans(k, n_init=4, random_state=seed).fit(z).labels_


def _trimmed_kmeans(z: np.ndarray, lab: np.ndarray, k: int, opt: InstanceOptions, seed: int
                    ) -> tuple[np.ndarray, np.ndarray] | None:
    """k-means whose too-small clusters are set aside as outliers (up to ``opt.trim`` of the points) and refit;
    ``lab`` is the k-means of all of ``z``.

    Why: a few odd instances (fragments, rims) far from the rest win a cluster of their own and so hide the split
    between two real part types.
    """
    keep = np.ones(len(z), bool)
    for attempt in range(3):
        if attempt:
            lab = _kmeans(z[keep], k, seed)
        small = _small_clusters(lab, k, opt)
        if not small.any():
            return keep, lab
        drop = np.flatnonzero(keep)[small[lab]]
        if (~keep).sum() + len(drop) > opt.trim * len(z):
            return None
        keep[drop] = False
    return None


def _judge(z: np.ndarray, lab: np.ndarray, k: int, image_of: np.ndarray, opt: InstanceOptions, seed: int,
           n_img: int, adapt: bool, strict: bool, bar: float) -> tuple[np.ndarray, np.ndarray, float] | None:
    """Weights, weighted centres and silhouette of a split of ``z`` into ``lab``, or None when it is not real.

    A clean split (silhouette above ``opt.silhouette``) needs only counts about as steady as the group's; a less
    clean one, and any split inside a cluster (``strict``) need every cluster's count to be steady in the normal
    images, as a real part type's is. With ``adapt`` the split is redone in the metric of ``adaptive_metric``.
    """
    from sklearn.metrics import silhouette_score

    w = np.ones(z.shape[1], np.float32)
    if adapt:
        for _ in range(2):
            w = adaptive_metric(z, lab, k, opt)
            lab = _kmeans(z * w, k, seed)
            if _small_clusters(lab, k, opt).any():
                return None
    zw = z * w
    sil = float(silhouette_score(zw, lab, sample_size=min(2000, len(z)), random_state=seed))
    if sil <= bar:
        return None
    if (strict or sil <= opt.silhouette) and steady_counts(lab, image_of, k, n_img).min() < opt.steady:
        return None
    centres = np.stack([z[lab == j].mean(0) for j in range(k)])
    shape_gap = np.linalg.norm(centres[:, None, :SHAPE_DIMS] - centres[None, :, :SHAPE_DIMS], axis=-1)
    colour_only = [(a, b) for a in range(k) for b in range(a + 1, k) if shape_gap[a, b] < 2.0]
    if any(_together(lab, image_of, a, b) < opt.together for a, b in colour_only):
        return None  # one part type in several colours (a colour code), not several types
    if count_stability(lab, image_of, k, n_img) < count_stability(np.zeros_like(lab), image_of, 1, n_img) \
            - opt.count_slack:
        return None  # the clusters' counts per image vary where the group's total does not: an unstable split
    return w, centres * w, sil


def _best_split(z: np.ndarray, image_of: np.ndarray, opt: InstanceOptions, seed: int, n_img: int, nested: bool
                ) -> tuple[np.ndarray, np.ndarray, bool] | None:
    """The best real split of ``z`` (weights, weighted centres, whether the steady path found it), or None."""
    n = len(z)
    best, best_sil = None, -1.0
    for k in range(2, opt.k_max + 1):
        if n < 2 * k or n < 8:
            break
        bar = max(best_sil, opt.steady_silhouette)
        lab = _kmeans(z, k, seed)
        r, steady_path = None, False
        if not _small_clusters(lab, k, opt).any():
            r = _judge(z, lab, k, image_of, opt, seed, n_img, False, nested, bar)
        if r is None:  # the steady path: outliers set aside, the metric adapted, every count steady
            found = _trimmed_kmeans(z, lab, k, opt, seed)
            if found is not None:
                keep, lab = found
                r = _judge(z[keep], lab, k, image_of[keep], opt, seed, n_img, True, True, bar)
                steady_path = True
        if r is not None:
            best, best_sil = (r[0], r[1], steady_path), r[2]
    return best


def cluster_group(desc: np.ndarray, image_of: np.ndarray, opt: InstanceOptions, seed: int, n_img: int) -> Group:
    """Cluster one group's instances into sub-classes (one cluster unless a split is clean and real).

    The split is divisive: each cluster is tried again, down to ``opt.split_depth`` levels, so that two close part
    types are not hidden by a third, more distinct one. The leaves are then assigned by their nearest centre in
    one metric for the whole group, so the fitted stage stays a flat nearest-centre rule; that metric is the plain
    one unless a split of the steady path was kept, so a group that path leaves alone is clustered as before.
    """
    mean, scale = descriptor_scale(desc, opt)
    z = (desc - mean) * scale
    leaf = np.zeros(len(z), np.int64)
    n_leaves, adapted = 0, False

    def divide(idx: np.ndarray, depth: int) -> None:
        nonlocal n_leaves, adapted
        split = _best_split(z[idx], image_of[idx], opt, seed, n_img, depth > 0) \
            if depth < opt.split_depth else None
        if split is None:
            leaf[idx] = n_leaves
            n_leaves += 1
            return
        w, centres, steady_path = split
        adapted |= steady_path
        lab = ((z[idx][:, None] * w - centres[None]) ** 2).sum(-1).argmin(1)
        for j in range(len(centres)):
            if (lab == j).any():
                divide(idx[lab == j], depth + 1)

    divide(np.arange(len(z)), 0)
    k = n_leaves
    w = adaptive_metric(z, leaf, k, opt) if adapted else np.ones(z.shape[1], np.float32)
    cents = np.stack([(z[leaf == j] * w).mean(0) for j in range(k)])
    lab = ((z[:, None] * w - cents[None]) ** 2).sum(-1).argmin(1)
    order = np.argsort(-np.bincount(lab, minlength=k))  # largest cluster first: the group's default class
    rank = np.empty(k, np.int64)
    rank[order] = np.arange(k)
    group = Group(mean, (scale * w).astype(np.float32), cents[order].astype(np.float32), np.arange(k))
    slot = rank[lab]
    if opt.shape_modes:
        refine_by_modes(group, desc, image_of, slot, opt, n_img)
        slot = group.refine_slots(desc, slot)
    group.presence = np.array([len(set(image_of[slot == j].tolist())) for j in range(len(group.classes))],
                              np.float64) / max(n_img, 1)
    return group


def shape_modes(desc: np.ndarray, image_of: np.ndarray, opt: InstanceOptions, n_img: int
                ) -> tuple[np.ndarray, np.ndarray] | None:
    """The part types of one cluster found as tight modes of its shape columns: each mode's centre [M, MODE_DIMS]
    (natural units) and its type, or None when fewer than two types stand out.

    Why: the steady-count rule of ``_judge`` keeps false splits out, but it also keeps together part types of one
    colour whose counts vary (one or two discs per image beside three squares). Every instance of a manufactured
    part has nearly the same area and outline, so such types are dense, tight modes of the shape columns, found by
    HDBSCAN; fragments and rims of other regions spread widely, or are absent from most images. A mode counts
    when its spread is at most ``opt.mode_spread`` in every column and it usually shows at least once per image.
    Two modes are two looks of one type, and share it, when their counts per image trade off (correlation below
    ``opt.mode_trade``: a part seen in two orientations) or when their centres lie closer than ``opt.mode_gap``
    (small parts drawn on the pixel grid differ by a pixel or two with their position).
    """
    from scipy.sparse.csgraph import connected_components
    from sklearn.cluster import HDBSCAN

    n = len(desc)
    size = max(5, int(opt.mode_share * n))
    if n < 2 * size:
        return None
    s = desc[:, :MODE_DIMS] / SHAPE_UNITS[:MODE_DIMS]
    lab = HDBSCAN(min_cluster_size=size, min_samples=5, copy=True).fit(s).labels_
    modes = [j for j in range(lab.max() + 1) if s[lab == j].std(0).max() <= opt.mode_spread]
    if len(modes) < 2:
        return None
    found = lab >= 0
    counts = _count_matrix(lab[found], image_of[found], lab.max() + 1, n_img)
    usual, _ = _modal(counts)
    modes = [j for j in modes if usual[j] >= 1]
    if len(modes) < 2:
        return None
    cents = np.stack([s[lab == j].mean(0) for j in modes])
    with np.errstate(invalid="ignore", divide="ignore"):  # a mode whose count never varies has no correlation
        same = np.corrcoef(counts[modes]) < opt.mode_trade
    same |= np.linalg.norm(cents[:, None] - cents[None], axis=-1) < opt.mode_gap
    n_types, types = connected_components(same, directed=False)
    return (cents.astype(np.float32), types) if n_types >= 2 else None


def refine_by_modes(group: Group, desc: np.ndarray, image_of: np.ndarray, slot: np.ndarray, opt: InstanceOptions,
                    n_img: int) -> None:
    """Split each of ``group``'s clusters (``slot``: each instance's) into its shape modes' types, in place.

    A refined cluster's largest type keeps the cluster's slot (so the group's largest cluster stays its default
    class) and each other type gets a new slot; instances outside every mode go to the nearest mode.
    """
    parents, centres, slots = [], [], []
    nxt = len(group.classes)
    for j in range(len(group.classes)):
        idx = np.flatnonzero(slot == j)
        found = shape_modes(desc[idx], image_of[idx], opt, n_img)
        if found is None:
            continue
        cents, types = found
        near = types[((desc[idx, None, :MODE_DIMS] / SHAPE_UNITS[:MODE_DIMS] - cents[None]) ** 2).sum(-1).argmin(1)]
        by_size = np.argsort(-np.bincount(near, minlength=types.max() + 1))
        type_slot = np.empty(len(by_size), np.int64)
        type_slot[by_size[0]] = j
        type_slot[by_size[1:]] = np.arange(nxt, nxt + len(by_size) - 1)
        nxt += len(by_size) - 1
        parents += [j] * len(cents)
        centres.append(cents)
        slots += type_slot[types].tolist()
    if parents:
        group.mode_parent = np.array(parents, np.int64)
        group.mode_centroids = np.concatenate(centres).astype(np.float32)
        group.mode_slot = np.array(slots, np.int64)
        group.classes = np.arange(nxt)


def fit_stage(pixel_maps: np.ndarray, labs: np.ndarray, deeps: np.ndarray | None, num_pixel_classes: int,
              opt: InstanceOptions, seed: int = 0) -> tuple[InstanceStage, dict[str, Any]]:
    """Fit the stage on the training images' pixel maps [N,S,S], Lab [N,S,S,3] and deep features [N,S,S,d]."""
    n_img = len(pixel_maps)
    surfaces = surface_classes(pixel_maps, num_pixel_classes, opt.surface_share)
    shading = shading_classes(pixel_maps, labs, surfaces, opt.shading_ratio)
    if len(shading) >= num_pixel_classes - 1:
        shading = set()  # a texture of light and dark bands and nothing else: keep its bands as classes
    surfaces -= shading
    pixel_maps = np.stack([as_background(m, shading) for m in pixel_maps])
    pixel_maps = np.stack([absorb_rims(m, surfaces, opt.rim_px * m.shape[0] / 256, opt.surface_share)
                           for m in pixel_maps])
    bgs = [m == 0 for m in pixel_maps]
    inner = [cv2.erode(b.astype(np.uint8), np.ones((7, 7), np.uint8)) > 0 for b in bgs]  # away from other classes
    tau = fit_blob_threshold([blob_deviation(lab, bg, opt) for lab, bg in zip(labs, bgs)], inner, opt)
    tau = fit_blob_threshold([blob_deviation(lab, bg, opt, tau) for lab, bg in zip(labs, bgs)], inner, opt)
    all_desc, all_groups, image_of = [], [], []
    pieces = sorted(compact_surfaces(pixel_maps, surfaces, opt.surface_share)) if opt.surface_pieces else []
    for i in range(n_img):
        blobs = blob_mask(labs[i], pixel_maps[i], tau, opt, surfaces)
        islands = island_mask(labs[i], pixel_maps[i], opt, surfaces) if opt.islands_apart else None
        labels, groups = find_instances(pixel_maps[i], blobs, surfaces, opt, pieces, islands=islands)
        if len(groups):
            all_desc.append(describe(labels, len(groups), labs[i], None if deeps is None else deeps[i]))
            all_groups.append(groups)
            image_of.append(np.full(len(groups), i))
    desc = np.concatenate(all_desc) if all_desc else np.zeros((0, 1), np.float32)
    grp = np.concatenate(all_groups) if all_groups else np.zeros(0, np.int64)
    img = np.concatenate(image_of) if image_of else np.zeros(0, np.int64)
    fitted: dict[int, Group] = {}
    for g in sorted(set(grp.tolist())):
        idx = np.flatnonzero(grp == g)
        if g < 0 and len(set(img[idx].tolist())) < max(2, 0.2 * n_img):
            continue  # blobs or pieces in a few images only: noise or stray marks, not a part type
        fitted[g] = cluster_group(desc[idx], img[idx], opt, seed, n_img)
    # final class ids: surfaces keep theirs in order (background 0 first), then every group's clusters
    surface_class = {c: i for i, c in enumerate(sorted(surfaces))}
    nxt = len(surface_class)
    for c in range(num_pixel_classes):  # a non-surface pixel class without any instance keeps one class
        if c not in surfaces and c not in fitted and c not in shading:
            surface_class[c] = nxt
            nxt += 1
    for g in sorted(fitted):
        grp_ = fitted[g]
        host = piece_host(g)
        rare = grp_.presence < opt.min_presence if grp_.presence is not None else np.zeros(len(grp_.classes), bool)
        rare[0] &= g < 0  # a group's largest cluster is its default class
        classes = np.zeros(len(grp_.classes), np.int64)
        for j in range(len(classes)):
            if not rare[j]:
                classes[j] = nxt
                nxt += 1
            else:  # seen in few normal images: noise, not a part type; blobs go back to the background and
                # pieces to their surface
                classes[j] = 0 if g == BLOBS else surface_class[host] if host is not None else classes[0]
        if g < 0 and rare.all():
            del fitted[g]
            continue
        grp_.classes = classes
    stage = InstanceStage(surface_class, fitted, tau if BLOBS in fitted else float("inf"), nxt,
                          tuple(sorted(surfaces)), opt, tuple(sorted(shading)))
    info = {"surfaces": sorted(surfaces), "shading": sorted(shading), "blob_tau": float(tau),
            "instances": int(len(grp)), "group_sizes": {str(g): len(fitted[g].classes) for g in fitted}}
    return stage, info


def as_background(pixel_map: np.ndarray, shading: tuple[int, ...] | set[int]) -> np.ndarray:
    """``pixel_map`` with the pixel classes of ``shading`` set to the background's class 0."""
    if not shading:
        return pixel_map
    return np.where(np.isin(pixel_map, list(shading)), 0, pixel_map).astype(pixel_map.dtype)


def _lab_gradient(lab: np.ndarray) -> np.ndarray:
    """Magnitude of the Lab colour gradient (Sobel on a lightly blurred image)."""
    smooth = cv2.GaussianBlur(lab.astype(np.float32), (0, 0), 1.0)
    sq = np.zeros(lab.shape[:2], np.float32)
    for ch in range(3):
        sq += cv2.Sobel(smooth[..., ch], cv2.CV_32F, 1, 0) ** 2 + cv2.Sobel(smooth[..., ch], cv2.CV_32F, 0, 1) ** 2
    return np.sqrt(sq)


def shading_classes(pixel_maps: np.ndarray, labs: np.ndarray, surfaces: set[int], ratio: float) -> set[int]:
    """Surfaces other than the background whose edge with it is hardly stronger than its own texture.

    Why: under uneven light (a vignette, a shadow across the table) colour clustering cuts one background into
    bands of light and dark, and each band is large enough to count as a surface. A real surface (a tray, a
    fixture) meets the background at a sharp edge; a band meets it where the colour only drifts. A band kept as a
    surface of its own puts the parts lying on it into another class and hides faint parts from the blob search,
    which looks on the background only. The edge strength is the median Lab gradient on the pixels within two
    pixels of both classes, against the median gradient inside the background, over the images showing both.
    """
    if ratio <= 0:
        return set()
    near = np.ones((5, 5), np.uint8)
    inside = np.ones((11, 11), np.uint8)
    edge: dict[int, list[float]] = {c: [] for c in surfaces - {0}}
    texture: list[float] = []
    for m, lab in zip(pixel_maps, labs):
        bg = m == 0
        inner = cv2.erode(bg.astype(np.uint8), inside) > 0
        if inner.sum() < 20:
            continue
        grad = None
        near_bg = cv2.dilate(bg.astype(np.uint8), near) > 0
        for c in edge:
            other = m == c
            if not other.any():
                continue
            band = near_bg & (cv2.dilate(other.astype(np.uint8), near) > 0)
            if band.sum() < 20:
                continue
            grad = _lab_gradient(lab) if grad is None else grad
            edge[c].append(float(np.median(grad[band])))
        if grad is not None:
            texture.append(float(np.median(grad[inner])))
    if not texture:
        return set()
    floor = max(float(np.median(texture)), 1e-6)
    return {c for c, v in edge.items() if v and float(np.median(v)) <= ratio * floor}


def surface_classes(pixel_maps: np.ndarray, k: int, share: float) -> set[int]:
    """Pixel classes whose largest connected region is, in the median image showing them, a large share of it."""
    size = pixel_maps.shape[1] * pixel_maps.shape[2]
    largest: dict[int, list[float]] = {c: [] for c in range(k)}
    for m in pixel_maps:
        for c in np.unique(m):
            _, _, stats, _ = cv2.connectedComponentsWithStats((m == c).astype(np.uint8), connectivity=8)
            largest[int(c)].append(float(stats[1:, cv2.CC_STAT_AREA].max()) / size if len(stats) > 1 else 0.0)
    out = {0}
    out |= {c for c, v in largest.items() if v and float(np.median(v)) >= share}
    return out
