"""Per-pixel features for Multi-Component Learning: frozen backbone layers (PCA-reduced) + blurred Lab colour.

Why: colour alone splits parts that differ only in texture poorly, and deep features alone blur thin parts;
ComAD-style k-means on both works on normal images alone. The deep features are projected with PCA *before*
upsampling (both are linear, so the result is identical and 8x cheaper), then each block (deep, Lab) is
standardised with one scale and weighted, so that ``color_weight`` / ``feature_weight`` say how much each block
counts while Lab distances stay perceptual (per-column scaling blew chroma noise up and split the background;
see comgen.components.learner for the measurements). A planar lighting ramp is divided out first (``flatfield``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, ClassVar

import cv2
import numpy as np

from comgen.config import ConfigBase
from comgen.errors import ConfigError, InputError


@dataclass
class LearnerConfig(ConfigBase):
    """Options of the CPU component learner (saved beside the component model)."""

    RETIRED_OPTIONS: ClassVar[dict[str, Any]] = {"split_together_of": "either"}
    image_size: int = 256
    k: int = 0  # number of classes incl. background; 0 = choose automatically in [k_min, k_max]
    k_min: int = 3
    k_max: int = 10
    k_select: str = "distinct"  # distinct | balanced (per-cluster-averaged silhouette) | silhouette | bic
    k_distinct_de: float = 15.0  # distinct: the largest K whose cluster mean colours are all this far apart (Lab)
    use_backbone: bool = True
    backbone: str = "tf_efficientnet_lite0"
    backbone_weights: str = "auto"  # auto | random | <path>
    backbone_layers: tuple[int, ...] = (1,)  # layer 1 only: layer 2 (stride 16) blurs thin parts away
    feature_dims: int = 8  # PCA dimensions kept from the backbone features
    feature_weight: float = 1.0
    color_weight: float = 2.0
    color_norm: str = "median"  # none | median: subtract each image's median Lab (removes global lighting shifts)
    flatfield: str = "border"  # none | border: divide out a planar lighting ramp fitted on the image border
    split_delta_e: float = 30.0  # split a cluster whose pixels form two hues this far apart (Lab a,b); 0 = off
    split_silhouette: float = 0.7  # ... and that separate this cleanly
    split_hue_deg: float = 0.0  # ... and whose hues differ this much, unless one half is near grey (shading differs
    # in saturation along one hue); 0 = off. With a lower split_silhouette it splits thin parts of two hues
    split_min_share: float = 0.002  # ... each holding at least this share of the sampled pixels
    # ... unless the halves share few of the images showing either half: then they are one part in two colours
    scale_mode: str = "block"  # column | block: standardise each feature column, or each block jointly
    blur: float = 1.0  # Gaussian sigma (px at 256 px, scaled with image_size) before colour sampling
    pixels_per_image: int = 1500
    max_fit_pixels: int = 40000
    select_pixels: int = 12000  # subsample used to choose K
    smooth: int = 5  # majority-filter kernel at 256 px (scaled), 0 = off
    min_area: float = 0.0005  # smallest instance, as a fraction of the image area
    seed: int = 0
    batch_size: int = 8
    # instance stage (comgen.components.instances): split colour classes into part types by instance shape
    instances: bool = False
    instance_surface_share: float = 0.05  # a class whose largest region covers this share of the image is a surface
    instance_blob_noise: float = 8.0  # low-contrast parts: deviation from the background model, in noise MADs
    instance_blob_min_de: float = 2.0  # ... and at least this many Lab units
    instance_blob_sigma: float = 12.0  # reach of the background model (px at 256 px)
    instance_silhouette: float = 0.5  # a group's instances are split only when the clusters separate this cleanly
    instance_k_max: int = 4  # most part types per colour class
    instance_min_presence: float = 0.3  # a part type shows in at least this share of the normal images
    instance_fit_images: int = 64  # training images the stage is fitted on (bounds memory)
    instance_shape_modes: bool = True  # split a class into part types that stand out as tight modes of their shape
    instance_surface_pieces: bool = True  # small regions of a surface's class lying apart from it are parts
    # three options, off by default (docs/experiments.md says why)
    instance_blob_hysteresis: float = 0.0  # a faint part reaches out to this share of its peak deviation (0.5)
    instance_fringe_px: float = 0.0  # a part of the background's colour takes its fringe up to this width (6 px)
    instance_islands_apart: bool = False  # parts of the background's colour on a fixture are a group of their own

    def __post_init__(self) -> None:
        if self.image_size < 16:
            raise ConfigError("learner.image_size", f"must be >= 16, got {self.image_size}")
        if self.k and self.k < 2:
            raise ConfigError("learner.k", f"needs at least 2 classes (background + one part), got {self.k}")
        if self.k_min < 2 or self.k_max < self.k_min:
            raise ConfigError("learner.k_min/k_max", f"need 2 <= k_min <= k_max, got {self.k_min}..{self.k_max}")
        if self.color_norm not in ("none", "median"):
            raise ConfigError("learner.color_norm", f"must be none or median, got {self.color_norm!r}")
        if self.flatfield not in ("none", "border"):
            raise ConfigError("learner.flatfield", f"must be none or border, got {self.flatfield!r}")
        if self.k_select not in ("distinct", "silhouette", "balanced", "bic"):
            raise ConfigError("learner.k_select",
                              f"must be distinct, silhouette, balanced or bic, got {self.k_select!r}")
        if self.instance_k_max < 1 or not 0 < self.instance_surface_share < 1:
            raise ConfigError("learner.instance_*", "need instance_k_max >= 1 and 0 < instance_surface_share < 1")
        if not 0 <= self.instance_blob_hysteresis < 1 or self.instance_fringe_px < 0:
            raise ConfigError("learner.instance_*",
                              "need 0 <= instance_blob_hysteresis < 1 and instance_fringe_px >= 0")
        if not 0 <= self.split_hue_deg <= 180:
            raise ConfigError("learner.split_hue_deg", f"must be within 0..180 degrees, got {self.split_hue_deg}")
        if self.scale_mode not in ("column", "block"):
            raise ConfigError("learner.scale_mode", f"must be column or block, got {self.scale_mode!r}")

    def portable_dict(self) -> dict[str, Any]:
        """``to_dict`` less the instance stage's off-by-default options where they are off, so that a bundle with
        them off reads in runtimes that predate them (``from_dict`` fills them back in)."""
        from comgen.components.instances import OFF_OPTIONS

        return {k: v for k, v in self.to_dict().items()
                if not (k.startswith("instance_") and OFF_OPTIONS.get(k[len("instance_"):], object()) == v)}

    def instance_options(self):
        """The instance stage's settings."""
        from comgen.components.instances import InstanceOptions

        return InstanceOptions(surface_share=self.instance_surface_share, blob_noise=self.instance_blob_noise,
                               blob_min_de=self.instance_blob_min_de, blob_sigma=self.instance_blob_sigma,
                               min_area=self.min_area,
                               k_max=self.instance_k_max, silhouette=self.instance_silhouette,
                               min_presence=self.instance_min_presence, shape_modes=self.instance_shape_modes,
                               surface_pieces=self.instance_surface_pieces,
                               blob_hysteresis=self.instance_blob_hysteresis, fringe_px=self.instance_fringe_px,
                               islands_apart=self.instance_islands_apart)

    def scaled(self, value: float) -> float:
        """A length given at 256 px, scaled to ``image_size``."""
        return value * self.image_size / 256.0


