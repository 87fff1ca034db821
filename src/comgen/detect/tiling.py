"""Tiled mode for large images: a grid of working-size tiles over the image at its own aspect ratio.

Why: squashing a 1700x1000 image into one 256 px square shrinks a 6 px defect below a pixel and distorts every
part's shape. In tiled mode the image is scaled by one factor (``tile_scale``; 1.0 is its native resolution, or
``tiles``: the shorter side spans that many tile widths), and cut into S x S tiles (S = ``image_size``) that
overlap by ``tile_overlap`` of a tile, the last tile of each row and column flush with the border. Each tile is
matched and scored on its own; the per-tile maps are blended back with a smooth window, normalised by coverage, so
seams carry no weight and a constant map stays constant. The image's network score is the maximum over its
tiles. The composition prior still sees the whole image, downscaled to the untiled S x S square.

Training, validation and generated anomalies are cut with the grid of their own size (``grid_for``), and so are
their masks, so the network sees at training the same kind of tiles it sees at predict time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from comgen.data.imageio import resize_mask, resize_rgb
from comgen.errors import InputError


def is_tiled(cfg: Any) -> bool:
    """Whether a ``DetectorConfig`` runs in tiled mode."""
    return cfg.tiles > 1 or cfg.tile_scale > 0


@dataclass(frozen=True)
class TileGrid:
    """Where the tiles of one image lie: the image is resized to ``scaled`` (H, W), tiles start at ``ys`` x ``xs``."""

    original: tuple[int, int]  # (H, W) of the image as given
    scaled: tuple[int, int]  # (H, W) of the resized image the tiles are cut from
    size: int  # tile side S
    ys: tuple[int, ...]  # row starts, top to bottom
    xs: tuple[int, ...]  # column starts, left to right

    def __len__(self) -> int:
        return len(self.ys) * len(self.xs)

    def starts(self) -> list[tuple[int, int]]:
        """(y, x) of every tile, row-major: the order of ``cut``'s tiles and ``blend``'s inputs."""
        return [(y, x) for y in self.ys for x in self.xs]


def axis_starts(length: int, size: int, overlap: float) -> tuple[int, ...]:
    """Tile starts along one axis: the fewest tiles of ``size`` overlapping by at least ``overlap`` of a tile that
    cover ``length``, evenly spread, the first at 0 and the last flush with the end."""
    if length <= size:
        return (0,)
    stride = max(1.0, size * (1.0 - overlap))
    n = math.ceil((length - size) / stride - 1e-9) + 1
    return tuple(int(round(i * (length - size) / (n - 1))) for i in range(n))


def make_grid(shape: tuple[int, int], size: int, scale: float, overlap: float) -> TileGrid:
    """The grid of an image of ``shape`` (H, W) scaled by ``scale``; a side shorter than a tile is stretched to one."""
    h, w = int(shape[0]), int(shape[1])
    if h < 1 or w < 1 or not (scale > 0 and math.isfinite(scale)):
        raise InputError("tiling", f"cannot tile a {h}x{w} image at scale {scale!r}")
    sh, sw = max(size, int(round(h * scale))), max(size, int(round(w * scale)))
    return TileGrid((h, w), (sh, sw), size, axis_starts(sh, size, overlap), axis_starts(sw, size, overlap))


def grid_for(cfg: Any, shape: tuple[int, int]) -> TileGrid:
    """The grid a ``DetectorConfig`` uses for an image of ``shape``: ``tile_scale`` when set, else the scale at which
    the shorter side spans ``tiles`` tile widths."""
    s = cfg.image_size
    scale = cfg.tile_scale if cfg.tile_scale > 0 else cfg.tiles * s / max(1, min(shape[:2]))
    return make_grid(shape[:2], s, scale, cfg.tile_overlap)


def cut(scaled: np.ndarray, grid: TileGrid) -> np.ndarray:
    """[h, w, ...] at the grid's scaled size -> [n, S, S, ...] tiles, row-major."""
    if tuple(scaled.shape[:2]) != grid.scaled:
        raise InputError("tiling", f"array is {scaled.shape[:2]}, the grid expects {grid.scaled}")
    s = grid.size
    return np.stack([scaled[y:y + s, x:x + s] for y, x in grid.starts()])


def tile_image(image: np.ndarray, grid: TileGrid) -> np.ndarray:
    """An RGB image at its original size -> its [n, S, S, 3] uint8 tiles."""
    return cut(resize_rgb(image, grid.scaled), grid)


