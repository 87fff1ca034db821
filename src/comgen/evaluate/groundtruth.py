"""Ground truth of one test image as the metrics see it: channels (one per mask file) and their regions.

Why this follows MVTec LOCO's official evaluation exactly:
- every mask file is one *channel* = one defect region for sPRO, even when its pixels are not connected;
  several mask files of one image stay separate (never OR-ed), each saturated by its own defect;
- the channel's defect is the mask's single non-zero pixel value, looked up in ``defects_config.json``;
- saturation area = ``int(threshold * area)`` for relative defects, ``min(threshold, area)`` for absolute ones;
- a pixel is a false positive only if it is defect-free in *all* channels (the OR is used for FPR only);
- AUPRO (MVTec AD) regions are the 8-connected components of each channel.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from comgen.errors import InputError
from comgen.records import DefectSpec


@dataclass
class GroundTruth:
    """Channels of one anomalous image; ``saturation[i]`` is channel i's sPRO saturation area in pixels."""

    channels: list[np.ndarray]  # HxW bool, one per mask file
    saturation: list[int]
    defects: list[str]
    sources: list[str] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, int] | None:
        return tuple(self.channels[0].shape) if self.channels else None  # type: ignore[return-value]

    def union(self) -> np.ndarray | None:
        """OR of the channels (defect pixels for FPR and pixel AUROC); None when there is no channel."""
        if not self.channels:
            return None
        out = self.channels[0].copy()
        for ch in self.channels[1:]:
            out |= ch
        return out

    def components(self) -> list[np.ndarray]:
        """Per channel, an int32 label map of its 8-connected components (0 = outside)."""
        out = []
        for ch in self.channels:
            _, labels = cv2.connectedComponents(ch.view(np.uint8), connectivity=8, ltype=cv2.CV_32S)
            out.append(labels)
        return out


def saturation_area(area: int, spec: DefectSpec | None) -> int:
    """Pixels a region must have covered to count as fully found (LOCO's rule; ``None`` = plain PRO)."""
    if spec is None:
        sat = area
    elif spec.relative_saturation:
        sat = int(spec.saturation_threshold * area)
    else:
        sat = int(min(spec.saturation_threshold, area))
    return max(sat, 1)  # LOCO would divide by zero for tiny regions; one pixel is the smallest meaningful saturation


def ground_truth_from_masks(masks: Sequence[np.ndarray], defects: Mapping[int, DefectSpec] | None,
                            sources: Sequence[str | Path] | None = None,
                            shape: tuple[int, int] | None = None) -> GroundTruth:
    """Build the channels of one image from its mask arrays (uint8, 0 = background).

    With ``defects`` (LOCO: pixel value -> spec) each mask must hold exactly one non-zero value that the
    config knows. Without it (MVTec AD / folder) any non-zero pixel is a defect, saturated at its area (PRO).
    Empty masks add no channel: an anomalous image may have no region.
    """
    sources = [str(s) for s in (sources or [f"mask {i}" for i in range(len(masks))])]
    channels, saturation, names, kept = [], [], [], []
    for mask, src in zip(masks, sources):
        mask = np.asarray(mask)
        if mask.ndim != 2:
            raise InputError(src, f"mask must be 2-D, got shape {mask.shape}")
        if shape is not None and mask.shape != tuple(shape):
            raise InputError(src, f"mask is {mask.shape[1]}x{mask.shape[0]} but its anomaly map is "
                                  f"{shape[1]}x{shape[0]}")
        values = np.unique(mask)
        values = values[values != 0]
        if values.size == 0:
            continue
        spec = None
        name = "defect"
        if defects is not None:
            if values.size > 1:
                raise InputError(src, f"mask holds several defect values {values.tolist()}; "
                                      "LOCO masks hold one defect each")
            value = int(values[0])
            if value not in defects:
                raise InputError(src, f"mask pixel value {value} is not in defects_config.json "
                                      f"(known: {sorted(defects)})")
            spec = defects[value]
            name = spec.name
        channel = mask != 0
        channels.append(channel)
        saturation.append(saturation_area(int(channel.sum()), spec))
        names.append(name)
        kept.append(src)
    return GroundTruth(channels=channels, saturation=saturation, defects=names, sources=kept)
