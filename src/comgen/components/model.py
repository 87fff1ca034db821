"""The learned component model: segments images into component classes and describes their compositions.

Why a separate artefact: every later stage (edits, Low-Density Sampling, the SD back-end's token binding,
residual gating) needs the same class map, so it is learned once by ``comgen learn`` and saved as
``model.safetensors`` (centroids, PCA, scalers) + ``model.json`` (metadata) + ``config.yaml`` (LearnerConfig).
Class 0 is always the background; foreground classes 1..K-1 are named by the tokens ``<c1>``..``<c{K-1}>``.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from comgen.components.composition import compose as compose_map
from comgen.components.composition import min_area_pixels
from comgen.components.features import (
    FeatureTransform,
    LearnerConfig,
    PixelFeaturizer,
    build_backbone_for,
    check_images,
    project_deep,
    resize_square,
    transform_pixels,
    upsample,
)
from comgen.components.instances import InstanceStage
from comgen.errors import ArtifactError, InputError
from comgen.io import atomic_path, atomic_write_json
from comgen.records import Composition

FORMAT_VERSION = 1


def majority_filter(labels: np.ndarray, num_classes: int, kernel: int) -> np.ndarray:
    """Replace each label by the most frequent label in a kernel x kernel window (removes speckle)."""
    if kernel < 3:
        return labels
    votes = np.stack([cv2.boxFilter((labels == k).astype(np.float32), -1, (kernel, kernel))
                      for k in range(num_classes)], -1)
    return votes.argmax(-1).astype(labels.dtype)


class ComponentModel:
    """K component classes (k-means centroids in a weighted deep+colour feature space)."""

    def __init__(self, cfg: LearnerConfig, centroids: np.ndarray, transform: FeatureTransform,
                 backbone_source: str = "none", meta: dict[str, Any] | None = None, backbone=None,
                 instance_stage: InstanceStage | None = None) -> None:
        self.cfg = cfg
        self.instance_stage = instance_stage
        self.centroids = np.asarray(centroids, np.float32)
        self.transform = transform
        self.backbone_source = backbone_source
        self.meta = dict(meta or {})
        self._backbone = backbone

    # --- identity -------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        """Number of classes including the background."""
        return self.instance_stage.num_classes if self.instance_stage is not None else self.pixel_classes

    @property
    def pixel_classes(self) -> int:
        """Number of colour classes of the pixel stage (the final classes unless the instance stage splits them)."""
        return int(self.centroids.shape[0])

    @property
    def background(self) -> int:
        return 0

    @property
    def tokens(self) -> list[str]:
        """Tokens of the foreground classes, ``tokens[i]`` names class ``i + 1``."""
        return [f"<c{k}>" for k in range(1, self.num_classes)]

    @property
    def min_area_px(self) -> int:
        return min_area_pixels(self.cfg.min_area, self.cfg.image_size, self.cfg.image_size)

    # --- inference ------------------------------------------------------------------------
    def _featurizer(self) -> PixelFeaturizer:
        if self._backbone is None and self.cfg.use_backbone:
            self._backbone = build_backbone_for(self.cfg)
            src = getattr(self._backbone, "source", "unknown")
            if self.backbone_source not in ("unknown", src):
                raise ArtifactError(self.meta.get("dir", "component model"),
                                    f"learned with backbone weights {self.backbone_source} but {src} loaded now")
            want = self.meta.get("backbone_fingerprint")
            if want and hasattr(self._backbone, "fingerprint") and self._backbone.fingerprint() != want:
                raise ArtifactError(self.meta.get("dir", "component model"),
                                    "backbone weights differ from the ones the components were learned with")
        return PixelFeaturizer(self.cfg, self._backbone)

    def shared_feature_index(self, backbone: Any, image_size: int) -> int | None:
        """Where this model's deep features sit in ``backbone``'s output list at ``image_size``, if anywhere.

        Why: the detector already ran the same frozen backbone on the same images; when the weights, the layer
        and the working size match, the composition prior segments from those features instead of a second
        forward pass. None when anything differs (the prior then runs its own backbone).
        """
        want = self.meta.get("backbone_fingerprint")
        layers = tuple(getattr(getattr(backbone, "cfg", None), "layers", ()))
        if (not self.cfg.use_backbone or len(self.cfg.backbone_layers) != 1 or image_size != self.cfg.image_size
                or getattr(backbone, "name", None) != self.cfg.backbone or not want
                or not hasattr(backbone, "fingerprint") or backbone.fingerprint() != want):
            return None
        layer = self.cfg.backbone_layers[0]
        return layers.index(layer) if layer in layers else None

    def pixel_features(self, images: np.ndarray, deep: np.ndarray | None = None) -> np.ndarray:
        """Transformed per-pixel features [N,S,S,D] of working-resolution images.

        ``deep``: the learner's backbone features [N,h,w,C] of these images when the caller already has them.
        """
        fz = self._featurizer() if deep is None else PixelFeaturizer(self.cfg)
        lab = fz.lab(images)
        deep = project_deep(self.transform, fz.deep(images) if deep is None else deep)
        if deep is not None:
            deep = upsample(deep, images.shape[1])
        return transform_pixels(self.transform, lab, deep)

    def assign(self, feats: np.ndarray) -> np.ndarray:
        """Nearest centroid per pixel (squared L2 via one matrix product)."""
        flat = feats.reshape(-1, feats.shape[-1])
        c = self.centroids
        d = (c * c).sum(1)[None] - 2.0 * flat @ c.T
        return d.argmin(1).reshape(feats.shape[:-1]).astype(np.uint8)

    def assign_images(self, images: np.ndarray, deep: np.ndarray | None = None) -> np.ndarray:
        """``assign(pixel_features(images, deep))`` without the full-resolution feature map.

        Why: standardising and the dot products with the centroids are linear, and so is bilinear upsampling, so
        the deep part of every centroid score is computed on the backbone's grid and only the K scores are
        upsampled, instead of D feature channels followed by a [pixels, D] matrix product at full resolution.
        Equal to the two-step form up to float rounding (tested).
        """
        return self._assign_with_features(images, deep)[0]

    def _assign_with_features(self, images: np.ndarray, deep: np.ndarray | None = None
                              ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """``assign_images``'s labels, with the Lab colour and projected deep grid it computed on the way."""
        fz = self._featurizer() if deep is None else PixelFeaturizer(self.cfg)
        tf, c = self.transform, self.centroids.astype(np.float32)
        scale = tf.scale.astype(np.float32)
        weights = scale[:, None] * c.T  # [D,K]: x.c = v @ weights + bias, v = raw features
        bias = -(tf.mean.astype(np.float32) * scale) @ c.T
        lab = fz.lab(images)
        scores = lab @ weights[-lab.shape[-1]:] + bias  # Lab is the last block of the feature vector
        deep = project_deep(tf, fz.deep(images) if deep is None else deep)
        if deep is not None:
            scores += upsample(deep @ weights[:deep.shape[-1]], images.shape[1])
        d = (c * c).sum(1) - 2.0 * scores
        return d.argmin(-1).astype(np.uint8), lab, deep

    def segment_working(self, images: np.ndarray, deep: np.ndarray | None = None) -> np.ndarray:
        """Class maps [N,S,S] at the working resolution (no resizing back).

        ``deep``: precomputed backbone features [N,h,w,C] (see ``shared_feature_index``); the images must then
        already be at the working size.
        """
        return self.segment_views(images, deep)[0]

    def segment_views(self, images: np.ndarray, deep: np.ndarray | None = None,
                      twins: tuple[ComponentModel, ...] = ()) -> list[np.ndarray]:
        """``segment_working`` for this model and for each twin, from one pass of the shared pixel stage.

        Why: a twin (``learner.counterpart``) has the same colour classes and differs only in its instance stage,
        so the colour assignment, the only costly step they share, runs once for all of them.
        """
        images = check_images(images)
        if deep is not None and (images.shape[1:3] != (self.cfg.image_size,) * 2 or len(deep) != len(images)):
            raise InputError("segment", f"precomputed features need {len(images)} images at the working size "
                                        f"{self.cfg.image_size}, got {images.shape[1:3]} and {len(deep)} feature maps")
        for twin in twins:
            if not self.shares_pixel_stage(twin):
                raise ValueError("segment_views: a twin must share this model's pixel stage")
        images = resize_square(images, self.cfg.image_size)
        views = (self, *twins)
        out = [np.empty(images.shape[:3], np.uint8) for _ in views]
        bs = max(1, self.cfg.batch_size)
        for i in range(0, len(images), bs):
            maps, lab, up = self.pixel_stage(images[i:i + bs], None if deep is None else deep[i:i + bs])
            for view, dest in zip(views, out):
                dest[i:i + bs] = view.refine(maps, lab, up)
        return out

    def refine(self, maps: np.ndarray, lab: np.ndarray, up: np.ndarray | None) -> np.ndarray:
        """The instance step on ``pixel_stage``'s output (the colour-class maps themselves without a stage)."""
        if self.instance_stage is None:
            return maps
        return np.stack([self.instance_stage.refine(m, lab[j], None if up is None else up[j])
                         for j, m in enumerate(maps)])

    def shares_pixel_stage(self, other: ComponentModel) -> bool:
        """Whether ``other`` assigns pixels exactly as this model does (same colour classes, features and
        filter), so that only the instance stage may differ."""
        if other is self:
            return True
        same_cfg = replace(other.cfg, instances=self.cfg.instances) == self.cfg
        mine, theirs = self.transform, other.transform
        arrays = [(self.centroids, other.centroids), (mine.mean, theirs.mean), (mine.scale, theirs.scale),
                  (mine.pca_mean, theirs.pca_mean), (mine.pca_components, theirs.pca_components)]
        return (same_cfg and self.backbone_source == other.backbone_source
                and all((a is None and b is None) or (a is not None and b is not None and np.array_equal(a, b))
                        for a, b in arrays))

    def pixel_stage(self, images: np.ndarray, deep: np.ndarray | None = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Majority-filtered colour-class maps of one batch of working-size images, with the Lab colour and the
        projected deep features upsampled to the working size (what the instance stage reads)."""
        kernel = int(round(self.cfg.scaled(self.cfg.smooth))) | 1 if self.cfg.smooth else 0
        labels, lab, proj = self._assign_with_features(images, deep)
        maps = np.stack([majority_filter(m, self.pixel_classes, kernel) for m in labels])
        return maps, lab, None if proj is None else upsample(proj, images.shape[1])

    def segment(self, images: np.ndarray, deep: np.ndarray | None = None) -> np.ndarray:
        """Class maps [N,H,W] (values 0..K-1, 0 = background) at the images' own resolution."""
        images = check_images(images)
        h, w = images.shape[1:3]
        maps = self.segment_working(images, deep)
        if (h, w) != maps.shape[1:]:
            maps = np.stack([cv2.resize(m, (w, h), interpolation=cv2.INTER_NEAREST) for m in maps])
        return maps

    def compose(self, image: np.ndarray, image_id: str, class_map: np.ndarray | None = None) -> Composition:
        """Components (instances with mask, centroid, area, Lab colour, bbox, orientation) of one image."""
        image = check_images(image)[0]
        cm = self.segment(image[None])[0] if class_map is None else class_map
        h, w = image.shape[:2]
        return compose_map(cm, image, image_id, background=self.background,
                           min_area=min_area_pixels(self.cfg.min_area, h, w))

    # --- persistence ----------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {"centroids": self.centroids, "mean": self.transform.mean.astype(np.float32),
                   "scale": self.transform.scale.astype(np.float32)}
        if self.transform.pca_components is not None:
            tensors["pca_mean"] = self.transform.pca_mean.astype(np.float32)
            tensors["pca_components"] = self.transform.pca_components.astype(np.float32)
        meta = {k: v for k, v in self.meta.items() if k != "dir"}
        if self.instance_stage is not None:
            arrays, meta["instance_stage"] = self.instance_stage.to_arrays()
            tensors.update(arrays)
        with atomic_path(directory / "model.safetensors") as tmp:
            save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp))
        self.cfg.save(directory / "config.yaml")
        atomic_write_json(directory / "model.json", {
            "format": FORMAT_VERSION, "num_classes": self.num_classes, "background": self.background,
            "tokens": self.tokens, "backbone": self.cfg.backbone if self.cfg.use_backbone else None,
            "backbone_source": self.backbone_source, "config_hash": self.cfg.hash(), **meta})
        return directory

    @classmethod
    def load(cls, directory: str | Path, backbone=None) -> ComponentModel:
        directory = Path(directory)
        for name in ("model.safetensors", "model.json", "config.yaml"):
            if not (directory / name).is_file():
                raise ArtifactError(directory / name, "missing; run `comgen learn` first")
        try:
            meta = json.loads((directory / "model.json").read_text())
        except ValueError:  # not UTF-8 text, or not JSON
            raise ArtifactError(directory / "model.json", "not valid JSON") from None
        if meta.get("format") != FORMAT_VERSION:
            raise ArtifactError(directory / "model.json", f"unsupported format {meta.get('format')!r}")
        cfg = LearnerConfig.load(directory / "config.yaml")
        try:
            t = load_file(str(directory / "model.safetensors"))
        except (SafetensorError, OSError, ValueError) as exc:
            raise ArtifactError(directory / "model.safetensors", f"unreadable ({exc})") from None
        stage = None
        if meta.get("instance_stage") is not None:
            try:
                stage = InstanceStage.from_arrays(t, meta.pop("instance_stage"))
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise ArtifactError(directory / "model.safetensors",
                                    f"instance stage missing or inconsistent with model.json ({exc})") from None
        k = stage.num_classes if stage is not None else t["centroids"].shape[0] if "centroids" in t else None
        if "centroids" not in t or k != meta.get("num_classes"):
            raise ArtifactError(directory / "model.safetensors", "centroids missing or inconsistent with model.json")
        tf = FeatureTransform(pca_mean=t.get("pca_mean"), pca_components=t.get("pca_components"),
                              mean=t["mean"], scale=t["scale"])
        if cfg.use_backbone != (tf.pca_components is not None):
            raise ArtifactError(directory / "model.safetensors", "backbone projection does not match config.yaml")
        meta["dir"] = str(directory)
        return cls(cfg, t["centroids"], tf, backbone_source=meta.get("backbone_source", "unknown"),
                   meta={k: v for k, v in meta.items() if k not in
                         ("format", "num_classes", "background", "tokens", "backbone", "backbone_source")},
                   backbone=backbone, instance_stage=stage)