def tile_mask(mask: np.ndarray, grid: TileGrid) -> np.ndarray:
    """A mask at its original size -> [n, S, S] float32 0/1 tiles (nearest neighbour: labels are never blended)."""
    m = resize_mask(np.asarray(mask).astype(np.uint8), grid.scaled) > 0
    return cut(m.astype(np.float32), grid)


def window(size: int) -> np.ndarray:
    """[S, S] blending weights: a sine window, highest at the tile's centre and small but positive at its edges.

    Why positive: a pixel that only one tile covers (the image border) must keep that tile's value.
    """
    w = np.sin(np.pi * (np.arange(size) + 0.5) / size).astype(np.float32)
    return np.outer(w, w)


def blend(tile_maps: np.ndarray, grid: TileGrid) -> np.ndarray:
    """[n, S, S] per-tile maps -> one [h, w] float32 map at the grid's scaled size, weighted by ``window`` and
    normalised by the summed weights (every pixel is covered, so the weights are positive everywhere)."""
    if tile_maps.shape != (len(grid), grid.size, grid.size):
        raise InputError("tiling", f"{tile_maps.shape} tile maps for a grid of {len(grid)} tiles of {grid.size} px")
    s, (h, w) = grid.size, grid.scaled
    win = window(s)
    acc = np.zeros((h, w), np.float64)
    cover = np.zeros((h, w), np.float64)
    for (y, x), m in zip(grid.starts(), tile_maps):
        acc[y:y + s, x:x + s] += m * win
        cover[y:y + s, x:x + s] += win
    return (acc / cover).astype(np.float32)


def to_original(amap: np.ndarray, grid: TileGrid) -> np.ndarray:
    """A map at the grid's scaled size -> the original image size (bilinear)."""
    h, w = grid.original
    if amap.shape[:2] == (h, w):
        return amap
    return cv2.resize(amap, (w, h), interpolation=cv2.INTER_LINEAR)


def image_max(values: np.ndarray, group: np.ndarray | None) -> np.ndarray:
    """Per whole image, the max over its tiles (identity when not tiled)."""
    if group is None:
        return values
    out = np.full(int(group.max()) + 1, -np.inf, dtype=np.float64)
    np.maximum.at(out, group, values)
    return out


def whole(image: np.ndarray, size: int) -> np.ndarray:
    """The whole image at the untiled S x S working size (what the composition prior sees)."""
    return resize_rgb(image, size)


def prior_inputs(splits: Any, cfg: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What the composition prior is fitted and calibrated on, per whole image: (training normals, validation
    images, their labels). In tiled mode the images are the whole ones at S x S and a validation image's label is
    its tiles' maximum."""
    val = splits.val
    if not is_tiled(cfg):
        return splits.bank_images, val.images, val.labels
    if splits.whole_bank is None or splits.whole_val is None:
        raise InputError("tiled splits", "no whole images for the composition prior (Splits.whole_bank/whole_val)")
    return splits.whole_bank, splits.whole_val, image_max(val.labels.astype(np.float64), val.group)


def predict_tiled(det: Any, images: list[np.ndarray], batch_size: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[np.ndarray]]:
    """Tiled prediction of RGB uint8 images at their own sizes with a loaded ``Detector``: calibrated network
    scores [N] (max over each image's tiles), composition-prior and count-pattern scores [N] of the whole images
    (NaN without them) and maps at each image's original size."""
    scores = np.zeros(len(images), np.float32)
    maps = []
    for j, img in enumerate(images):
        grid = grid_for(det.cfg, img.shape[:2])
        tiles = tile_image(img, grid)
        logits, tile_maps = [], []
        for i in range(0, len(tiles), batch_size):
            g, m, _ = det._forward(tiles[i:i + batch_size])
            logits.append(g)
            tile_maps.append(m)
        sc, mp = det.normalise(np.concatenate(logits), np.concatenate(tile_maps))
        scores[j] = sc.max()
        maps.append(to_original(blend(mp, grid), grid))
    prior = np.full(len(images), np.nan, np.float32)
    counts = np.full(len(images), np.nan, np.float32)
    if det.prior is not None:
        prior[:], z_counts = det.prior.score_branches(np.stack([whole(img, det.cfg.image_size) for img in images]))
        if z_counts is not None:
            counts[:] = z_counts
    return scores, prior, counts, maps
