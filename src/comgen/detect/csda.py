"""CSDA: Cross-Scale Difference Aggregation (docs/design.md, "III. Detect").

Why this shape: logical anomalies are differences *with respect to normal references*, so every scale compares
the image's features with its k RNA references (already aligned patch-wise by the memory bank), keeps the
difference plus a compressed copy of the image features (what is there, not only what differs), and fuses scales
top-down with the residual maps as spatial attention. A global head on pooled differences sees the whole image,
because count errors at random layouts cannot be judged from one patch.

The head is deliberately light (1x1 laterals, one 3x3 per level) so prediction costs little more than the
frozen backbone's forward pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from comgen.config import ConfigBase


@dataclass
class HeadConfig(ConfigBase):
    """Size and behaviour of the trainable CSDA head (the backbone is configured separately)."""

    k: int = 3  # references per image
    dim: int = 32  # channels of the fused pyramid
    img_dim: int = 16  # channels of the 1x1-compressed image features per scale
    reduce: str = "min+mean"  # how the k reference differences are reduced: min | mean | min+mean
    guidance: bool = True  # residual maps as spatial attention in the top-down fusion
    topk_frac: float = 0.01  # fraction of map pixels averaged into the map-based image score
    smooth: int = 3  # box-filter size (decoder pixels) applied to the map before the top-k (odd)

    def __post_init__(self) -> None:
        if self.reduce not in ("min", "mean", "min+mean"):
            raise ValueError(f"head.reduce must be min, mean or min+mean, not {self.reduce!r}")
        if self.k < 1 or self.dim < 4 or self.img_dim < 1:
            raise ValueError("head.k must be >= 1, head.dim >= 4, head.img_dim >= 1")
        if not 0.0 < self.topk_frac <= 1.0 or self.smooth < 1 or self.smooth % 2 == 0:
            raise ValueError("head.topk_frac must be in (0, 1] and head.smooth a positive odd number")


# Initial bias of the pixel logits: sigmoid(bias) = 0.01, the rare-positive prior of focal loss (Lin et al.).
# Why: from a zero bias every normal pixel starts with a large loss, and the first steps spend the gradient on
# pulling the whole map down, so a short training left the maps ranked backwards (docs/experiments.md).
MAP_PRIOR_BIAS = -math.log(99.0)


def relative_residual(f: Tensor, diff: Tensor) -> Tensor:
    """min over the k references of ||f - a_k||^2 / ||f||^2 per patch: [B,C,h,w], [B,k,C,h,w] -> [B,1,h,w].

    Why relative: scale-free across layers and backbones, so one learned affine turns it into attention; and it
    reuses the difference tensor the head needs anyway (one pass over the k references, the costly part).
    """
    num = diff.pow(2).sum(dim=2).amin(dim=1, keepdim=True)
    return num / (f.pow(2).sum(dim=1, keepdim=True) + 1e-6)


def channels_last(x: Tensor) -> Tensor:
    """oneDNN runs the head's convolutions faster on channels-last inputs, so every conv input is converted once and
    the outputs, channels-last too, feed the next conv without another reorder."""
    return x.contiguous(memory_format=torch.channels_last)


def residual_attention_maps(feats: list[Tensor], aligned: list[Tensor]) -> list[Tensor]:
    """Per-scale residual maps (see ``relative_residual``) of features vs their aligned references."""
    return [relative_residual(f, f.unsqueeze(1) - a) for f, a in zip(feats, aligned)]


class CSDAHead(nn.Module):
    """Trainable part of CSDA: (image features, aligned reference features) -> (pixel logits, image logit)."""

    def __init__(self, channels: list[int], cfg: HeadConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.channels = list(channels)
        n_red = 2 if cfg.reduce == "min+mean" else 1
        d, e = cfg.dim, cfg.img_dim
        self.compress = nn.ModuleList(nn.Conv2d(c, e, 1) for c in channels)
        self.lateral = nn.ModuleList(nn.Conv2d(n_red * c + e, d, 1) for c in channels)
        self.fuse = nn.ModuleList(nn.Conv2d(d, d, 3, padding=1) for _ in channels)
        # Residual guidance: attention = sigmoid(alpha * residual + beta), one (alpha, beta) per scale.
        self.att_alpha = nn.Parameter(torch.full((len(channels),), 8.0))
        self.att_beta = nn.Parameter(torch.full((len(channels),), -2.0))
        n = len(channels)
        self.decoder = nn.Sequential(
            nn.Conv2d(d + n, d, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(d, 1, 1))
        nn.init.constant_(self.decoder[-1].bias, MAP_PRIOR_BIAS)
        self.gdiff = nn.ModuleList(nn.Linear(c, e) for c in channels)
        g_in = n * (2 * d + 2 * e)
        self.global_head = nn.Sequential(nn.Linear(g_in, 64), nn.ReLU(inplace=True), nn.Linear(64, 1))
        # Image score = learned combination of the global logit and the top-k mean of the smoothed map.
        self.mix = nn.Parameter(torch.tensor([1.0, 1.0, 0.0]))

    def _reduce(self, absdiff: Tensor) -> list[Tensor]:
        if self.cfg.reduce == "min":
            return [absdiff.amin(dim=1)]
        if self.cfg.reduce == "mean":
            return [absdiff.mean(dim=1)]
        return [absdiff.amin(dim=1), absdiff.mean(dim=1)]

    def forward(self, feats: list[Tensor], aligned: list[Tensor], out_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """feats: per scale [B,C,h,w]; aligned: per scale [B,k,C,h,w]; returns ([B,1,H,W] logits, [B] logit)."""
        if len(feats) != len(self.channels) or len(aligned) != len(self.channels):
            raise ValueError(f"CSDA head expects {len(self.channels)} scales, got {len(feats)} / {len(aligned)}")
        laterals, pooled, residuals = [], [], []
        for s, (f, a) in enumerate(zip(feats, aligned)):
            diff = f.unsqueeze(1) - a  # [B,k,C,h,w], the costly tensor: every use below is one pass over it
            residuals.append(relative_residual(f, diff))
            gd = F.relu(self.gdiff[s](diff.mean(dim=(1, 3, 4))))  # = pooled image minus pooled references
            # frozen inputs carry no gradient, so |diff| may overwrite diff (saves a copy of the largest tensor)
            absdiff = diff.abs_() if not diff.requires_grad else diff.abs()
            comp = F.relu(self.compress[s](channels_last(f)))
            lat = F.relu(self.lateral[s](torch.cat([*map(channels_last, self._reduce(absdiff)), comp], dim=1)))
            if self.cfg.guidance:
                att = torch.sigmoid(self.att_alpha[s] * residuals[s] + self.att_beta[s])
                lat = lat * (1.0 + att)
            laterals.append(lat)
            pooled.append((comp.mean(dim=(2, 3)), gd))
        top: Tensor | None = None
        fused: list[Tensor] = [laterals[0]] * len(laterals)
        for s in range(len(laterals) - 1, -1, -1):
            p = laterals[s]
            if top is not None:
                p = p + F.interpolate(top, size=p.shape[-2:], mode="bilinear", align_corners=False)
            p = F.relu(self.fuse[s](channels_last(p)))
            fused[s] = p
            top = p
        fine = fused[0]
        res_up = [F.interpolate(r, size=fine.shape[-2:], mode="bilinear", align_corners=False) for r in residuals]
        logits = self.decoder(channels_last(torch.cat([fine, *res_up], dim=1)))
        gvec = []
        for p, (comp_pool, gd) in zip(fused, pooled):
            gvec += [p.mean(dim=(2, 3)), p.amax(dim=(2, 3)), comp_pool, gd]
        g = self.global_head(torch.cat(gvec, dim=1)).squeeze(1)
        # The map score is taken at the decoder's own resolution, so the image logit does not depend on out_size
        # (training may compute the pixel loss at that resolution; prediction upsamples to the image size).
        image_logit = self.mix[0] * g + self.mix[1] * self.map_score(logits) + self.mix[2]
        if tuple(logits.shape[-2:]) != tuple(out_size):
            logits = F.interpolate(logits, size=out_size, mode="bilinear", align_corners=False)
        return logits, image_logit

    def map_score(self, logits: Tensor) -> Tensor:
        """Top-k mean of the box-smoothed logit map ([B,1,H,W] -> [B])."""
        k = self.cfg.smooth
        sm = F.avg_pool2d(logits, k, stride=1, padding=k // 2, count_include_pad=False) if k > 1 else logits
        flat = sm.flatten(1)
        n = max(1, int(self.cfg.topk_frac * int(flat.shape[1]) + 0.5))
        return flat.topk(n, dim=1).values.mean(dim=1)


class CSDA(nn.Module):
    """Frozen backbone + CSDA head; ``forward(x, aligned)`` is what predict and the ONNX export run."""

    def __init__(self, backbone: nn.Module, head_cfg: HeadConfig) -> None:
        super().__init__()
        self.backbone = backbone
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.backbone.eval()
        self.head = CSDAHead(list(backbone.channels), head_cfg)

    def train(self, mode: bool = True) -> CSDA:
        super().train(mode)
        self.backbone.eval()  # always frozen, BN statistics never move
        return self

    @torch.no_grad()
    def features(self, x: Tensor) -> list[Tensor]:
        return list(self.backbone(x))

    def forward(self, x: Tensor, aligned: list[Tensor]) -> tuple[Tensor, Tensor]:
        """x: [B,3,H,W] float in [0,1]; aligned: per scale [B,k,C,h,w] -> (map logits [B,1,H,W], image logit [B])."""
        feats = list(self.backbone(x))
        return self.head(feats, list(aligned), (int(x.shape[-2]), int(x.shape[-1])))
