"""NSA-style baseline (Schlüter et al., "Natural Synthetic Anomalies", ECCV 2022): Poisson-blended foreign patches.

A patch of *another* normal image (random size, rescaled) is moved to a nearby location and blended in with
OpenCV's ``seamlessClone`` (Poisson image editing), so no hard seam gives the anomaly away. As in NSA the mask is
where blending changed the image noticeably (max channel difference > ``tau``), closed morphologically and kept
inside the pasted rectangle (``dst``/``size`` in the params). Every pixel changed by more than ``tau`` is in the
mask; Poisson blending may shift other pixels of that rectangle by less, and never touches pixels outside it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from comgen.config import ConfigBase
from comgen.errors import ConfigError
from comgen.generate.baselines.common import BaselineGenerator
from comgen.records import Anomaly

CLONE_MODES: tuple[str, ...] = ("normal", "mixed", "random")


@dataclass
class NsaConfig(ConfigBase):
    width: tuple[float, float] = (0.1, 0.4)  # patch width, fraction of the image side
    height: tuple[float, float] = (0.1, 0.4)
    scale: tuple[float, float] = (0.7, 1.3)  # rescale of the patch before pasting
    max_shift: float = 0.25  # destination offset from the source location, fraction of the side
    clone: str = "random"  # normal | mixed | random (OpenCV NORMAL_CLONE / MIXED_CLONE)
    tau: float = 0.05  # a pixel is anomalous when blending changed it by more than tau * 255
    min_fraction: float = 0.1  # retry when less than this share of the rectangle changed

    def __post_init__(self) -> None:
        if self.clone not in CLONE_MODES:
            raise ConfigError("nsa.clone", f"{self.clone!r} is not one of {list(CLONE_MODES)}")
        for name in ("width", "height", "scale"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ConfigError(f"nsa.{name}", f"range ({lo}, {hi}) must satisfy 0 < low <= high")
        if self.width[1] * self.scale[1] > 0.9 or self.height[1] * self.scale[1] > 0.9:
            raise ConfigError("nsa.width", "patch (size x scale) must stay below 0.9 of the image side")
        if not 0.0 <= self.tau < 1.0:
            raise ConfigError("nsa.tau", f"{self.tau} must be in [0, 1)")


class NsaGenerator(BaselineGenerator):
    """Poisson-blended patches from another normal image (edit kind ``patch``, category structural)."""

    name = "nsa"
    _TRIES = 6

    def __init__(self, cfg: NsaConfig | None = None, image_size: int = 256) -> None:
        super().__init__(image_size)
        self.cfg = cfg or NsaConfig()

    def make(self, index: int, rng: np.random.Generator) -> Anomaly:
        import cv2

        dst = self.images[index]
        s = self.image_size
        n = len(self.images)
        other = index if n == 1 else int((index + rng.integers(1, n)) % n)
        src_img = self.images[other]
        kernel = np.ones((3, 3), np.uint8)
        last: tuple | None = None
        for attempt in range(self._TRIES):
            pw = max(4, round(rng.uniform(*self.cfg.width) * s))
            ph = max(4, round(rng.uniform(*self.cfg.height) * s))
            sy, sx = int(rng.integers(0, s - ph + 1)), int(rng.integers(0, s - pw + 1))
            scale = float(rng.uniform(*self.cfg.scale))
            patch = src_img[sy:sy + ph, sx:sx + pw]
            dh = int(np.clip(round(ph * scale), 8, s - 4))  # OpenCV's Poisson solver fails on slivers
            dw = int(np.clip(round(pw * scale), 8, s - 4))
            patch = cv2.resize(patch, (dw, dh), interpolation=cv2.INTER_LINEAR)
            shift = self.cfg.max_shift * s
            dy = int(np.clip(round(sy + rng.uniform(-shift, shift)), 2, s - dh - 2))
            dx = int(np.clip(round(sx + rng.uniform(-shift, shift)), 2, s - dw - 2))
            mode = self.cfg.clone if self.cfg.clone != "random" else ("normal", "mixed")[int(rng.integers(2))]
            flag = cv2.NORMAL_CLONE if mode == "normal" else cv2.MIXED_CLONE
            center = (dx + dw // 2, dy + dh // 2)  # OpenCV places the patch's top-left at center - size // 2
            region = np.zeros((s, s), bool)
            region[dy:dy + dh, dx:dx + dw] = True
            params = {"other": self.sources[other], "src": [sy, sx], "dst": [dy, dx], "size": [dh, dw],
                      "scale": scale, "clone": mode, "attempt": attempt}
            try:
                out = cv2.seamlessClone(patch, dst, np.full((dh, dw), 255, np.uint8), center, flag)
            except cv2.error:  # degenerate geometry for the solver: draw another patch
                continue
            out = np.where(region[..., None], out, dst)  # guard: Poisson never leaks outside the rectangle
            diff = np.abs(out.astype(np.int16) - dst.astype(np.int16)).max(axis=2)
            mask = (diff > self.cfg.tau * 255).astype(np.uint8)
            mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel).astype(bool) & region  # closing only adds
            if mask.sum() >= self.cfg.min_fraction * dh * dw and mask.any():
                return self._anomaly(out, mask, "patch", index, params)
            if mask.any() and (last is None or mask.sum() > last[1].sum()):
                last = (out, mask, params)
        if last is None:  # blending was invisible every time (near-uniform images): paste without blending
            out = dst.copy()
            out[dy:dy + dh, dx:dx + dw] = patch
            mask = np.any(out != dst, axis=2)
            if not mask.any():
                mask = region
            params["clone"] = "paste"
            last = (out, mask, params)
        return self._anomaly(*last[:2], "patch", index, last[2])
