"""Training material for CSDA: normal images, generated anomalies, cached frozen features and references.

Why a feature cache: the backbone is frozen, so its features of a (possibly augmented) training image never
change; computing them once per cached variant turns every epoch into a head-only pass. Light augmentation
is therefore applied when the cache is built (``augment_variants`` jittered/shifted copies per image) and each
epoch draws one variant per sample.

Why randomly drawn references: at training time every image gets k references drawn from its ``ref_pool``
nearest normal images, re-drawn every ``rematch_every`` epochs ("iteratively matched references"), so the head
learns to use imperfect references; at validation and prediction time the k nearest are used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import Tensor

from comgen.data.generated import load_item, read_generated
from comgen.data.imageio import read_rgb, resize_mask, resize_rgb
from comgen.data.readers import open_dataset
from comgen.detect.tiling import grid_for, is_tiled, tile_image, tile_mask, whole
from comgen.errors import ArtifactError, DatasetError, InputError
from comgen.features.backbone import to_tensor
from comgen.progress import progress
from comgen.rundir import RunDir


@dataclass
class Material:
    """Images at working size with their pixel targets, image labels and reference-exclusion ids."""

    images: np.ndarray  # N,S,S,3 uint8
    targets: np.ndarray  # N,S,S float32 in [0,1]
    labels: np.ndarray  # N float32 (0 normal, 1 anomalous)
    ids: list[str]
    exclude: list[list[str]] = field(default_factory=list)  # bank ids each item must not use as reference
    group: np.ndarray | None = None  # tiled mode: index of the whole image each tile belongs to

    def __len__(self) -> int:
        return len(self.ids)

    @staticmethod
    def concat(parts: list[Material]) -> Material:
        parts = [p for p in parts if len(p)]
        if not parts:
            raise InputError("training set", "no images")
        groups, offset = [], 0
        for p in parts:
            g = p.group if p.group is not None else np.arange(len(p))
            groups.append(g + offset)
            offset += int(g.max()) + 1 if len(g) else 0
        return Material(np.concatenate([p.images for p in parts]), np.concatenate([p.targets for p in parts]),
                        np.concatenate([p.labels for p in parts]), sum((p.ids for p in parts), []),
                        sum((p.exclude for p in parts), []), np.concatenate(groups))


# ----------------------------------------------------------------------------------------------------------------
# tiled mode (tiling.py): every image is cut with the tile grid of its own size, its mask with the same grid; each
# tile is matched against the tiles of the normal images.
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class TiledParts:
    """Tiles of whole images, gathered one image at a time, and each whole image at the untiled working size."""

    cfg: Any
    images: list[np.ndarray] = field(default_factory=list)
    targets: list[np.ndarray] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    exclude: list[list[str]] = field(default_factory=list)
    group: list[np.ndarray] = field(default_factory=list)
    wholes: list[np.ndarray] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)  # tiles per image id: which tile ids an exclusion names

    def add(self, image: np.ndarray, target: np.ndarray, label: float, image_id: str, exclude: list[str]) -> None:
        """One image at its original size. A tile is anomalous when its target has anomalous pixels, or when its
        image is anomalous without any mask pixel (the anomaly is somewhere, not known where)."""
        grid = grid_for(self.cfg, image.shape[:2])
        n = len(grid)
        tgt = tile_mask(target, grid)
        has = tgt.reshape(n, -1).max(axis=1) > 0
        lab = (has | (not has.any())).astype(np.float32) if label > 0 else np.zeros(n, np.float32)
        self.images.append(tile_image(image, grid))
        self.targets.append(tgt)
        self.labels.append(lab)
        self.ids += [f"{image_id}#{k}" for k in range(n)]
        ex = [f"{e}#{k}" for e in exclude for k in range(self.counts.get(e, n))]
        self.exclude += [ex] * n
        self.group.append(np.full(n, len(self.wholes)))
        self.wholes.append(whole(image, self.cfg.image_size))
        self.counts[image_id] = n

    def material(self) -> Material:
        s = self.cfg.image_size
        if not self.ids:
            return Material(np.zeros((0, s, s, 3), np.uint8), np.zeros((0, s, s), np.float32), np.zeros(0, np.float32),
                            [], [], np.zeros(0, int))
        return Material(np.concatenate(self.images), np.concatenate(self.targets), np.concatenate(self.labels),
                        list(self.ids), list(self.exclude), np.concatenate(self.group))

    def whole_images(self) -> np.ndarray:
        s = self.cfg.image_size
        return np.stack(self.wholes) if self.wholes else np.zeros((0, s, s, 3), np.uint8)


def at_source_resolution(image: np.ndarray, mask: np.ndarray, source: np.ndarray | None,
                         shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A generated anomaly brought to its source image's original size (or ``shape`` without a source).

    Why pasted: generators work at a small square size; upscaled whole, the anomaly would be a blurred image among
    sharp normals and the network could learn "blurred = anomalous". So only the edited region (the mask, dilated
    by the upscale factor) comes from the upscaled anomaly; everything else is the sharp source.
    """
    hw = tuple(source.shape[:2]) if source is not None else tuple(shape)
    if image.shape[:2] == hw:
        return image, mask
    up = resize_rgb(image, hw)
    m = resize_mask(mask.astype(bool), hw)
    if source is None:
        return up, m
    r = int(math.ceil(max(hw[0] / image.shape[0], hw[1] / image.shape[1]))) + 1
    band = cv2.dilate(m.astype(np.uint8), np.ones((2 * r + 1, 2 * r + 1), np.uint8)) > 0
    out = source.copy()
    out[band] = up[band]
    return out, m


