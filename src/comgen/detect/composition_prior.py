"""Composition prior: an image-level logical score from Stage I's component model and composition density.

Why: CSDA compares an image with its nearest normal references patch by patch. A *missing* or *extra* part at a
random layout leaves every patch looking normal (an empty spot exists in every reference), so the network alone
cannot see count errors, which are most logical anomalies. Stage I already segments images into components and
fits a density over normal compositions (counts, areas, positions, colours) for Low-Density Sampling; the
negative log-density of a test image's composition is exactly the evidence the network lacks. It needs no
anomalies, so it is fitted on the training normals and calibrated (z-score) on the validation normals; ``fusion.py``
decides how it joins the other branches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np
from safetensors.numpy import load_file, save_file

from comgen.components.density import CompositionDensity, DensityConfig
from comgen.components.model import ComponentModel
from comgen.config import ConfigBase
from comgen.detect.artifacts import RETRAIN, finite_number, read_json_object
from comgen.errors import ArtifactError, ConfigError
from comgen.io import atomic_path, atomic_write_json

PRIOR_DIR = "composition_prior"  # inside the detector directory


@dataclass
class PriorConfig(ConfigBase):
    """Whether the composition prior runs, and how it segments and models compositions."""

    # ``fuse`` moved to ``detector.fusion``, which chooses the rule on validation data
    RETIRED_OPTIONS: ClassVar[dict[str, Any]] = {"fuse": "max"}

    enabled: bool = True  # used when the run has a component model (compositional / diffusion back-ends)
    batch_size: int = 16  # images segmented at once (bounds memory at the learner's working size)
    density: DensityConfig = field(default_factory=DensityConfig)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError("detector.prior.batch_size", f"must be >= 1, got {self.batch_size}")


class CompositionPrior:
    """Component model + composition density + validation calibration; ``score(images)`` gives z-scores."""

    def __init__(self, model: Any, density: CompositionDensity, cfg: PriorConfig, train_vectors: np.ndarray,
                 mean: float = 0.0, std: float = 1.0) -> None:
        self.model = model
        self.density = density
        self.cfg = cfg
        self.train_vectors = train_vectors
        self.mean = mean
        self.std = std

    # --- scoring ------------------------------------------------------------------------------------------------
    @staticmethod
    def vectors(model: Any, density: CompositionDensity, images: np.ndarray, batch_size: int = 16,
                deep: np.ndarray | None = None, maps: np.ndarray | None = None) -> np.ndarray:
        """Composition vectors [N,D] of uint8 images [N,H,W,3] (segmented in batches at the learner's size).

        ``deep``: the learner's backbone features of these images, when the caller has them already; ``maps``:
        their class maps (``segment_maps``), when the caller has segmented them already.
        """
        shape = images.shape[1:3]
        out = []
        for i in range(0, len(images), batch_size):
            chunk = images[i:i + batch_size]
            cmaps = segment_maps(model, chunk, None if deep is None else deep[i:i + batch_size]) if maps is None \
                else maps[i:i + batch_size]
            for cmap, img in zip(cmaps, chunk):
                if cmap.shape != img.shape[:2]:
                    cmap = cv2.resize(cmap, img.shape[1::-1], interpolation=cv2.INTER_NEAREST)
                out.append(density.vector(model.compose(img, "", class_map=cmap).components, shape))
        return np.stack(out) if out else np.zeros((0, 0))

    def nll(self, images: np.ndarray, deep: np.ndarray | None = None, maps: np.ndarray | None = None
            ) -> np.ndarray:
        """Negative composition log-density of each image (higher = rarer composition)."""
        vecs = self.vectors(self.model, self.density, np.asarray(images), self.cfg.batch_size, deep, maps)
        return -self.density.score(vecs)

    def score(self, images: np.ndarray, deep: np.ndarray | None = None, maps: np.ndarray | None = None
              ) -> np.ndarray:
        """Calibrated scores: z of the negative log-density relative to the validation normals."""
        return self.z(self.nll(images, deep, maps))

    def z(self, nll: np.ndarray) -> np.ndarray:
        """Negative log-densities -> calibrated scores (for callers that already hold the ``nll``)."""
        return ((nll - self.mean) / self.std).astype(np.float32)

    # --- fitting ------------------------------------------------------------------------------------------------
    @classmethod
    def fit(cls, model: Any, train_images: np.ndarray, val_images: np.ndarray | None = None,
            cfg: PriorConfig | None = None, train_maps: np.ndarray | None = None) -> CompositionPrior:
        """Fit the density on the training normals and calibrate on held-out normals (or later, ``calibrate``)."""
        cfg = cfg or PriorConfig()
        density = CompositionDensity(cfg.density, model.num_classes, model.background)
        vecs = cls.vectors(model, density, np.asarray(train_images), cfg.batch_size, maps=train_maps)
        density.fit(vecs)
        prior = cls(model, density, cfg, vecs)
        if val_images is not None and len(val_images):
            prior.calibrate(prior.nll(val_images))
        return prior

    def calibrate(self, normal_nll: np.ndarray) -> None:
        self.mean = float(np.mean(normal_nll))
        sd = float(np.std(normal_nll)) if len(normal_nll) > 1 else 0.0
        self.std = sd if sd > 1e-6 else 1.0

    # --- persistence --------------------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Self-contained: a copy of the component model, the training vectors, config and calibration.

        The mixture is refitted from the saved vectors at load time (deterministic, milliseconds), which keeps the
        files plain tensors + JSON instead of a pickled scikit-learn object.
        """
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.model.save(d / "components")
        with atomic_path(d / "vectors.safetensors") as tmp:
            save_file({"train": np.ascontiguousarray(self.train_vectors, np.float64)}, str(tmp))
        self.cfg.save(d / "config.yaml")
        atomic_write_json(d / "calibration.json", {"mean": self.mean, "std": self.std,
                                                   "num_classes": self.model.num_classes,
                                                   "background": self.model.background})
        return d

    @classmethod
    def load(cls, directory: str | Path, backbone: Any = None) -> CompositionPrior:
        """Read a saved prior; a missing or corrupt file, or a bad number (inf vectors, NaN mean, zero std), is one
        ArtifactError naming the file."""
        d = Path(directory)
        for name in ("vectors.safetensors", "config.yaml", "calibration.json"):
            if not (d / name).is_file():
                raise ArtifactError(d / name, "missing; retrain the detector (`comgen train`)")
        cfg = PriorConfig.load(d / "config.yaml")
        cal = read_json_object(d / "calibration.json")
        mean = finite_number(cal.get("mean"), d / "calibration.json", "mean")
        std = finite_number(cal.get("std"), d / "calibration.json", "std", gt=0.0)
        vecs = _read_vectors(d / "vectors.safetensors")
        model = ComponentModel.load(d / "components", backbone=backbone)
        density = CompositionDensity(cfg.density, model.num_classes, model.background).fit(vecs)
        return cls(model, density, cfg, vecs, mean, std)


def segment_maps(model: Any, images: np.ndarray, deep: np.ndarray | None = None, batch_size: int = 16
                 ) -> np.ndarray:
    """Class maps [N,S,S] at the component model's working size, in batches (bounded memory)."""
    images = np.asarray(images)
    return np.concatenate([model.segment_working(images[i:i + batch_size],
                                                 None if deep is None else deep[i:i + batch_size])
                           for i in range(0, len(images), batch_size)])


def _read_vectors(path: Path) -> np.ndarray:
    """The training composition vectors the density is refitted from: a non-empty [N, D] array without inf."""
    try:
        vecs = load_file(str(path))["train"]
    except Exception as exc:  # a damaged header raises safetensors' own error type
        raise ArtifactError(path, f"composition prior is unreadable ({exc.__class__.__name__}); {RETRAIN}") from None
    if vecs.ndim != 2 or not len(vecs):
        raise ArtifactError(path, f"expected a non-empty [N, D] array, got shape {vecs.shape}; {RETRAIN}")
    bad = int(np.isinf(vecs).sum())
    if bad:  # NaN is a valid entry (a part absent from the image), inf never is
        raise ArtifactError(path, f"{bad} infinite value(s) in the training vectors; {RETRAIN}")
    return vecs
