"""The composition prior without torch or scikit-learn: segmentation, composition vectors, mixture density.

Mirrors ``ComponentModel.segment_working`` / ``assign_images`` (class maps), ``CompositionPrior.vectors`` (the
composition of each image) and ``CompositionDensity.score`` (the fitted Gaussian mixture's log-density, from its
exported parameters, not refitted). The pure NumPy/OpenCV pieces of the component model (colour features, the
majority filter, instances and vectors) are the project's own functions, so they cannot drift.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from comgen.components.composition import compose, composition_vector, min_area_pixels, vector_names
from comgen.components.count_patterns import CountPatterns, as_counts, count_columns
from comgen.components.features import LearnerConfig, PixelFeaturizer, resize_square
from comgen.components.instances import InstanceStage
from comgen.components.model import majority_filter
from comgen.errors import ArtifactError
from comgen.export_runtime.bundle import REEXPORT, is_number
from comgen.export_runtime.ops import resize_bilinear


def segment_working(images: np.ndarray, arrays: dict[str, np.ndarray], learner: LearnerConfig,
                    deep: np.ndarray | None, deep_of: Callable[[np.ndarray], np.ndarray | None],
                    stage: InstanceStage | None = None) -> np.ndarray:
    """``ComponentModel.segment_working``: class maps [N,S,S] at the learner's size, majority-filtered.

    ``deep``: the learner's backbone features [N,h,w,C] of ``images`` when the detector's features serve (see
    ``shared_feature_index``); else ``deep_of(images at the learner's size)`` computes them (None: no backbone).
    """
    return segment_views(images, arrays, learner, deep, deep_of, (stage,))[0]


def segment_views(images: np.ndarray, arrays: dict[str, np.ndarray], learner: LearnerConfig,
                  deep: np.ndarray | None, deep_of: Callable[[np.ndarray], np.ndarray | None],
                  stages: tuple[InstanceStage | None, ...]) -> list[np.ndarray]:
    """``ComponentModel.segment_views``: one pass of the pixel stage, then each instance stage (None: the colour
    classes themselves) -> one class-map stack per stage."""
    images = resize_square(np.asarray(images), learner.image_size)
    out = [np.empty(images.shape[:3], np.uint8) for _ in stages]
    kernel = int(round(learner.scaled(learner.smooth))) | 1 if learner.smooth else 0
    k = len(arrays["centroids"])
    bs = max(1, learner.batch_size)
    size = images.shape[1]
    for i in range(0, len(images), bs):
        chunk = images[i:i + bs]
        labels, lab, proj = assign_images(chunk, arrays, learner, deep_of(chunk) if deep is None else deep[i:i + bs])
        maps = np.stack([majority_filter(m, k, kernel) for m in labels])
        up = None
        if proj is not None and any(st is not None for st in stages):
            up = np.moveaxis(resize_bilinear(np.moveaxis(proj, -1, 1), (size, size)), 1, -1)
        for stage, dest in zip(stages, out):
            dest[i:i + bs] = maps if stage is None else \
                np.stack([stage.refine(m, lab[j], None if up is None else up[j]) for j, m in enumerate(maps)])
    return out


def assign_images(images: np.ndarray, arrays: dict[str, np.ndarray], learner: LearnerConfig,
                  deep: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``ComponentModel._assign_with_features``: nearest centroid per pixel (the deep part scored on the backbone
    grid), with the Lab colour and the projected deep grid."""
    c = arrays["centroids"].astype(np.float32)
    scale = arrays["scale"].astype(np.float32)
    weights = scale[:, None] * c.T
    bias = -(arrays["mean"].astype(np.float32) * scale) @ c.T
    lab = PixelFeaturizer(learner).lab(images)
    scores = lab @ weights[-lab.shape[-1]:] + bias
    proj = None
    if deep is not None and "pca_components" in arrays:
        proj = ((deep - arrays["pca_mean"]) @ arrays["pca_components"]).astype(np.float32)
        grid = np.moveaxis(proj @ weights[:proj.shape[-1]], -1, 1)  # [N,K,h,w]
        scores += np.moveaxis(resize_bilinear(grid, (images.shape[1], images.shape[1])), 1, -1)
    d = (c * c).sum(1) - 2.0 * scores
    return d.argmin(-1).astype(np.uint8), lab, proj


def composition_vectors(images: np.ndarray, maps: np.ndarray, num_classes: int, min_area: float, grid: int,
                        area_spread: bool = False, holes: bool = False) -> np.ndarray:
    """``CompositionPrior.vectors`` with the class maps given: each image's composition vector [N,D]."""
    out = []
    for cmap, img in zip(maps, images):
        if cmap.shape != img.shape[:2]:
            cmap = cv2.resize(cmap, img.shape[1::-1], interpolation=cv2.INTER_NEAREST)
        h, w = img.shape[:2]
        comps = compose(cmap, img, "", background=0, min_area=min_area_pixels(min_area, h, w)).components
        out.append(composition_vector(comps, img.shape[:2], num_classes, 0, grid, area_spread, holes))
    return np.stack(out)


def mixture_log_density(vectors: np.ndarray, arrays: dict[str, np.ndarray], covariance_type: str) -> np.ndarray:
    """``CompositionDensity.score``: impute and standardise (``_prep``), then ``GaussianMixture.score_samples``
    from the fitted weights, means and Cholesky factors of the precisions (sklearn's own formula)."""
    x = np.atleast_2d(np.asarray(vectors, np.float64))
    x = np.where(np.isnan(x), arrays["fill"], x)
    z = (x - arrays["mu"]) / arrays["sd"]
    means, prec, weights = arrays["gmm_means"], arrays["gmm_precisions_cholesky"], arrays["gmm_weights"]
    n, d = z.shape
    k = len(means)
    if covariance_type == "full":
        log_det = np.sum(np.log(prec.reshape(k, -1)[:, ::d + 1]), 1)
        log_prob = np.empty((n, k))
        for j in range(k):
            y = z @ prec[j] - means[j] @ prec[j]
            log_prob[:, j] = np.sum(np.square(y), axis=1)
    elif covariance_type == "tied":
        log_det = np.sum(np.log(np.diag(prec)))
        log_prob = np.empty((n, k))
        for j in range(k):
            y = z @ prec - means[j] @ prec
            log_prob[:, j] = np.sum(np.square(y), axis=1)
    elif covariance_type == "diag":
        log_det = np.sum(np.log(prec), axis=1)
        p = prec ** 2
        log_prob = np.sum(means ** 2 * p, 1) - 2.0 * (z @ (means * p).T) + z ** 2 @ p.T
    else:  # spherical
        log_det = d * np.log(prec)
        p = prec ** 2
        log_prob = np.sum(means ** 2, 1) * p - 2 * (z @ means.T * p) + np.outer((z ** 2).sum(1), p)
    weighted = -0.5 * (d * np.log(2 * np.pi) + log_prob) + log_det + np.log(weights)
    top = weighted.max(axis=1, keepdims=True)
    return (top[:, 0] + np.log(np.exp(weighted - top).sum(axis=1)))


def prior_z(nll: np.ndarray, cal: dict[str, Any]) -> np.ndarray:
    """``CompositionPrior.z``: negative log-densities as z-scores of the validation normals."""
    return ((nll - cal["mean"]) / cal["std"]).astype(np.float32)


@dataclass
class BundlePrior:
    """One component model's prior as a bundle holds it: its manifest entry, arrays, learner and instance stage."""

    entry: dict[str, Any]
    arrays: dict[str, np.ndarray]
    learner: LearnerConfig
    stage: InstanceStage | None

    @classmethod
    def read(cls, entry: dict[str, Any], arrays: dict[str, np.ndarray], where: Path, name: str, hint: str
             ) -> BundlePrior:
        """From the manifest's entry ``name`` and its arrays; a missing setting, a bad calibration or an unreadable
        instance stage is one ArtifactError."""
        if not isinstance(entry, dict):
            raise ArtifactError(where, f"{name} is {entry!r}, not an object; {hint}")
        missing = [k for k in ("learner", "num_classes", "grid", "covariance_type") if k not in entry]
        if missing:
            raise ArtifactError(where, f"{name} lacks {', '.join(missing)}; {hint}")
        if not is_number(entry.get("mean")) or not is_number(entry.get("std")) or entry["std"] <= 0:
            raise ArtifactError(where, f"{name} has no finite mean and positive std; {hint}")
        for flag in ("area_spread", "holes"):
            if not isinstance(entry.get(flag, False), bool):
                raise ArtifactError(where, f"{name}.{flag} is {entry[flag]!r}, not true or false; {hint}")
        if not all(isinstance(entry[k], int) and not isinstance(entry[k], bool) for k in ("num_classes", "grid")):
            raise ArtifactError(where, f"{name}.num_classes and grid must be integers; {hint}")
        width = len(vector_names(entry["num_classes"], 0, entry["grid"], entry.get("area_spread", False),
                                 entry.get("holes", False)))
        mu = arrays.get("mu")
        if mu is None or mu.shape != (width,):  # as CompositionPrior.load: the settings decide the vector's width
            raise ArtifactError(where, f"{name} holds {0 if mu is None else mu.size} composition features where its "
                                       f"settings ask for {width}; {hint}")
        learner = LearnerConfig.from_dict(entry["learner"], where=str(where))
        meta = entry.get("instance_stage")
        try:
            stage = None if meta is None else InstanceStage.from_arrays(arrays, meta)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ArtifactError(where, f"{name}.instance_stage unreadable ({exc.__class__.__name__}); {hint}"
                                ) from None
        return cls(entry, arrays, learner, stage)

    def class_maps(self, images: np.ndarray, deep: np.ndarray | None,
                   deep_of: Callable[[np.ndarray], np.ndarray | None]) -> np.ndarray:
        """``composition_prior.segment_maps`` with this model."""
        return segment_working(images, self.arrays, self.learner, deep, deep_of, self.stage)

    def class_views(self, images: np.ndarray, deep: np.ndarray | None,
                    deep_of: Callable[[np.ndarray], np.ndarray | None], twin: BundlePrior
                    ) -> tuple[np.ndarray, np.ndarray]:
        """``CompositionPrior.segment``: this model's and a twin's class maps from one pixel pass."""
        own, other = segment_views(images, self.arrays, self.learner, deep, deep_of, (self.stage, twin.stage))
        return own, other

    def shares_pixel_stage(self, other: BundlePrior) -> bool:
        """``ComponentModel.shares_pixel_stage``: the same colour classes, features and filter."""
        keys = ("centroids", "mean", "scale", "pca_mean", "pca_components")
        return (replace(other.learner, instances=self.learner.instances) == self.learner
                and all((k in self.arrays) == (k in other.arrays)
                        and (k not in self.arrays or np.array_equal(self.arrays[k], other.arrays[k])) for k in keys))

    def vectors(self, images: np.ndarray, maps: np.ndarray) -> np.ndarray:
        """``CompositionPrior.vectors_of``: the images' composition vectors (``maps``: this model's class maps)."""
        e = self.entry
        return composition_vectors(images, maps, e["num_classes"], self.learner.min_area, e["grid"],
                                   e.get("area_spread", False), e.get("holes", False))  # absent from older bundles

    def scores(self, vectors: np.ndarray) -> np.ndarray:
        """``CompositionPrior.z`` of composition vectors."""
        return prior_z(-mixture_log_density(vectors, self.arrays, self.entry["covariance_type"]), self.entry)

    def count_columns(self) -> np.ndarray:
        """Where the per-class counts lie in this model's composition vectors."""
        e = self.entry
        return count_columns(vector_names(e["num_classes"], 0, e["grid"], e.get("area_spread", False),
                                          e.get("holes", False)))

    def counts(self, vectors: np.ndarray) -> np.ndarray:
        """The per-class counts of composition vectors (``CompositionPrior.count_matrix``'s block of this model)."""
        return as_counts(vectors, self.count_columns())


@dataclass
class BundleCounts:
    """The count patterns of a bundle's prior (``CompositionPrior.counts``) and their calibration."""

    table: CountPatterns
    mean: float
    std: float

    @classmethod
    def read(cls, entry: dict[str, Any], arrays: dict[str, np.ndarray], width: int, where: Path
             ) -> BundleCounts | None:
        """From the prior's manifest entry and arrays (None when the bundle scores no count patterns); ``width``:
        the number of count columns of the prior's models together."""
        counts = entry.get("counts")
        if counts is None:
            return None
        if not isinstance(counts, dict) or not isinstance(counts.get("pairs"), bool) \
                or not is_number(counts.get("mean")) or not is_number(counts.get("std")) or counts["std"] <= 0:
            raise ArtifactError(where, f"prior.counts needs a finite mean, a positive std and pairs true or false; "
                                       f"{REEXPORT}")
        train = arrays.get("counts_train")
        if train is None or train.ndim != 2 or train.shape[1] != width or not len(train) or (train < 0).any():
            raise ArtifactError(where, f"prior.counts_train must be a non-negative [N, {width}] array of counts; "
                                       f"{REEXPORT}")
        return cls(CountPatterns(train, counts["pairs"]), float(counts["mean"]), float(counts["std"]))

    def z(self, counts: np.ndarray) -> np.ndarray:
        """``CompositionPrior.counts_z`` of count matrices."""
        return ((self.table.raw(counts) - self.mean) / self.std).astype(np.float32)


def pair_z(z: np.ndarray, partner_z: np.ndarray, pair: dict[str, Any]) -> np.ndarray:
    """``CompositionPrior.pair``: two models' calibrated scores -> the ensemble's."""
    return (((z + partner_z) / 2 - pair["mean"]) / pair["std"]).astype(np.float32)


def ensemble_z(zs: list[np.ndarray], ensemble: dict[str, Any]) -> np.ndarray:
    """``CompositionPrior.ensemble``: the learner seeds' calibrated scores -> the ensemble's."""
    return ((np.mean(zs, 0) - ensemble["mean"]) / ensemble["std"]).astype(np.float32)


def read_seed(entry: dict[str, Any], arrays: dict[str, dict[str, np.ndarray]], where: Path, name: str
              ) -> tuple[BundlePrior, BundlePrior | None, dict[str, Any] | None]:
    """One learner seed's prior from the manifest's ``entry`` (arrays in ``name``.safetensors) and its counterpart's
    (``name``_partner.safetensors): (model, counterpart or None, the pair's calibration or None)."""
    for file in (f"{name}.safetensors",) + ((f"{name}_partner.safetensors",) if entry.get("partner") else ()):
        if file not in arrays:
            raise ArtifactError(where, f"{name} has no {file}; {REEXPORT}")
    model = BundlePrior.read(entry, arrays[f"{name}.safetensors"], where, name, REEXPORT)
    if entry.get("partner") is None:
        return model, None, None
    partner = BundlePrior.read(entry["partner"], arrays[f"{name}_partner.safetensors"], where, f"{name}.partner",
                               REEXPORT)
    return model, partner, entry.get("pair")