def tiled_splits(cfg: Any, train: list[Any], val: list[Any], gen_dir: Path, g_train: list[dict[str, Any]],
                 g_val: list[dict[str, Any]]) -> Splits:
    """Training and validation tiles of normals and generated anomalies, each cut with the grid of its own size."""
    sources = {Path(s.path).stem: s.path for s in train + val}
    sizes: list[tuple[int, int]] = []

    def normals(samples: list[Any], desc: str) -> TiledParts:
        parts = TiledParts(cfg)
        for smp in progress(samples, desc, total=len(samples)):
            img = read_rgb(smp.path)
            sizes.append(img.shape[:2])
            parts.add(img, np.zeros(img.shape[:2], np.float32), 0.0, smp.image_id, [smp.image_id])
        return parts

    def anomalies(lines: list[dict[str, Any]], parts: TiledParts, desc: str) -> TiledParts:
        common = max(set(sizes), key=sizes.count)
        for ln in progress(lines, desc, total=len(lines)):
            img, mask = load_item(gen_dir, ln)
            stem = Path(str(ln.get("source", ""))).stem
            src = read_rgb(sources[stem]) if stem in sources else None
            img, mask = at_source_resolution(img, mask, src, common)
            parts.add(img, mask.astype(np.float32), 1.0, f"gen:{ln['id']}", [stem])
        return parts

    tr_n = normals(train, "load train")
    va_n = normals(val, "load validation")
    tr_a = anomalies(g_train, TiledParts(cfg, counts=dict(tr_n.counts)), "load anomalies")
    va_a = anomalies(g_val, TiledParts(cfg, counts=dict(tr_n.counts)), "load validation anomalies")
    bank = tr_n.material()
    return Splits(Material.concat([bank, tr_a.material()]), Material.concat([va_n.material(), va_a.material()]),
                  bank.images, bank.ids, tr_n.whole_images(),
                  np.concatenate([va_n.whole_images(), va_a.whole_images()]))


def load_images(paths: list[Path], size: int, desc: str = "load") -> np.ndarray:
    if not paths:
        return np.zeros((0, size, size, 3), np.uint8)
    return np.stack([resize_rgb(read_rgb(p), size) for p in progress(paths, desc, total=len(paths))])


def normal_material(samples: list[Any], size: int, desc: str) -> Material:
    images = load_images([s.path for s in samples], size, desc)
    n = len(samples)
    ids = [s.image_id for s in samples]
    return Material(images, np.zeros((n, size, size), np.float32), np.zeros(n, np.float32), ids,
                    [[i] for i in ids])


