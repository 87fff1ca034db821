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
# tiled mode: every image is resized to (g*S)^2 and cut into g x g working-size tiles, so small defects keep
# enough pixels; each tile is matched against the same kind of tiles of the normal images.
# ----------------------------------------------------------------------------------------------------------------
def to_tiles(arr: np.ndarray, g: int) -> np.ndarray:
    """[N, gS, gS, ...] -> [N*g*g, S, S, ...], tiles in row-major order per image."""
    if g == 1:
        return arr
    n, h, w = arr.shape[:3]
    s = h // g
    rest = arr.shape[3:]
    t = arr.reshape(n, g, s, g, w // g, *rest).swapaxes(2, 3)
    return t.reshape(n * g * g, s, w // g, *rest)


def from_tiles(arr: np.ndarray, g: int) -> np.ndarray:
    """Inverse of ``to_tiles``: [N*g*g, S, S, ...] -> [N, gS, gS, ...]."""
    if g == 1:
        return arr
    m, s, w = arr.shape[:3]
    rest = arr.shape[3:]
    t = arr.reshape(m // (g * g), g, g, s, w, *rest).swapaxes(2, 3)
    return t.reshape(m // (g * g), g * s, g * w, *rest)


def tile_material(mat: Material, g: int) -> Material:
    """Tiles of every image; a tile is anomalous when its target has anomalous pixels (or its image has no mask)."""
    if g == 1:
        return mat
    n, t = len(mat), g * g
    targets = to_tiles(mat.targets, g)
    has = targets.reshape(n * t, -1).max(axis=1) > 0
    no_mask = np.repeat(mat.targets.reshape(n, -1).max(axis=1) <= 0, t)
    labels = np.where(np.repeat(mat.labels, t) > 0, (has | no_mask).astype(np.float32), 0.0).astype(np.float32)
    ids = [f"{i}#{k}" for i in mat.ids for k in range(t)]
    exclude = [[f"{e}#{k2}" for e in ex for k2 in range(t)] for ex in mat.exclude for _ in range(t)]
    return Material(to_tiles(mat.images, g), targets, labels, ids, exclude, np.repeat(np.arange(n), t))


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
    g = cfg.tiles
    s = cfg.image_size * g
    normals = tile_material(normal_material(train, s, "load train"), g)
    tr = Material.concat([normals, tile_material(generated_material(gen_dir, [lines[i] for i in g_keep], s), g)])
    va = Material.concat([tile_material(normal_material(val, s, "load validation"), g),
                          tile_material(generated_material(gen_dir, [lines[i] for i in g_hold], s), g)])
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
