"""PatchCore-like memory-bank kNN detector, home-made: the training-free reference row of the generator benchmark.

Why it is here: it is the strongest widely used baseline that needs no anomalies at all, so it shows what the
generated anomalies add. It follows PatchCore's recipe: mid-level features (two scales, the coarser one upsampled),
3x3 local average aggregation, a greedy k-center coreset, nearest-neighbour distance per patch (faiss), a Gaussian
blur on the map, and the map's maximum as the image score. It shares comgen's frozen backbone module.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import faiss
import numpy as np
import torch
import torch.nn.functional as F

from comgen.config import ConfigBase
from comgen.data.imageio import resize_rgb
from comgen.errors import InputError
from comgen.features.backbone import BackboneConfig, build_backbone, to_tensor
from comgen.features.coreset import greedy_k_center
from comgen.features.patches import aggregate_patches
from comgen.progress import progress
from comgen.tensor_ops import gaussian_blur


@dataclass
class KnnConfig(ConfigBase):
    """Settings of the kNN baseline (PatchCore defaults, scaled for CPU)."""

    backbone: BackboneConfig = field(default_factory=lambda: BackboneConfig(layers=(2, 3)))
    image_size: int = 256
    coreset_ratio: float = 0.1
    max_bank: int = 20000  # upper bound of kept patches, keeps memory and the coreset bounded
    neighbourhood: int = 3
    blur_sigma: float = 4.0
    batch_size: int = 16
    seed: int = 0


class KnnDetector:
    """Fit on normal images; score images by the distance of their patches to the nearest normal patch."""

    def __init__(self, cfg: KnnConfig | None = None) -> None:
        self.cfg = cfg or KnnConfig()
        self.backbone = build_backbone(self.cfg.backbone)
        self.index = None

    def _prepare(self, images: np.ndarray | list[np.ndarray]) -> np.ndarray:
        size = self.cfg.image_size
        return np.stack([img if img.shape[:2] == (size, size) else resize_rgb(img, size) for img in images])

    def _patch_features(self, images: np.ndarray) -> torch.Tensor:
        """[B, h, w, D] locally aggregated, multi-scale patch features at the finest selected scale."""
        return aggregate_patches(self.backbone(to_tensor(images)), self.cfg.neighbourhood)

    def _batches(self, images: np.ndarray, desc: str):
        bs = self.cfg.batch_size
        for start in progress(range(0, len(images), bs), desc=desc, total=(len(images) + bs - 1) // bs):
            yield self._patch_features(self._prepare(images[start:start + bs]))

    def fit(self, images: np.ndarray | list[np.ndarray]) -> KnnDetector:
        if len(images) == 0:
            raise InputError("knn", "no normal training images to build the memory bank from")
        patches = torch.cat([f.reshape(-1, f.shape[-1]) for f in self._batches(images, "knn bank")])
        keep = min(len(patches), self.cfg.max_bank, max(1, int(round(len(patches) * self.cfg.coreset_ratio))))
        chosen = greedy_k_center(patches, keep, seed=self.cfg.seed)
        bank = np.ascontiguousarray(patches[chosen].numpy(), dtype=np.float32)
        self.index = faiss.IndexFlatL2(bank.shape[1])
        self.index.add(bank)
        return self

    def predict(self, images: np.ndarray | list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(scores [N], maps [N, S, S]) at the working size S; larger means more anomalous."""
        if self.index is None:
            raise InputError("knn", "call fit() before predict()")
        if len(images) == 0:
            raise InputError("knn", "empty image list")
        size = self.cfg.image_size
        maps = []
        for f in self._batches(images, "knn predict"):
            b, h, w, d = f.shape
            dist, _ = self.index.search(np.ascontiguousarray(f.reshape(-1, d).numpy()), 1)
            m = torch.from_numpy(np.sqrt(np.maximum(dist[:, 0], 0))).view(b, 1, h, w)
            m = F.interpolate(m, size=(size, size), mode="bilinear", align_corners=False)
            m = m[:, 0]
            maps.append(gaussian_blur(m, self.cfg.blur_sigma) if self.cfg.blur_sigma > 0 else m)
        out = torch.cat(maps).numpy().astype(np.float32)
        return out.reshape(len(out), -1).max(axis=1), out