def generated_material(gen_dir: Path, lines: list[dict[str, Any]], size: int) -> Material:
    """Generated anomalies: image, exact mask and the source image as the excluded reference."""
    n = len(lines)
    images = np.zeros((n, size, size, 3), np.uint8)
    targets = np.zeros((n, size, size), np.float32)
    for i, ln in enumerate(progress(lines, "load anomalies", total=n)):
        img, mask = load_item(gen_dir, ln)
        images[i] = resize_rgb(img, size)
        targets[i] = resize_mask(mask.astype(np.uint8) * 255, size) > 0
    ids = [f"gen:{ln['id']}" for ln in lines]
    exclude = [[Path(str(ln.get("source", ""))).stem] for ln in lines]
    return Material(images, targets, np.ones(n, np.float32), ids, exclude)


@dataclass
class Splits:
    train: Material  # normals (bank images) + generated anomalies
    val: Material  # held-out normals (+ held-out generated anomalies)
    bank_images: np.ndarray
    bank_ids: list[str]
    # tiled mode: the whole images at the untiled working size (the composition prior's input), bank normals and
    # validation images in the order of ``val.group``
    whole_bank: np.ndarray | None = None
    whole_val: np.ndarray | None = None


def _split_idx(n: int, frac: float, seed: int, salt: int) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng([seed, salt]).permutation(n)
    n_hold = int(round(n * frac)) if n > 1 else 0
    n_hold = min(max(n_hold, 1 if frac > 0 and n > 1 else 0), n - 1) if n > 1 else 0
    return np.sort(perm[n_hold:]), np.sort(perm[:n_hold])


def load_splits(run: RunDir, cfg: Any) -> Splits:
    """Read the run's dataset and generated set; hold out validation normals and anomalies deterministically."""
    info = run.info
    ds = open_dataset(info.dataset)
    train = [s for s in ds.samples(info.category, "train") if s.kind == "good"]
    if len(train) < 2:
        raise DatasetError(Path(info.dataset) / info.category, f"need >= 2 good training images, found {len(train)}")
    val = [s for s in ds.samples(info.category, "validation") if s.kind == "good"]
    if not val:
        keep, hold = _split_idx(len(train), cfg.val_fraction, cfg.seed, 1)
        train, val = [train[i] for i in keep], [train[i] for i in hold]

    gen_dir = run.generated(cfg.backend)
    lines = read_generated(gen_dir)  # ArtifactError when `comgen generate` has not run
    if not lines:
        raise ArtifactError(gen_dir, "generated set is empty")
    g_keep, g_hold = _split_idx(len(lines), cfg.val_anomaly_fraction, cfg.seed, 2)
    if is_tiled(cfg):
        return tiled_splits(cfg, train, val, gen_dir, [lines[i] for i in g_keep], [lines[i] for i in g_hold])
    s = cfg.image_size
    normals = normal_material(train, s, "load train")
    tr = Material.concat([normals, generated_material(gen_dir, [lines[i] for i in g_keep], s)])
    va = Material.concat([normal_material(val, s, "load validation"),
                          generated_material(gen_dir, [lines[i] for i in g_hold], s)])
    return Splits(tr, va, normals.images, normals.ids)


# ----------------------------------------------------------------------------------------------------------------
# augmentation and feature cache
# ----------------------------------------------------------------------------------------------------------------
def augment(images: np.ndarray, targets: np.ndarray, rng: np.random.Generator,
            strength: float) -> tuple[np.ndarray, np.ndarray]:
    """Light, label-preserving augmentation: brightness/contrast jitter and a small shift (edges replicated).

    No flips or rotations: those can themselves be logical anomalies (wrong orientation/position).
    """
    n, h, w = images.shape[:3]
    gain = 1.0 + rng.uniform(-strength, strength, size=(n, 1, 1, 1))
    bias = rng.uniform(-strength, strength, size=(n, 1, 1, 1)) * 255 * 0.5
    out = np.clip(images.astype(np.float32) * gain + bias, 0, 255).astype(np.uint8)
    max_shift = strength * 30 * h / 256
    shifts = np.round(rng.uniform(-max_shift, max_shift, size=(n, 2))).astype(int)
    tgt = targets.copy()
    for i in np.nonzero(np.any(shifts != 0, axis=1))[0]:  # loop over images, not pixels
        m = np.float32([[1, 0, shifts[i, 1]], [0, 1, shifts[i, 0]]])
        out[i] = cv2.warpAffine(out[i], m, (w, h), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_REPLICATE)
        tgt[i] = cv2.warpAffine(tgt[i], m, (w, h), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT)
    return out, tgt


