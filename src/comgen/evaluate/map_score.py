"""Maps that carry the image score: each written map's maximum becomes its image score, on the maps' own scale.

Why: MVTec's evaluation scripts rank an image by its map's maximum. A map whose maximum disagrees with the
detector's score (the composition prior has no map, and the network's map often peaks away from a logical defect)
then reports a far lower image AUROC than the detector has. A plain shift of each map to its score fixes the
ranking but raises the whole background of every high-scoring image, and sPRO counts that background as false
positives (docs/experiments.md). So:

1. The score is put on the scale of the maps' maxima by a linear map fitted on the validation normals (their fused
   scores' and map maxima's mean and spread): ``target = max_mean + max_std * (score - score_mean) / score_std``.
   A normal image's map then moves little, and only an image the score finds unusual moves much.
2. A map whose maximum is below its target is raised near its peak only: a pixel ``m`` gains
   ``(target - max) * exp((m - max) / width)``, so pixels more than a few ``width`` below the peak barely move.
3. A map whose maximum is above its target is clipped at the target.

The maximum then equals the target, an increasing function of the score, so both rank images alike. NumPy only:
the export runtime runs the same code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from comgen.errors import ArtifactError

PEAK_KEYS = ("score_mean", "score_std", "max_mean", "max_std")


def peak_stats(scores: np.ndarray, maps: Sequence[np.ndarray] | np.ndarray) -> dict[str, float]:
    """The score-to-map-scale fit from the validation normals' fused scores and (unshifted) maps."""
    s = np.asarray(scores, np.float64)
    top = np.array([float(np.max(m)) for m in maps], np.float64)
    if not len(s) or len(s) != len(top) or not (np.isfinite(s).all() and np.isfinite(top).all()):
        raise ValueError("peak_stats needs one finite score and map per validation normal")
    return {"score_mean": float(s.mean()), "score_std": max(float(s.std()), 1e-6),
            "max_mean": float(top.mean()), "max_std": max(float(top.std()), 1e-6)}


def read_peak_stats(entry: Any, where: str | Path, fix: str = "retrain the detector") -> dict[str, float] | None:
    """``peak_stats`` as stored in a calibration or bundle manifest (None: calibrated before they existed); ``fix``
    ends the error message."""
    if entry is None:
        return None
    ok = isinstance(entry, Mapping) and all(isinstance(entry.get(k), (int, float)) and np.isfinite(entry[k])
                                            for k in PEAK_KEYS)
    if not ok or entry["score_std"] <= 0 or entry["max_std"] <= 0:
        raise ArtifactError(where, "map_peak entry is malformed (needs finite " + ", ".join(PEAK_KEYS)
                                   + f" with positive spreads); {fix}")
    return {k: float(entry[k]) for k in PEAK_KEYS}


def peak_targets(scores: np.ndarray, stats: Mapping[str, float]) -> np.ndarray:
    """Each image's score on the scale of the maps' maxima."""
    z = (np.asarray(scores, np.float64) - stats["score_mean"]) / stats["score_std"]
    return stats["max_mean"] + stats["max_std"] * z


def carry_score(maps: Sequence[np.ndarray] | np.ndarray, scores: np.ndarray, stats: Mapping[str, float] | None,
                width: float) -> None:
    """In place: raise each map near its peak, or clip it, so that its maximum is its score's target.

    Without ``stats`` (a detector calibrated before they existed) each map is shifted whole to its score.
    """
    if stats is None:
        for m, s in zip(maps, scores):
            m += np.float32(s) - m.max()
        return
    for m, t in zip(maps, peak_targets(scores, stats)):
        top = float(m.max())
        if t >= top:
            gain = np.exp((m - np.float32(top)) / np.float32(width))
            gain *= np.float32(t - top)
            m += gain
            m[m > t] = np.float32(t)  # float32 rounding at the peak
            m.flat[int(np.argmax(m))] = np.float32(t)
        else:
            np.minimum(m, np.float32(t), out=m)
