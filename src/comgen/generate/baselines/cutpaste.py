"""CutPaste baseline (Li et al., CVPR 2021): cut a patch of the normal image and paste it elsewhere.

Two variants as in the paper: ``patch`` (a rectangle of 2-15 % of the image area, aspect ratio log-uniform in
0.3-3.3, colour-jittered) and ``scar`` (a thin rectangle, 2-16 x 10-25 px at 256 px, rotated by -45..45 degrees).
Sizes are given relative to the image side, so the same config works at any working resolution. The mask is
the pasted region, exactly: every changed pixel is inside it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from comgen.config import ConfigBase
from comgen.errors import ConfigError
from comgen.generate.baselines.common import BaselineGenerator, color_jitter
from comgen.records import Anomaly

CUTPASTE_VARIANTS: tuple[str, ...] = ("patch", "scar")


@dataclass
class CutPasteConfig(ConfigBase):
    variants: tuple[str, ...] = CUTPASTE_VARIANTS  # drawn uniformly per anomaly
    patch_area: tuple[float, float] = (0.02, 0.15)  # fraction of the image area
    patch_aspect: tuple[float, float] = (0.3, 3.3)  # width/height, log-uniform
    scar_width: tuple[float, float] = (2 / 256, 16 / 256)  # fraction of the image side
    scar_length: tuple[float, float] = (10 / 256, 25 / 256)
    scar_angle: tuple[float, float] = (-45.0, 45.0)  # degrees
    jitter: float = 0.1  # ColorJitter strength (brightness, contrast, saturation, hue)

    def __post_init__(self) -> None:
        bad = [v for v in self.variants if v not in CUTPASTE_VARIANTS]
        if bad or not self.variants:
            raise ConfigError("cutpaste.variants", f"{list(self.variants)} must be a non-empty subset of "
                                                   f"{list(CUTPASTE_VARIANTS)}")
        for name in ("patch_area", "patch_aspect", "scar_width", "scar_length"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ConfigError(f"cutpaste.{name}", f"range ({lo}, {hi}) must satisfy 0 < low <= high")
        if self.patch_area[1] > 0.5:
            raise ConfigError("cutpaste.patch_area", "patches larger than half the image are not local anomalies")


class CutPasteGenerator(BaselineGenerator):
    """CutPaste patch / scar anomalies with exact masks (``kind`` = structural, edit kind = variant)."""

    name = "cutpaste"

    def __init__(self, cfg: CutPasteConfig | None = None, image_size: int = 256) -> None:
        super().__init__(image_size)
        self.cfg = cfg or CutPasteConfig()

    def make(self, index: int, rng: np.random.Generator) -> Anomaly:
        variant = self.cfg.variants[int(rng.integers(len(self.cfg.variants)))]
        img = self.images[index]
        if variant == "patch":
            out, mask, params = self._patch(img, rng)
        else:
            out, mask, params = self._scar(img, rng)
        params["variant"] = variant
        return self._anomaly(out, mask, variant, index, params)

    def _patch(self, img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict]:
        s = img.shape[0]
        area = rng.uniform(*self.cfg.patch_area) * s * s
        aspect = math.exp(rng.uniform(math.log(self.cfg.patch_aspect[0]), math.log(self.cfg.patch_aspect[1])))
        pw = int(np.clip(round(math.sqrt(area * aspect)), 2, s - 1))
        ph = int(np.clip(round(math.sqrt(area / aspect)), 2, s - 1))
        cy, cx = int(rng.integers(0, s - ph + 1)), int(rng.integers(0, s - pw + 1))
        py, px = int(rng.integers(0, s - ph + 1)), int(rng.integers(0, s - pw + 1))
        patch, jit = color_jitter(img[cy:cy + ph, cx:cx + pw], rng, *(self.cfg.jitter,) * 4)
        out = img.copy()
        out[py:py + ph, px:px + pw] = patch
        mask = np.zeros((s, s), bool)
        mask[py:py + ph, px:px + pw] = True
        return out, mask, {"cut": [cy, cx], "paste": [py, px], "size": [ph, pw], **jit}

    def _scar(self, img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict]:
        import cv2

        s = img.shape[0]
        w = int(np.clip(round(rng.uniform(*self.cfg.scar_width) * s), 1, s // 2))
        h = int(np.clip(round(rng.uniform(*self.cfg.scar_length) * s), 3, s // 2))
        angle = float(rng.uniform(*self.cfg.scar_angle))
        cy, cx = int(rng.integers(0, s - h + 1)), int(rng.integers(0, s - w + 1))
        patch, jit = color_jitter(img[cy:cy + h, cx:cx + w], rng, *(self.cfg.jitter,) * 4)
        d = int(math.ceil(math.hypot(h, w))) + 2  # canvas that holds the scar at any angle
        canvas = np.zeros((d, d, 3), np.uint8)
        cmask = np.zeros((d, d), np.uint8)
        oy, ox = (d - h) // 2, (d - w) // 2
        canvas[oy:oy + h, ox:ox + w] = patch
        cmask[oy:oy + h, ox:ox + w] = 1
        mat = cv2.getRotationMatrix2D(((d - 1) / 2.0, (d - 1) / 2.0), angle, 1.0)
        canvas = cv2.warpAffine(canvas, mat, (d, d), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        cmask = cv2.warpAffine(cmask, mat, (d, d), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT) > 0
        ys, xs = np.nonzero(cmask)
        canvas, cmask = canvas[ys.min():ys.max() + 1, xs.min():xs.max() + 1], cmask[ys.min():ys.max() + 1,
                                                                                   xs.min():xs.max() + 1]
        bh, bw = cmask.shape
        py, px = int(rng.integers(0, s - bh + 1)), int(rng.integers(0, s - bw + 1))
        out = img.copy()
        region = out[py:py + bh, px:px + bw]
        region[cmask] = canvas[cmask]
        mask = np.zeros((s, s), bool)
        mask[py:py + bh, px:px + bw] = cmask
        return out, mask, {"cut": [cy, cx], "paste": [py, px], "size": [h, w], "angle": angle, **jit}
