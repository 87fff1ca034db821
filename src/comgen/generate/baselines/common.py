"""Shared machinery of the baseline generators (CutPaste, DRAEM-style, NSA-style).

Why a base class: every baseline needs the same things, namely the normal training images at the working resolution
and a loop that turns ``n`` and an RNG into ``Anomaly`` records. Each baseline only implements ``make``: one anomaly
from one source image. Everything random is drawn from the RNG passed in, so the writer's per-block RNGs make
output reproducible and resumable.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from comgen.errors import InputError
from comgen.progress import progress
from comgen.records import Anomaly, EditSpec, Sample
from comgen.rundir import RunDir


def color_jitter(img: np.ndarray, rng: np.random.Generator, brightness: float = 0.1, contrast: float = 0.1,
                 saturation: float = 0.1, hue: float = 0.1) -> tuple[np.ndarray, dict[str, float]]:
    """torchvision-style ColorJitter on a uint8 RGB array (vectorised); returns the image and the factors drawn."""
    import cv2

    b = float(rng.uniform(1 - brightness, 1 + brightness))
    c = float(rng.uniform(1 - contrast, 1 + contrast))
    s = float(rng.uniform(1 - saturation, 1 + saturation))
    h = float(rng.uniform(-hue, hue))
    x = img.astype(np.float32) * b
    gray = x @ np.array([0.299, 0.587, 0.114], np.float32)
    x = (x - gray.mean()) * c + gray.mean()
    gray = x @ np.array([0.299, 0.587, 0.114], np.float32)
    x = gray[..., None] + (x - gray[..., None]) * s
    out = np.clip(x, 0, 255).astype(np.uint8)
    if h:
        hsv = cv2.cvtColor(out, cv2.COLOR_RGB2HSV_FULL)
        hsv[..., 0] = ((hsv[..., 0].astype(np.int32) + round(h * 255)) % 256).astype(np.uint8)
        out = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL)
    return out, {"brightness": b, "contrast": c, "saturation": s, "hue": h}


def load_train_images(train: Sequence[Sample], image_size: int, desc: str) -> tuple[np.ndarray, list[str]]:
    """Read and resize the normal training images to the square working resolution (N, S, S, 3) uint8."""
    from comgen.data.imageio import resize_rgb  # data engineer's module; imported lazily

    if not train:
        raise InputError("train split", "no training images to generate anomalies from")
    images = [resize_rgb(s.load_image(), image_size)
              for s in progress(train, desc=f"{desc}: loading", total=len(train))]
    return np.stack(images), [str(s.path) for s in train]


class BaselineGenerator:
    """Base of the local (structural) baselines: fit = remember the normal images; generate = ``make`` per item."""

    name: str = "baseline"

    def __init__(self, image_size: int = 256) -> None:
        self.image_size = int(image_size)
        self.images: np.ndarray | None = None
        self.sources: list[str] = []

    # --- protocol ------------------------------------------------------------------------
    def fit(self, train: list[Sample], run: RunDir | None = None) -> None:
        images, sources = load_train_images(train, self.image_size, self.name)
        self.fit_images(images, sources)

    def fit_images(self, images: np.ndarray | Sequence[np.ndarray], sources: Sequence[str] | None = None) -> None:
        """Fit from in-memory RGB images already at one square size (used by ``fit`` and by tests)."""
        arr = np.asarray(images)
        if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8 or len(arr) == 0:
            raise InputError(self.name, f"expected a non-empty (N, H, W, 3) uint8 image stack, got {arr.shape} "
                                        f"{arr.dtype}")
        if arr.shape[1] != arr.shape[2]:
            raise InputError(self.name, f"images must be square at the working resolution, got {arr.shape[1:3]}")
        if arr.shape[1] < 16:
            raise InputError(self.name, f"images of {arr.shape[1]} px are too small (need at least 16 px)")
        self.images = arr
        self.image_size = arr.shape[1]
        self.sources = list(sources) if sources is not None else [f"image-{i}" for i in range(len(arr))]
        if len(self.sources) != len(arr):
            raise InputError(self.name, f"{len(self.sources)} source names for {len(arr)} images")
        self._after_fit()

    def generate(self, n: int, rng: np.random.Generator) -> Iterator[Anomaly]:
        if self.images is None:
            raise InputError(self.name, "generator is not fitted; call fit(train) first")
        for _ in range(int(n)):
            index = int(rng.integers(len(self.images)))
            yield self.make(index, rng)

    # --- to implement --------------------------------------------------------------------
    def _after_fit(self) -> None:
        """Hook for baselines that prepare more state once the images are known (textures...)."""

    def make(self, index: int, rng: np.random.Generator) -> Anomaly:
        raise NotImplementedError

    # --- helpers -------------------------------------------------------------------------
    def _anomaly(self, image: np.ndarray, mask: np.ndarray, kind: str, index: int,
                 params: dict) -> Anomaly:
        params = {k: (float(v) if isinstance(v, (np.floating, float)) else v) for k, v in params.items()}
        return Anomaly(image=image, mask=mask.astype(bool), edit=EditSpec(kind=kind, target=[], classes=[],
                                                                          params=params),
                       source=self.sources[index], density=None, backend=self.name, kind="structural",
                       extra={"prompt": ""})
