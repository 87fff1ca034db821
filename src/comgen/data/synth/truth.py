"""Generator truth of the synthetic benchmark: part-label maps per image and the per-category rule checker.

Why: later stages (component learning, anomaly generation) are scored against these, e.g. "does a
generated logical anomaly actually break a rule of its category?".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from comgen.errors import DatasetError, InputError
from comgen.records import Sample


def truth_path(sample: Sample) -> Path:
    """``<cat>/truth/<split>/<label>/<id>.png`` beside the sample's ``<cat>/<split>/<label>/<file>``."""
    cat_dir = Path(sample.path).parent.parent.parent
    return cat_dir / "truth" / sample.split / sample.label / f"{sample.image_id}.png"


def load_truth(sample: Sample) -> np.ndarray:
    """The sample's part-label map (HxW uint8, 0 background, 1..P parts)."""
    from comgen.data.imageio import read_mask

    path = truth_path(sample)
    if not path.is_file():
        raise DatasetError(path, "no generator truth for this image (not a comgen synth dataset?)")
    return read_mask(path)


def load_parts(category_dir: str | Path) -> dict[str, Any]:
    """``truth/parts.json`` of a synthetic category: {"parts": {"1": name, ...}, "rules": [...]}."""
    path = Path(category_dir) / "truth" / "parts.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(path, "no parts.json (not a comgen synth category)") from None
    except json.JSONDecodeError as exc:
        raise DatasetError(path, f"not valid JSON ({exc.msg})") from None


def violates(category: str, label_map: np.ndarray, image: np.ndarray) -> list[str]:
    """Messages for every logical rule of ``category`` that the scene breaks ([] for a normal scene).

    The image is used only for colour rules; it is resized to the label map when sizes differ.
    """
    from comgen.data.synth.categories import CATEGORY_SPECS

    if category not in CATEGORY_SPECS:
        raise InputError(category, f"not a synthetic category (have: {', '.join(CATEGORY_SPECS)})")
    labels = np.asarray(label_map)
    img = np.asarray(image)
    if labels.ndim != 2 or img.ndim != 3 or img.shape[2] != 3:
        raise InputError(category, f"expected an HxW label map and HxWx3 image, got {labels.shape} and {img.shape}")
    if labels.shape[0] != labels.shape[1]:
        side = max(labels.shape)
        labels = cv2.resize(labels.astype(np.uint8), (side, side), interpolation=cv2.INTER_NEAREST)
    if img.shape[:2] != labels.shape:
        img = cv2.resize(img, (labels.shape[1], labels.shape[0]), interpolation=cv2.INTER_AREA)
    return CATEGORY_SPECS[category].check(labels.astype(np.uint8), img)