@torch.no_grad()
def encode(backbone: torch.nn.Module, images: np.ndarray, batch_size: int = 16, device: Any = "cpu",
           dtype: torch.dtype = torch.float32, desc: str = "features") -> list[Tensor]:
    """Frozen backbone features of uint8 images, batched: per scale [N,C,h,w] on the CPU in ``dtype``."""
    chunks: list[list[Tensor]] = []
    starts = range(0, len(images), batch_size)
    for i in progress(starts, desc, total=len(starts)):
        feats = backbone(to_tensor(images[i:i + batch_size]).to(device))
        chunks.append([f.to("cpu", dtype) for f in feats])
    return [torch.cat([c[s] for c in chunks]) for s in range(len(chunks[0]))]


@dataclass
class FeatureCache:
    """Cached features of every training item in each variant: feats[s] is [V,N,C,h,w]; targets [V,N,S,S]."""

    feats: list[Tensor]
    targets: Tensor

    @property
    def variants(self) -> int:
        return int(self.targets.shape[0])

    @classmethod
    def build(cls, backbone: torch.nn.Module, mat: Material, variants: int, strength: float, seed: int,
              batch_size: int, device: Any, dtype: torch.dtype) -> FeatureCache:
        per_var_feats, per_var_tgts = [], []
        for v in range(variants + 1):
            if v == 0:
                imgs, tgts = mat.images, mat.targets
            else:
                imgs, tgts = augment(mat.images, mat.targets, np.random.default_rng([seed, 100 + v]), strength)
            per_var_feats.append(encode(backbone, imgs, batch_size, device, dtype, f"features v{v}"))
            per_var_tgts.append(torch.from_numpy(tgts).to(torch.float16))  # masks: half the memory, exact for 0/1
        feats = [torch.stack([pv[s] for pv in per_var_feats]) for s in range(len(per_var_feats[0]))]
        return cls(feats, torch.stack(per_var_tgts))

    def batch(self, variant: Tensor, idx: Tensor, device: Any) -> tuple[list[Tensor], Tensor]:
        feats = [f[variant, idx].to(device, torch.float32) for f in self.feats]
        return feats, self.targets[variant, idx].unsqueeze(1).to(device, torch.float32)


# ----------------------------------------------------------------------------------------------------------------
# references
# ----------------------------------------------------------------------------------------------------------------
class ReferenceMatcher:
    """Global retrieval + patch alignment through the Stage II memory bank (``comgen.features.memory``)."""

    def __init__(self, bank: Any, k: int) -> None:
        self.bank = bank
        self.k = k

    def nearest(self, feats: list[Tensor], pool: int, exclude: list[list[str]] | None = None,
                batch_size: int = 64) -> Tensor:
        """[N, pool] indices of the nearest bank images (own/source image excluded), batched."""
        out = []
        n = feats[0].shape[0]
        for i in range(0, n, batch_size):
            fb = [f[i:i + batch_size].float() for f in feats]
            ex = exclude[i:i + batch_size] if exclude is not None else None
            idx, _ = self.bank.query(fb, pool, exclude_ids=ex)
            out.append(torch.as_tensor(idx, dtype=torch.long))
        return torch.cat(out)

    def draw(self, pool_idx: Tensor, rng: np.random.Generator | None) -> Tensor:
        """Pick k of each row's pool: the k nearest when ``rng`` is None, else k at random (vectorised)."""
        if rng is None or pool_idx.shape[1] == self.k:
            return pool_idx[:, : self.k]
        keys = rng.random(pool_idx.shape)
        order = torch.from_numpy(np.argsort(keys, axis=1)[:, : self.k])
        return torch.gather(pool_idx, 1, order)

    def align(self, feats: list[Tensor], idx: Tensor) -> list[Tensor]:
        return [a.to(feats[0].device, feats[0].dtype) for a in self.bank.align([f.cpu() for f in feats], idx)]
