"""Locally aggregated multi-scale patch embeddings, as PatchCore builds them.

Why shared: the kNN baseline and the detector's patch-memory branch score patches the same way, so a change to the
embedding (neighbourhood, which scales) reaches both.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def aggregate_patches(feats: Sequence[torch.Tensor], neighbourhood: int = 3) -> torch.Tensor:
    """[B, h, w, D] patch embeddings at the finest of ``feats`` ([B, C_s, h_s, w_s] each): every scale averaged over
    a ``neighbourhood`` x ``neighbourhood`` window (local context, as PatchCore), the coarser ones upsampled, all
    concatenated along the channels."""
    size = feats[0].shape[-2:]
    pad = neighbourhood // 2
    agg = [F.avg_pool2d(f.float(), neighbourhood, stride=1, padding=pad, count_include_pad=False) for f in feats]
    agg = [a if a.shape[-2:] == size else F.interpolate(a, size=size, mode="bilinear", align_corners=False)
           for a in agg]
    return torch.cat(agg, dim=1).permute(0, 2, 3, 1).contiguous()