@dataclass
class FeatureTransform:
    """The fitted part of the featuriser: PCA of deep features and the standardise-and-weight step."""

    pca_mean: np.ndarray | None = None  # [C]
    pca_components: np.ndarray | None = None  # [C, d]
    mean: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # [D]
    scale: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # [D] = weight / std


def resize_square(images: np.ndarray, size: int) -> np.ndarray:
    """Resize a stack [N,H,W,3] uint8 to the square working resolution (area filter when shrinking)."""
    if images.shape[1:3] == (size, size):
        return images
    interp = cv2.INTER_AREA if images.shape[1] > size else cv2.INTER_LINEAR
    return np.stack([cv2.resize(im, (size, size), interpolation=interp) for im in images])


def check_images(images: np.ndarray, where: str = "images") -> np.ndarray:
    images = np.asarray(images)
    if images.ndim == 3 and images.shape[-1] == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise InputError(where, f"expected uint8 images [N,H,W,3], got {images.dtype} {images.shape}")
    if len(images) == 0:
        raise InputError(where, "no images")
    return images


def flatfield(image: np.ndarray, band: float = 1 / 24) -> np.ndarray:
    """Divide out a planar multiplicative lighting ramp, fitted to log-brightness on the image border.

    Why: a lighting gradient across the image makes the largest class (the background) drift in colour from
    one side to the other; the K-selection score then rates "background split in two" almost as well as
    "thin separators get their own class". The border is (almost) all background in inspection images, so the
    ramp seen there is the lighting, not the content; a trimmed least-squares refit ignores the few border
    pixels that belong to parts. Input/output float RGB in [0, 1].
    """
    s_h, s_w = image.shape[:2]
    b = max(2, int(round(band * min(s_h, s_w))))
    border, a, ys, xs = _border_design(s_h, s_w, b)
    v = np.log(image[border].mean(-1) + 1e-3)  # only the border enters the fit
    keep = np.ones(len(v), bool)
    for _ in range(2):  # trimmed refit: parts touching the border are outliers
        if keep.sum() < 16:
            return image
        coef = np.linalg.lstsq(a[keep], v[keep], rcond=None)[0]
        r = np.abs(v - a @ coef)
        keep = r <= max(2.5 * float(np.median(r)), 1e-3)
    # exp(-(c1 x + c2 y)) = exp(-c2 y) exp(-c1 x): a separable ramp, two short vectors instead of a full-size exp
    ramp = (np.exp(-coef[2] * ys)[:, None] * np.exp(-coef[1] * xs)[None, :]).astype(np.float32)
    return image * ramp[..., None]


