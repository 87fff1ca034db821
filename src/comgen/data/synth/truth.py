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

from comgen.data.imageio import read_mask
from comgen.data.synth.base import components, hue_distance, hue_sat, median_rgb
from comgen.data.synth.categories import (
    BAG_COLORS,
    CABLE_COLORS,
    CATEGORY_SPECS,
    LIME,
    ORANGE,
    category_spec,
    known_category,
)
from comgen.errors import DatasetError, InputError
from comgen.records import Sample


def truth_path(sample: Sample) -> Path:
    """``<cat>/truth/<split>/<label>/<id>.png`` beside the sample's ``<cat>/<split>/<label>/<file>``."""
    cat_dir = Path(sample.path).parent.parent.parent
    return cat_dir / "truth" / sample.split / sample.label / f"{sample.image_id}.png"


def load_truth(sample: Sample) -> np.ndarray:
    """The sample's part-label map (HxW uint8, 0 background, 1..P parts)."""
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
    except ValueError as exc:  # not UTF-8 text, or not JSON
        raise DatasetError(path, f"not valid JSON ({str(exc)[:80]})") from None


def palettes() -> dict[str, dict[int, tuple[str, tuple[tuple[int, int, int], ...]]]]:
    """The generator's colour palette of every part: {category: {label: (name, (rgb, ...))}}.

    Each part is drawn from these base colours (plus a small jitter, lighting ramp, gain and noise), so a part
    whose colour lies outside its palette is a wrong-colour (logical) defect, even for parts that the
    category's own rules do not mention.
    """
    return {
        "breakfast_tray": {1: ("tray", ((226, 222, 208), (188, 184, 172))), 2: ("orange", (ORANGE,)),
                           3: ("lime", (LIME,)), 4: ("cereal", ((168, 112, 56),))},
        "pushpin_grid": {1: ("box", ((150, 160, 178),)), 2: ("separator", ((92, 98, 118),)),
                         3: ("pin", ((236, 198, 40),))},
        "screw_bag": {1: ("bag", ((204, 214, 226),)), 2: ("screw", (BAG_COLORS[2],)), 3: ("nut", (BAG_COLORS[3],)),
                      4: ("washer", (BAG_COLORS[4],))},
        "cable_pair": {1: ("connector", ((226, 226, 220),)), 2: ("lever", ((120, 70, 150),)),
                       3: ("cable", tuple(CABLE_COLORS.values()))},
    }


def _in_palette(rgb: np.ndarray, refs) -> bool:
    """Hue (coloured parts) or saturation + brightness (grey parts) close to one palette colour.

    Tolerances cover the benchmark's jitter, lighting ramp (+-14%) and channel gain (0.93..1.05) with margin.
    """
    hue, sat = hue_sat(rgb)
    val = float(np.max(rgb))
    for ref in refs:
        r_hue, r_sat = hue_sat(np.asarray(ref, np.float32))
        r_val = float(max(ref))
        if r_sat >= 80:
            if hue_distance(hue, r_hue) <= 15 and sat >= 0.5 * r_sat:
                return True
        elif sat <= max(r_sat + 60, 110) and 0.6 <= val / max(r_val, 1.0) <= 1.6:
            return True
    return False


def palette_violations(category: str, labels: np.ndarray, image: np.ndarray) -> list[str]:
    """"A part shows a colour outside its part's palette", for every part of the category."""

    s = labels.shape[0]
    msgs = []
    table = palettes().get(category) or category_spec(category).palettes()
    for label, (name, refs) in table.items():
        for m, cy, cx, _ in components(labels == label, max(6.0, 0.0005 * s * s)):
            if not _in_palette(median_rgb(image, m), refs):
                msgs.append(f"{name} at ({cy / s:.2f}, {cx / s:.2f}) has a colour outside its palette")
    return msgs


def violates(category: str, label_map: np.ndarray, image: np.ndarray, palette: bool = True) -> list[str]:
    """Messages for every logical rule of ``category`` that the scene breaks ([] for a normal scene).

    The image is used only for colour rules; it is resized to the label map when sizes differ. ``palette``
    adds the rule "every part keeps a colour of its palette" (``palette_violations``) to the category's own
    rules; ``palette=False`` checks the category's listed rules only.
    """
    if not known_category(category):
        raise InputError(category, f"not a synthetic category (have: {', '.join(CATEGORY_SPECS)}, or family_<seed>)")
    labels = np.asarray(label_map)
    img = np.asarray(image)
    if labels.ndim != 2 or img.ndim != 3 or img.shape[2] != 3:
        raise InputError(category, f"expected an HxW label map and HxWx3 image, got {labels.shape} and {img.shape}")
    if labels.shape[0] != labels.shape[1]:
        side = max(labels.shape)
        labels = cv2.resize(labels.astype(np.uint8), (side, side), interpolation=cv2.INTER_NEAREST)
    if img.shape[:2] != labels.shape:
        img = cv2.resize(img, (labels.shape[1], labels.shape[0]), interpolation=cv2.INTER_AREA)
    labels = labels.astype(np.uint8)
    msgs = category_spec(category).check(labels, img)
    if palette:
        msgs += palette_violations(category, labels, img)
    return msgs
