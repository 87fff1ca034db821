"""Patch-memory branch: every patch of an image against all normal training patches (the recipe of PatchCore).

Why a third branch: CSDA compares an image with a few *aligned* references, which fails where no reference aligns
(random grain, fabric, textures): every patch then differs from its aligned counterpart. A memory of all training
patches asks instead "has this patch ever been seen anywhere", which is what textures need. It reuses the
detector's own backbone features of the two middle scales (no extra forward pass), keeps a greedy k-center coreset,
and scores a patch by its distance to the nearest memory patch; the image score is the map's maximum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch
import torch.nn.functional as F
from safetensors.numpy import load_file, save_file

from comgen.config import ConfigBase
from comgen.detect.artifacts import RETRAIN, check_finite, finite_number, open_branch_dir, scale_indices
from comgen.errors import ArtifactError, ConfigError
from comgen.features.coreset import greedy_k_center
from comgen.features.patches import aggregate_patches
from comgen.io import atomic_path, atomic_write_json
from comgen.tensor_ops import gaussian_blur

MEMORY_DIR = "patch_memory"  # inside the detector directory


@dataclass
class PatchMemoryConfig(ConfigBase):
    """Which detector feature scales the memory holds and how many patches it keeps."""

    enabled: bool = True
    scales: tuple[int, ...] = (1, 2)  # indices into the detector's backbone scales (fine to coarse)
    # 1 = each patch alone. PatchCore's 3 x 3 average blurred small defects away: on the development seeds the
    # branch found structural defects better with 1 (docs/experiments.md)
    neighbourhood: int = 1
    coreset: float = 0.01  # fraction of training patches kept by greedy k-center (as the PatchCore peer)
    max_patches: int = 4000  # upper bound on the kept patches (bounds memory and predict time)
    blur_sigma: float = 4.0  # Gaussian blur of the map at the working size (pixels)
    seed: int = 0

    def __post_init__(self) -> None:
        self.scales = scale_indices(self.scales, "detector.memory.scales")
        if self.neighbourhood < 1 or self.neighbourhood % 2 == 0:
            raise ConfigError("detector.memory.neighbourhood", f"must be an odd integer >= 1, got {self.neighbourhood}")
        finite_number(self.coreset, "detector.memory.coreset", error=ConfigError, gt=0.0, le=1.0)
        finite_number(self.blur_sigma, "detector.memory.blur_sigma", error=ConfigError, ge=0.0)
        if self.max_patches < 1:
            raise ConfigError("detector.memory.max_patches", f"must be >= 1, got {self.max_patches}")


def embed(feats: list[torch.Tensor], cfg: PatchMemoryConfig) -> torch.Tensor:
    """[B, h, w, D] patch embeddings of the configured scales; a backbone with fewer scales (tiny test models) gives
    its coarsest ones instead."""
    chosen = [s for s in cfg.scales if s < len(feats)] or [len(feats) - 1]
    return aggregate_patches([feats[s].float() for s in chosen], cfg.neighbourhood)


class PatchMemory:
    """A coreset of normal patch embeddings with an exact L2 index; ``score`` gives raw maps and image scores."""

    def __init__(self, cfg: PatchMemoryConfig, patches: np.ndarray) -> None:
        self.cfg = cfg
        self.patches = np.ascontiguousarray(patches, np.float32)
        self.index = faiss.IndexFlatL2(self.patches.shape[1])
        self.index.add(self.patches)

    def embed(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """[B, h, w, D] embeddings from the detector's backbone features."""
        return embed(feats, self.cfg)

    @classmethod
    def fit(cls, feature_batches: Any, cfg: PatchMemoryConfig) -> PatchMemory:
        """Build from an iterable of backbone feature lists of normal images (one list per batch)."""
        emb = torch.cat([embed(f, cfg).flatten(0, 2) for f in feature_batches])
        keep = min(len(emb), cfg.max_patches, max(1, int(math.ceil(len(emb) * cfg.coreset))))
        chosen = greedy_k_center(emb, keep, seed=cfg.seed)
        return cls(cfg, emb[chosen].numpy())

    def score(self, feats: list[torch.Tensor], size: int) -> tuple[np.ndarray, np.ndarray]:
        """Raw (uncalibrated) image scores [B] and maps [B, size, size]: nearest-patch distances, blurred."""
        emb = self.embed(feats)
        b, h, w, d = emb.shape
        dist, _ = self.index.search(np.ascontiguousarray(emb.reshape(-1, d).numpy(), np.float32), 1)
        m = torch.from_numpy(np.sqrt(np.maximum(dist[:, 0], 0.0))).view(b, 1, h, w)
        m = F.interpolate(m, size=(size, size), mode="bilinear", align_corners=False)[:, 0]
        if self.cfg.blur_sigma > 0:
            m = gaussian_blur(m, self.cfg.blur_sigma * size / 256.0)
        maps = m.numpy().astype(np.float32)
        return maps.reshape(b, -1).max(axis=1), maps

    # --- persistence --------------------------------------------------------------------------------------------
    def save(self, directory: str | Path, calibration: dict[str, float]) -> Path:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        with atomic_path(d / "patches.safetensors") as tmp:
            save_file({"patches": self.patches}, str(tmp))
        self.cfg.save(d / "config.yaml")
        atomic_write_json(d / "calibration.json", calibration)
        return d

    @classmethod
    def load(cls, directory: str | Path) -> tuple[PatchMemory, dict[str, float]]:
        """The memory and its calibration; a missing or damaged file is one ArtifactError naming it."""
        d, cfg, cal = open_branch_dir(directory, "patches.safetensors", PatchMemoryConfig)
        out = {k: finite_number(cal.get(k), d / "calibration.json", k) for k in ("score_mean", "map_mean")}
        out.update({k: finite_number(cal.get(k), d / "calibration.json", k, gt=0.0) for k in ("score_std", "map_std")})
        try:
            patches = load_file(str(d / "patches.safetensors"))["patches"]
        except Exception as exc:
            raise ArtifactError(d / "patches.safetensors", f"unreadable ({exc.__class__.__name__}); {RETRAIN}"
                                ) from None
        if patches.ndim != 2 or not len(patches):
            raise ArtifactError(d / "patches.safetensors", f"expected a non-empty [N, D] array; {RETRAIN}")
        check_finite({"patches": torch.from_numpy(patches)}, d / "patches.safetensors")
        return cls(cfg, patches), out
