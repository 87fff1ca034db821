"""Typed configuration of Stage III (CSDA detector): backbone, head, loss, training and calibration.

Saved as ``RUN/detector/config.yaml``; a checkpoint is only reused with the config that produced it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from comgen.config import ConfigBase
from comgen.detect.artifacts import finite_number
from comgen.detect.composition_branch import CompositionBranchConfig
from comgen.detect.composition_prior import PriorConfig
from comgen.detect.csda import HeadConfig
from comgen.detect.fusion import FUSION_CHOICES
from comgen.detect.global_branch import GlobalBranchConfig
from comgen.detect.loss import LossConfig
from comgen.detect.patch_memory import PatchMemoryConfig
from comgen.errors import ConfigError
from comgen.features.backbone import BackboneConfig
from comgen.features.memory import MemoryBankConfig
from comgen.rundir import is_plain_name

# Options that may change between an interrupted run and its ``--resume`` without breaking exactness.
RESUMABLE_CHANGES = ("epochs", "patience")


@dataclass
class DetectorConfig(ConfigBase):
    image_size: int = 256  # square working resolution (of one tile in tiled mode)
    # Tiled mode (detect/tiling.py), on when tiles > 1 or tile_scale > 0: the image keeps its aspect ratio, is scaled
    # so its shorter side spans `tiles` tiles (or by `tile_scale`, 1.0 = native pixels) and cut into overlapping
    # image_size tiles.
    tiles: int = 1
    tile_scale: float = 0.0
    tile_overlap: float = 0.25  # fraction of a tile that neighbouring tiles share (at least)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    prior: PriorConfig = field(default_factory=PriorConfig)  # composition prior branch
    composition: CompositionBranchConfig = field(default_factory=CompositionBranchConfig)  # learned class-map branch
    memory: PatchMemoryConfig = field(default_factory=PatchMemoryConfig)  # patch-memory branch (textures)
    # pooled features against a Gaussian of the normals' (relations across the whole image)
    global_branch: GlobalBranchConfig = field(default_factory=GlobalBranchConfig)
    # how the branches' validation z-scores combine: softplus (the sum of their soft positive parts, so a branch that
    # sees nothing adds about zero) | sum | max | one branch | auto (chosen on the validation split; it favours the
    # branches trained on generated anomalies). See fusion.py
    fusion: str = "softplus"
    # the largest validation z-score a branch enters the fusion with (0 = no cap); see fusion.py for why
    fusion_cap: float = 15.0
    # Raise each map near its peak (or clip it) so that its maximum ranks images as the score does
    # (evaluate/map_score.py); map_peak_width: how far below the peak, in the map's z units, the raise reaches
    map_carries_score: bool = True
    map_peak_width: float = 0.5
    # MemoryBankConfig overrides for the detector's bank; alignment window 1 (9 offsets) keeps predict fast
    bank: dict[str, Any] = field(default_factory=lambda: {"window": 1})
    backend: str = "compositional"  # which generated set to train on (RUN/generated/<backend>)
    epochs: int = 20
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    anomaly_ratio: float = 0.5  # fraction of generated anomalies in each batch
    rematch_every: int = 3  # epochs between re-matching the training references
    ref_pool: int = 6  # references are drawn at random from this many nearest neighbours (>= head.k)
    augment_variants: int = 1  # cached augmented copies per training image (besides the original)
    augment_strength: float = 0.1  # brightness/contrast jitter; shift = strength * 30 px at 256 px
    val_fraction: float = 0.1  # held-out part of train when the dataset has no validation split
    val_anomaly_fraction: float = 0.15  # held-out part of the generated anomalies for validation
    patience: int = 5  # early stopping on the validation loss
    threshold_quantile: float = 0.99  # pass/fail threshold = this quantile of validation normal scores
    train_full_res: bool = False  # pixel loss at full size (slow) instead of the decoder's stride-4 grid (soft targets)
    # How masks shrink to the decoder's stride-4 grid: max (a cell with any anomalous pixel is positive) | avg (soft).
    # Why max: a defect narrower than a cell became a weak soft target that the loss could ignore, and small parts'
    # maps never learned to localise (docs/experiments.md).
    target_pool: str = "max"
    cache_dtype: str = "float16"  # frozen-backbone feature cache precision (float16 | float32)
    mixed_precision: str = "no"  # Accelerate: no | fp16 | bf16
    seed: int = 0

    def __post_init__(self) -> None:
        self._check_sections()
        self._check_counts()
        self._check_rates()
        self._check_choices()
        if self.tiles > 1 and self.tile_scale > 0:
            raise ConfigError("detector.tile_scale", f"give tiles ({self.tiles}) or tile_scale ({self.tile_scale}), "
                                                     "not both")
        if self.ref_pool < self.head.k:
            raise ConfigError("detector.ref_pool", f"must be >= head.k ({self.head.k}), got {self.ref_pool}")

    def _check_counts(self) -> None:
        """Whole-number options: integers (not bools or floats) at or above their minimum."""
        minimum = {"image_size": 16, "tiles": 1, "epochs": 1, "batch_size": 1, "rematch_every": 1, "ref_pool": 1,
                   "augment_variants": 0, "patience": 1, "seed": 0}
        for name, low in minimum.items():
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                raise ConfigError(f"detector.{name}", f"must be an integer >= {low}, got {v!r}")

    def _check_rates(self) -> None:
        """Real-valued options: finite numbers in range (a NaN passes every plain comparison, so each is explicit)."""
        bounds: dict[str, dict[str, float]] = {
            "lr": {"gt": 0.0}, "weight_decay": {"ge": 0.0}, "anomaly_ratio": {"ge": 0.0, "lt": 1.0},
            "augment_strength": {"ge": 0.0, "le": 0.5}, "val_fraction": {"ge": 0.0, "lt": 1.0},
            "val_anomaly_fraction": {"ge": 0.0, "lt": 1.0}, "threshold_quantile": {"gt": 0.0, "le": 1.0},
            "tile_scale": {"ge": 0.0, "le": 8.0}, "tile_overlap": {"ge": 0.0, "le": 0.9},
            "map_peak_width": {"gt": 0.0, "le": 100.0}, "fusion_cap": {"ge": 0.0}}
        for name, b in bounds.items():
            finite_number(getattr(self, name), f"detector.{name}", error=ConfigError, **b)
        for section in ("head", "loss"):  # their own checks compare; here every number must also be finite
            for key, v in getattr(self, section).to_dict().items():
                if isinstance(v, float):
                    finite_number(v, f"detector.{section}.{key}", error=ConfigError)

    def _check_choices(self) -> None:
        choices = {"target_pool": ("avg", "max"), "cache_dtype": ("float16", "float32"),
                   "mixed_precision": ("no", "fp16", "bf16"), "fusion": FUSION_CHOICES}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"detector.{name}", f"must be one of {', '.join(allowed)}, "
                                                      f"got {getattr(self, name)!r}")
        if not is_plain_name(self.backend):
            raise ConfigError("detector.backend", f"must be a generated set's folder name, got {self.backend!r}")

    def _check_sections(self) -> None:
        """Sections of the right type (YAML mappings are converted before; a library caller may pass anything)."""
        for name, kind in (("backbone", BackboneConfig), ("head", HeadConfig), ("loss", LossConfig),
                           ("prior", PriorConfig), ("composition", CompositionBranchConfig),
                           ("memory", PatchMemoryConfig), ("global_branch", GlobalBranchConfig)):
            if not isinstance(getattr(self, name), kind):
                raise ConfigError(f"detector.{name}", f"must be a {kind.__name__}, got {getattr(self, name)!r}")
        if not isinstance(self.bank, dict):
            raise ConfigError("detector.bank", f"must be a mapping of MemoryBankConfig options, got {self.bank!r}")
        MemoryBankConfig.from_dict({**self.bank, "image_size": self.image_size, "k": self.head.k},
                                   where="detector.bank")

    def network_dict(self) -> dict[str, Any]:
        """The part of the config a trained network depends on (what predict must match)."""
        d = {"image_size": self.image_size, "tiles": self.tiles, "backbone": self.backbone.to_dict(),
             "head": self.head.to_dict()}
        if self.tiles > 1 or self.tile_scale > 0:  # the grid too (detectors of the old square grid are refused)
            d.update(tile_scale=self.tile_scale, tile_overlap=self.tile_overlap)
        return d

    def resume_dict(self) -> dict[str, Any]:
        """Everything except the options a ``--resume`` may change."""
        d = self.to_dict()
        for k in RESUMABLE_CHANGES:
            d.pop(k, None)
        return d
