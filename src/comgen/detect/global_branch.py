"""Global branch: an image's pooled backbone features against a Gaussian of the normal images' pooled features.

Why: the network compares each patch with aligned references and the patch memory asks whether a patch was ever
seen; neither looks at the whole image at once. A wrong count of parts, a part in the wrong half or a colour that
should match another part's shifts the image's pooled features even when every patch looks normal. This is the role
of EfficientAD's autoencoder branch (global relations, Batzner et al., WACV 2024), here as the image-level Gaussian
of Rippel et al. ("Modeling the distribution of normal data in pre-trained deep features", ICPR 2020) at the cost
of one matrix product per image:

- it reuses the detector's own backbone features (no extra forward pass);
- each scale is pooled over the whole image and over a coarse grid, which keeps where things are;
- each scale gets a Gaussian with Ledoit-Wolf shrinkage, since a hundred images against hundreds of dimensions
  give no usable plain covariance;
- the per-scale Mahalanobis distances are standardised on the validation normals and summed.

It needs no anomalies, so it cannot learn the generator's quirks; it gives no map (the written map carries its
share of the fused score through ``map_carries_score``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import load_file, save_file
from sklearn.covariance import LedoitWolf

from comgen.config import ConfigBase
from comgen.detect.artifacts import RETRAIN, finite_number, open_branch_dir, scale_indices
from comgen.errors import ArtifactError, ConfigError
from comgen.features.pooled import pooled_descriptors, scale_distances, standardised_distances, unpack_gaussians
from comgen.io import atomic_path, atomic_write_json

GLOBAL_DIR = "global_branch"  # inside the detector directory


@dataclass
class GlobalBranchConfig(ConfigBase):
    """Whether the global branch runs, which detector feature scales it pools and on how fine a grid."""

    enabled: bool = True
    scales: tuple[int, ...] = (0, 1, 2)  # indices into the detector's backbone scales (fine to coarse)
    grid: int = 2  # pooling grid besides the whole-image mean (0: the mean alone)

    def __post_init__(self) -> None:
        self.scales = scale_indices(self.scales, "detector.global_branch.scales")
        if not isinstance(self.grid, int) or isinstance(self.grid, bool) or not 0 <= self.grid <= 8:
            raise ConfigError("detector.global_branch.grid", f"must be an integer in [0, 8], got {self.grid!r}")


def describe(feats: list[torch.Tensor], cfg: GlobalBranchConfig) -> list[np.ndarray]:
    """Per chosen scale, [B, C x (1 + grid^2)] pooled descriptors (``features/pooled.py``) of backbone features."""
    return pooled_descriptors([f.float().cpu().numpy() for f in feats], cfg.scales, cfg.grid)


class GlobalBranch:
    """One shrunk Gaussian per scale and each scale's distance scale on the validation normals."""

    def __init__(self, cfg: GlobalBranchConfig, means: list[np.ndarray], precisions: list[np.ndarray],
                 scale_mean: np.ndarray | None = None, scale_std: np.ndarray | None = None) -> None:
        self.cfg = cfg
        self.means = [np.asarray(m, np.float64) for m in means]
        self.precisions = [np.asarray(p, np.float64) for p in precisions]
        n = len(self.means)
        self.scale_mean = np.zeros(n) if scale_mean is None else np.asarray(scale_mean, np.float64)
        self.scale_std = np.ones(n) if scale_std is None else np.asarray(scale_std, np.float64)

    @classmethod
    def fit(cls, descriptors: list[np.ndarray], cfg: GlobalBranchConfig) -> GlobalBranch:
        """Fit from the normal training images' descriptors (``describe``'s list, one [N, D] array per scale)."""
        means, precisions = [], []
        for x in descriptors:
            if len(x) < 2:
                raise ArtifactError("global branch", f"needs at least 2 normal training images, got {len(x)}")
            lw = LedoitWolf().fit(x)
            means.append(lw.location_)
            precisions.append(lw.precision_)
        return cls(cfg, means, precisions)

    def distances(self, descriptors: list[np.ndarray]) -> np.ndarray:
        """[B, S] Mahalanobis distance of each image at each scale."""
        return scale_distances(descriptors, self.means, self.precisions)

    def raw_scores(self, descriptors: list[np.ndarray]) -> np.ndarray:
        """Raw (uncalibrated) image scores [B]: the per-scale distances, standardised, summed."""
        return standardised_distances(descriptors, self.means, self.precisions, self.scale_mean, self.scale_std)

    def set_scales(self, normal_descriptors: list[np.ndarray]) -> None:
        """Standardise each scale's distances on held-out normals, so no scale outweighs another by its width."""
        d = self.distances(normal_descriptors)
        self.scale_mean = d.mean(axis=0)
        sd = d.std(axis=0) if len(d) > 1 else np.ones(d.shape[1])
        self.scale_std = np.where(sd > 1e-6, sd, 1.0)

    def score(self, feats: list[torch.Tensor]) -> np.ndarray:
        """Raw (uncalibrated) image scores [B] of a batch's backbone features."""
        return self.raw_scores(describe(feats, self.cfg))

    # --- persistence --------------------------------------------------------------------------------------------
    def arrays(self) -> dict[str, np.ndarray]:
        """Every fitted array by name (what ``save`` writes and an export bundle carries)."""
        out = {"scale_mean": self.scale_mean, "scale_std": self.scale_std}
        for s, (m, p) in enumerate(zip(self.means, self.precisions)):
            out[f"mean{s}"], out[f"precision{s}"] = m, p
        return out

    @classmethod
    def from_arrays(cls, cfg: GlobalBranchConfig, arrays: dict[str, np.ndarray], where: Any) -> GlobalBranch:
        """``arrays``' inverse; shapes and finiteness are checked (``where`` names the file in errors)."""
        try:
            means, precisions, scale_mean, scale_std = unpack_gaussians(arrays, len(arrays["scale_mean"]))
        except KeyError as exc:
            raise ArtifactError(where, f"missing array {exc.args[0]!r}; {RETRAIN}") from None
        except ValueError as exc:
            raise ArtifactError(where, f"{exc}; {RETRAIN}") from None
        if not all(np.isfinite(a).all() for a in (*means, *precisions, scale_mean, scale_std)) or \
                (scale_std <= 0).any():
            raise ArtifactError(where, f"holds non-finite or non-positive values; {RETRAIN}")
        return cls(cfg, means, precisions, scale_mean, scale_std)

    def save(self, directory: str | Path, calibration: dict[str, float]) -> Path:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        with atomic_path(d / "gaussians.safetensors") as tmp:
            save_file({k: np.ascontiguousarray(v) for k, v in self.arrays().items()}, str(tmp))
        self.cfg.save(d / "config.yaml")
        atomic_write_json(d / "calibration.json", calibration)
        return d

    @classmethod
    def load(cls, directory: str | Path) -> tuple[GlobalBranch, dict[str, float]]:
        """The branch and its calibration; a missing or damaged file is one ArtifactError naming it."""
        d, cfg, cal = open_branch_dir(directory, "gaussians.safetensors", GlobalBranchConfig)
        out = {"score_mean": finite_number(cal.get("score_mean"), d / "calibration.json", "score_mean"),
               "score_std": finite_number(cal.get("score_std"), d / "calibration.json", "score_std", gt=0.0)}
        try:
            arrays = load_file(str(d / "gaussians.safetensors"))
        except Exception as exc:
            raise ArtifactError(d / "gaussians.safetensors", f"unreadable ({exc.__class__.__name__}); {RETRAIN}"
                                ) from None
        return cls.from_arrays(cfg, arrays, d / "gaussians.safetensors"), out
