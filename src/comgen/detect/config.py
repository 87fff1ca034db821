"""Typed configuration of Stage III (CSDA detector): backbone, head, loss, training and calibration.

Saved as ``RUN/detector/config.yaml``; a checkpoint is only reused with the config that produced it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from comgen.config import ConfigBase
from comgen.detect.composition_prior import PriorConfig
from comgen.detect.csda import HeadConfig
from comgen.detect.loss import LossConfig
from comgen.features.backbone import BackboneConfig

# Options that may change between an interrupted run and its ``--resume`` without breaking exactness.
RESUMABLE_CHANGES = ("epochs", "patience")


@dataclass
class DetectorConfig(ConfigBase):
    image_size: int = 256  # square working resolution (of one tile in tiled mode)
    tiles: int = 1  # tiled mode: images run at (tiles*image_size)^2 as tiles x tiles working-size tiles
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    prior: PriorConfig = field(default_factory=PriorConfig)  # composition prior fused into the image score
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
        if self.image_size < 16 or self.tiles < 1:
            raise ValueError("image_size must be >= 16 and tiles >= 1")
        if self.epochs < 1 or self.batch_size < 1 or self.rematch_every < 1 or self.patience < 1:
            raise ValueError("epochs, batch_size, rematch_every and patience must be >= 1")
        if not 0.0 <= self.anomaly_ratio < 1.0:
            raise ValueError("anomaly_ratio must be in [0, 1)")
        if self.ref_pool < self.head.k:
            raise ValueError(f"ref_pool ({self.ref_pool}) must be >= head.k ({self.head.k})")
        if not 0.0 < self.threshold_quantile <= 1.0:
            raise ValueError("threshold_quantile must be in (0, 1]")
        if self.target_pool not in ("avg", "max"):
            raise ValueError("target_pool must be avg or max")
        if self.cache_dtype not in ("float16", "float32"):
            raise ValueError("cache_dtype must be float16 or float32")
        if self.augment_variants < 0 or not 0.0 <= self.augment_strength <= 0.5:
            raise ValueError("augment_variants must be >= 0 and augment_strength in [0, 0.5]")

    def network_dict(self) -> dict[str, Any]:
        """The part of the config a trained network depends on (what predict must match)."""
        return {"image_size": self.image_size, "tiles": self.tiles, "backbone": self.backbone.to_dict(),
                "head": self.head.to_dict()}

    def resume_dict(self) -> dict[str, Any]:
        """Everything except the options a ``--resume`` may change."""
        d = self.to_dict()
        for k in RESUMABLE_CHANGES:
            d.pop(k, None)
        return d
