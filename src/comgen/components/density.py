"""A density model of normal compositions, and a realism check for single components.

Why: Low-Density Sampling (Stage I) and the composition prior (Stage III) both ask how rare a composition is among
normal images, so the model of compositions lives with the components, below both stages. An edit is a useful
logical anomaly when the *composition* it produces is rare among normal images (log-density below a low percentile
of normal data) while every single component still looks like a real part (its own size and colour lie in the
range seen in training). The threshold is taken from cross-validated normal scores, because in-sample scores of a
full-covariance mixture are optimistic and would let near-normal edits through; far-out normal scores are left
out of it (``low_density_threshold``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from sklearn.mixture import GaussianMixture

from comgen.components.composition import component_features, composition_vector, vector_names
from comgen.config import ConfigBase
from comgen.errors import ConfigError, InputError
from comgen.records import Component


@dataclass
class DensityConfig(ConfigBase):
    """Options of the composition density model."""

    RETIRED_OPTIONS: ClassVar[dict[str, Any]] = {"threshold_estimate": "empirical"}
    n_components: int = 2  # Gaussian mixture components (capped by the number of images / 8)
    covariance_type: str = "full"  # full | diag | tied | spherical
    reg_covar: float = 0.1  # on standardised features; keeps full covariances well-conditioned
    percentile: float = 1.0  # threshold = this percentile of cross-validated normal log-densities ...
    outlier_fence: float = 3.0  # ... of those above Q1 - fence * IQR (Tukey's far-out fence; 0 keeps them all)
    cv_folds: int = 5
    count_sd_floor: float = 0.15  # smallest std of a count feature (in parts), see CompositionDensity.fit
    grid: int = 2  # grid x grid instance counts per class in the composition vector (0 = off)
    area_spread: bool = False  # per class, log(largest / smallest instance area) in the composition vector
    holes: bool = False  # per class, the mean number of holes of its instances (a connector's slots)
    area_margin: float = 2.0  # a component is realistic if its area is within [p1 / m, p99 * m] of its class
    color_tolerance: float = 12.0  # Lab distance to the nearest colour seen on any normal component
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.percentile < 100.0:
            raise ConfigError("density.percentile", f"must be in (0, 100), got {self.percentile}")
        if self.outlier_fence < 0:
            raise ConfigError("density.outlier_fence", f"must be >= 0, got {self.outlier_fence}")
        if self.covariance_type not in ("full", "diag", "tied", "spherical"):
            raise ConfigError("density.covariance_type", f"unknown {self.covariance_type!r}")


class CompositionDensity:
    """Standardise composition vectors (NaN -> column mean), fit a GaussianMixture, threshold at a percentile."""

    def __init__(self, cfg: DensityConfig, num_classes: int, background: int = 0) -> None:
        self.cfg = cfg
        self.num_classes = num_classes
        self.background = background
        self.gmm = None
        self.threshold = -np.inf
        self.normal_scores = np.zeros(0)

    def vector(self, components: list[Component], image_shape: tuple[int, int]) -> np.ndarray:
        return composition_vector(components, image_shape, self.num_classes, self.background, self.cfg.grid,
                                  self.cfg.area_spread, self.cfg.holes)

    def column_names(self) -> list[str]:
        """The names of the columns this density reads (``composition_vector``'s, by default)."""
        return vector_names(self.num_classes, self.background, self.cfg.grid, self.cfg.area_spread, self.cfg.holes)

    def _prep(self, x: np.ndarray) -> np.ndarray:
        x = np.atleast_2d(np.asarray(x, np.float64))
        x = np.where(np.isnan(x), self.fill, x)
        return (x - self.mu) / self.sd

    def _fit_gmm(self, z: np.ndarray):
        k = max(1, min(self.cfg.n_components, len(z) // 8))
        return GaussianMixture(k, covariance_type=self.cfg.covariance_type, reg_covar=self.cfg.reg_covar,
                               random_state=self.cfg.seed, n_init=1).fit(z)

    def fit(self, vectors: np.ndarray) -> CompositionDensity:
        x = np.asarray(vectors, np.float64)
        if x.ndim != 2 or len(x) < 2:
            raise InputError("density", f"need at least 2 normal compositions, got {len(x)}")
        with warnings.catch_warnings():  # a class absent from every image has an all-NaN column
            warnings.simplefilter("ignore", RuntimeWarning)
            self.fill = np.nan_to_num(np.nanmean(x, 0))
        xf = np.where(np.isnan(x), self.fill, x)
        self.mu = xf.mean(0)
        sd = xf.std(0)
        # a feature that never varies in normal data (e.g. "always exactly 2 screws") gets a small but finite
        # scale, so changing it is very unlikely yet still scored smoothly
        floor = 0.05 * np.maximum(np.abs(self.mu), 0.1)
        # counts are integers: a class whose count never varies (exactly 9 pins) must make +-1 part very unlikely,
        # which a relative floor (5% of 9) would not; an absolute floor in count units does
        names = self.column_names()
        is_count = np.array([n.endswith(".count") or ".grid" in n for n in names])[: x.shape[1]]
        if len(is_count) == x.shape[1]:
            floor = np.where(is_count, self.cfg.count_sd_floor, floor)
        self.sd = np.maximum(sd, floor)
        z = self._prep(x)
        folds = min(self.cfg.cv_folds, len(z))
        if folds >= 2 and len(z) >= 2 * folds:
            rng = np.random.default_rng(self.cfg.seed)
            fold = rng.permutation(len(z)) % folds
            scores = np.empty(len(z))
            for f in range(folds):
                scores[fold == f] = self._fit_gmm(z[fold != f]).score_samples(z[fold == f])
        else:
            scores = None
        self.gmm = self._fit_gmm(z)
        if scores is None:
            scores = self.gmm.score_samples(z)
        self.normal_scores = scores
        self.threshold = low_density_threshold(scores, self.cfg.percentile, self.cfg.outlier_fence)
        return self

    def score(self, vectors: np.ndarray) -> np.ndarray:
        """Log-density of composition vectors [N,D] (higher = more normal)."""
        if self.gmm is None:
            raise InputError("density", "model is not fitted")
        return self.gmm.score_samples(self._prep(vectors))

    def is_low(self, vectors: np.ndarray) -> np.ndarray:
        return self.score(vectors) < self.threshold


def low_density_threshold(normal_scores: np.ndarray, percentile: float, fence: float) -> float:
    """The log-density below which a composition counts as rare: a low percentile of the normal scores.

    Why: with a few dozen training images the percentile is about the lowest normal score. One normal image that
    the component model segments badly can sit far below all others and would set the bar alone, refusing every
    edit less rare than itself, so that a category gets hardly any logical anomaly. Scores below Tukey's far-out
    fence (Q1 - fence * IQR) are left out of the percentile.
    """
    s = np.asarray(normal_scores, np.float64)
    if fence > 0 and len(s) >= 4:
        q1, q3 = np.percentile(s, [25, 75])
        s = s[s >= q1 - fence * (q3 - q1)]  # never empty: Q1 itself is above the fence
    return float(np.percentile(s, percentile))


class ComponentRealism:
    """Per-class range of single-component features seen in normal images."""

    def __init__(self, cfg: DensityConfig) -> None:
        self.cfg = cfg
        self.area_range: dict[int, tuple[float, float]] = {}
        self.colors = np.zeros((0, 3))

    def fit(self, components: list[Component], image_shape: tuple[int, int]) -> ComponentRealism:
        if not components:
            raise InputError("density", "no normal components to learn realism ranges from")
        feats = np.array([component_features(c, image_shape) for c in components])
        cls = np.array([c.class_id for c in components])
        for k in np.unique(cls):
            a = feats[cls == k, 0]
            self.area_range[int(k)] = (float(np.percentile(a, 1)), float(np.percentile(a, 99)))
        self.colors = feats[:, 2:5]
        return self

    def realistic(self, c: Component, image_shape: tuple[int, int]) -> bool:
        f = component_features(c, image_shape)
        lo, hi = self.area_range.get(c.class_id, (0.0, np.inf))
        m = self.cfg.area_margin
        if not (lo / m <= f[0] <= hi * m):
            return False
        d = np.sqrt(((self.colors - f[2:5]) ** 2).sum(1)).min() if len(self.colors) else 0.0
        return bool(d <= self.cfg.color_tolerance)
