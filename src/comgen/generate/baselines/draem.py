"""DRAEM-style baseline (Zavrtanik et al., ICCV 2021): Perlin-noise shaped regions filled with a foreign texture.

As in DRAEM: the mask is thresholded Perlin noise with a random lattice scale 2**k per axis and a random rotation;
the texture is blended in with opacity ``1 - beta``, beta ~ U(0, 0.8). Textures come from offline sources
(``textures.py``: GIMP patterns, scikit-image, or a user's DTD folder). Only pixels inside the mask change.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from comgen.config import ConfigBase
from comgen.errors import ConfigError
from comgen.generate.baselines.common import BaselineGenerator, color_jitter
from comgen.generate.baselines.perlin import perlin_mask
from comgen.generate.baselines.textures import load_textures, texture_crop
from comgen.records import Anomaly


@dataclass
class DraemConfig(ConfigBase):
    textures: str = "auto"  # auto | gimp | skimage | path to a folder of images / .pat files (e.g. DTD)
    max_textures: int = 64
    perlin_scale_exp: tuple[int, int] = (0, 6)  # lattice cells per axis = 2**k, k in [low, high)
    threshold: float = 0.5
    beta: tuple[float, float] = (0.0, 0.8)  # share of the original image kept inside the mask
    min_area: float = 0.002  # resample masks smaller than this fraction of the image
    max_area: float = 0.5  # ... or larger than this
    jitter: float = 0.3  # colour jitter of the texture

    def __post_init__(self) -> None:
        if not 0.0 <= self.beta[0] <= self.beta[1] < 1.0:
            raise ConfigError("draem.beta", f"range {tuple(self.beta)} must satisfy 0 <= low <= high < 1")
        if not 0.0 <= self.min_area < self.max_area <= 1.0:
            raise ConfigError("draem.min_area", f"need 0 <= min_area < max_area <= 1, got {self.min_area}, "
                                                f"{self.max_area}")
        if self.max_textures < 1:
            raise ConfigError("draem.max_textures", "must be at least 1")
        if not self.perlin_scale_exp[0] >= 0:
            raise ConfigError("draem.perlin_scale_exp", "exponents must be >= 0")


class DraemGenerator(BaselineGenerator):
    """Perlin-masked texture anomalies (edit kind ``texture``, category structural)."""

    name = "draem"
    _TRIES = 12

    def __init__(self, cfg: DraemConfig | None = None, image_size: int = 256) -> None:
        super().__init__(image_size)
        self.cfg = cfg or DraemConfig()
        self.textures: list[np.ndarray] = []
        self.texture_source = ""

    def _after_fit(self) -> None:
        if not self.textures:
            self.textures, self.texture_source = load_textures(self.cfg.textures, self.cfg.max_textures)

    def _mask(self, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
        """Resample until the area is sensible; the threshold is relaxed step by step so this always ends."""
        s = self.image_size
        lo, hi = self.cfg.min_area * s * s, self.cfg.max_area * s * s
        best: tuple[np.ndarray, dict] | None = None
        for attempt in range(self._TRIES):
            thr = self.cfg.threshold * (1.0 - attempt / self._TRIES)
            mask, params = perlin_mask(s, rng, tuple(self.cfg.perlin_scale_exp), thr)
            area = int(mask.sum())
            if lo <= area <= hi and area > 0:
                return mask, params
            if area > 0 and (best is None or abs(area - lo) < abs(int(best[0].sum()) - lo)):
                best = (mask, params)
        if best is None:  # practically unreachable: threshold 0 keeps about half the noise
            mask = np.zeros((s, s), bool)
            y, x = int(rng.integers(0, s - s // 8)), int(rng.integers(0, s - s // 8))
            mask[y:y + s // 8, x:x + s // 8] = True
            best = (mask, {"fallback_square": True})
        return best

    def make(self, index: int, rng: np.random.Generator) -> Anomaly:
        img = self.images[index]
        mask, params = self._mask(rng)
        t = int(rng.integers(len(self.textures)))
        tex, tparams = texture_crop(self.textures[t], self.image_size, rng)
        tex, jit = color_jitter(tex, rng, *(self.cfg.jitter,) * 3, hue=min(0.5, self.cfg.jitter))
        beta = float(rng.uniform(*self.cfg.beta))
        m = mask[..., None]
        blended = beta * img.astype(np.float32) + (1.0 - beta) * tex.astype(np.float32)
        out = np.where(m, np.clip(np.rint(blended), 0, 255).astype(np.uint8), img)
        params.update(tparams)
        params.update({"texture": t, "texture_source": self.texture_source, "beta": beta,
                       **{f"texture_{k}": v for k, v in jit.items()}})
        return self._anomaly(out, mask, "texture", index, params)