@functools.lru_cache(maxsize=8)
def _border_design(s_h: int, s_w: int, b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Border mask, the [n,3] design matrix (1, x, y) of its pixels, and the centred y / x coordinates."""
    ys = np.arange(s_h, dtype=np.float32) / s_h - 0.5
    xs = np.arange(s_w, dtype=np.float32) / s_w - 0.5
    border = np.ones((s_h, s_w), bool)
    border[b:-b, b:-b] = False
    yy, xx = np.broadcast_to(ys[:, None], (s_h, s_w)), np.broadcast_to(xs[None, :], (s_h, s_w))
    a = np.stack([np.ones(int(border.sum()), np.float32), xx[border], yy[border]], 1)
    for arr in (border, a, ys, xs):
        arr.flags.writeable = False  # shared by every call through the cache
    return border, a, ys, xs


class PixelFeaturizer:
    """Computes per-pixel raw features (deep + Lab) for batches of working-resolution images."""

    def __init__(self, cfg: LearnerConfig, backbone=None) -> None:
        self.cfg = cfg
        self.backbone = backbone

    def lab(self, images: np.ndarray) -> np.ndarray:
        """Blurred Lab colour [N,S,S,3]; the blur suppresses sensor noise that would split classes."""
        sigma = self.cfg.scaled(self.cfg.blur)
        out = []
        for im in images:
            f = im.astype(np.float32) / 255.0
            if self.cfg.flatfield == "border":
                f = flatfield(f)
            if sigma > 0.2:
                f = cv2.GaussianBlur(f, (0, 0), sigma)
            lab = cv2.cvtColor(f, cv2.COLOR_RGB2LAB)
            if self.cfg.color_norm == "median":
                lab = lab - np.median(lab[::4, ::4].reshape(-1, 3), 0)
            out.append(lab)
        return np.stack(out)

    def deep(self, images: np.ndarray) -> np.ndarray | None:
        """Backbone features of the chosen layers, all resized to the finest layer's grid: [N,h,w,C]."""
        if self.backbone is None:
            return None
        import torch
        import torch.nn.functional as F

        x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
        with torch.inference_mode():
            feats = self.backbone(x)
            size = feats[0].shape[-2:]
            feats = [f if f.shape[-2:] == size else F.interpolate(f, size=size, mode="bilinear", align_corners=False)
                     for f in feats]
            out = torch.cat(feats, 1).permute(0, 2, 3, 1).contiguous().numpy()
        return out.astype(np.float32)


def upsample(grid: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of [N,h,w,d] feature grids to [N,size,size,d]."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(grid)).permute(0, 3, 1, 2)
    t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)
    return t.permute(0, 2, 3, 1).contiguous().numpy()


def transform_pixels(tf: FeatureTransform, lab: np.ndarray, deep_proj: np.ndarray | None) -> np.ndarray:
    """Concatenate (projected deep, Lab) and apply the fitted standardise-and-weight step. Shapes [...,D]."""
    parts = [deep_proj] if deep_proj is not None else []
    parts.append(lab)
    x = np.concatenate(parts, -1) if len(parts) > 1 else lab.astype(np.float32)
    x -= tf.mean.astype(np.float32)  # in place and float32: a float64 mean would double the cost of this step
    x *= tf.scale.astype(np.float32)
    return x


def project_deep(tf: FeatureTransform, deep: np.ndarray | None) -> np.ndarray | None:
    if deep is None or tf.pca_components is None:
        return None
    return ((deep - tf.pca_mean) @ tf.pca_components).astype(np.float32)


def build_backbone_for(cfg: LearnerConfig):
    """The frozen Stage II backbone with the learner's layers, or None when ``use_backbone`` is off."""
    if not cfg.use_backbone:
        return None
    from comgen.features.backbone import BackboneConfig, build_backbone

    bb = build_backbone(BackboneConfig(name=cfg.backbone, layers=tuple(cfg.backbone_layers),
                                       weights=cfg.backbone_weights))
    bb.eval()
    return bb
