"""The CSDA training loss: focal + Dice + smooth-L1 on the pixel map, BCE on the image logit.

Why four terms: focal keeps the rare anomalous pixels from drowning in background, Dice rewards the mask's
overall overlap (segmentation quality, independent of region size), smooth-L1 ties the map's probabilities to the
(possibly soft) target values, and BCE trains the image decision, which count/layout errors need.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from comgen.config import ConfigBase


@dataclass
class LossConfig(ConfigBase):
    focal: float = 1.0
    dice: float = 1.0
    smooth_l1: float = 1.0
    bce: float = 1.0
    focal_gamma: float = 2.0
    focal_alpha: float = 0.75  # weight of the positive (anomalous) pixels; < 0 disables alpha balancing
    l1_beta: float = 0.1  # smooth-L1 transition point (in probability units)
    dice_eps: float = 1.0

    def __post_init__(self) -> None:
        if min(self.focal, self.dice, self.smooth_l1, self.bce) < 0:
            raise ValueError("loss weights must be >= 0")
        if self.focal_gamma < 0 or self.l1_beta <= 0 or self.dice_eps <= 0:
            raise ValueError("loss.focal_gamma must be >= 0, loss.l1_beta and loss.dice_eps > 0")


def focal_loss(logits: Tensor, target: Tensor, gamma: float = 2.0, alpha: float = 0.75) -> Tensor:
    """Mean sigmoid focal loss (Lin et al.) over all pixels; ``target`` may be soft in [0,1]."""
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p = torch.sigmoid(logits)
    p_t = p * target + (1 - p) * (1 - target)
    loss = ce * (1 - p_t).pow(gamma)
    if alpha >= 0:
        loss = (alpha * target + (1 - alpha) * (1 - target)) * loss
    return loss.mean()


def dice_loss(logits: Tensor, target: Tensor, eps: float = 1.0) -> Tensor:
    """Soft Dice loss averaged over the images that contain anomalous pixels (0 when none do).

    Normal images are left to the focal/L1 terms: Dice of an empty target is undefined and would only push the
    map to zero, which those terms already do.
    """
    p = torch.sigmoid(logits).flatten(1)
    t = target.flatten(1)
    has = t.sum(dim=1) > 0
    if not bool(has.any()):
        return logits.sum() * 0.0
    inter = (p * t).sum(dim=1)
    dice = (2 * inter + eps) / (p.sum(dim=1) + t.sum(dim=1) + eps)
    return (1 - dice)[has].mean()


def smooth_l1_map_loss(logits: Tensor, target: Tensor, beta: float = 0.1) -> Tensor:
    return F.smooth_l1_loss(torch.sigmoid(logits), target, beta=beta)


def image_bce_loss(image_logit: Tensor, label: Tensor) -> Tensor:
    return F.binary_cross_entropy_with_logits(image_logit, label)


def csda_loss(map_logits: Tensor, image_logit: Tensor, target: Tensor, label: Tensor,
              cfg: LossConfig) -> tuple[Tensor, dict[str, float]]:
    """Weighted sum of the four terms; returns (total, {term: value}) for logging.

    map_logits/target: [B,1,H,W] (target in [0,1]); image_logit/label: [B].
    """
    if target.shape != map_logits.shape:
        raise ValueError(f"target shape {tuple(target.shape)} != map shape {tuple(map_logits.shape)}")
    terms = {
        "focal": focal_loss(map_logits, target, cfg.focal_gamma, cfg.focal_alpha),
        "dice": dice_loss(map_logits, target, cfg.dice_eps),
        "smooth_l1": smooth_l1_map_loss(map_logits, target, cfg.l1_beta),
        "bce": image_bce_loss(image_logit, label),
    }
    weights = {"focal": cfg.focal, "dice": cfg.dice, "smooth_l1": cfg.smooth_l1, "bce": cfg.bce}
    total = sum(weights[k] * v for k, v in terms.items())
    return total, {k: float(v.detach()) for k, v in terms.items()}
