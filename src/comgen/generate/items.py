"""One generated anomaly on disk: its files (image, mask, gate, truth) and its manifest line; the preview grid.

Why apart from the writer: both the writer and the shard merge (``shards``) write items, and must write them
byte for byte alike.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from comgen.data.generated import load_item
from comgen.errors import InputError
from comgen.io import write_png
from comgen.records import Anomaly


def item_id(index: int) -> str:
    return f"{index:06d}"


def _check_anomaly(a: Anomaly, index: int, backend: str) -> None:
    img, mask = np.asarray(a.image), np.asarray(a.mask)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise InputError(f"{backend} generator", f"anomaly {index}: image must be HxWx3 uint8, got "
                                                  f"{img.shape} {img.dtype}")
    if mask.shape != img.shape[:2]:
        raise InputError(f"{backend} generator", f"anomaly {index}: mask is {mask.shape} but image is "
                                                  f"{img.shape[:2]}")


def _to_uint8_map(arr: np.ndarray) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    return np.clip(np.rint(np.nan_to_num(arr.astype(np.float32)) * 255.0), 0, 255).astype(np.uint8)


def write_item(out: Path, index: int, a: Anomaly, backend: str) -> dict[str, Any]:
    """Write one anomaly's files atomically and return its manifest line (not yet appended)."""
    _check_anomaly(a, index, backend)
    iid = item_id(index)
    mask = np.asarray(a.mask).astype(bool)
    write_png(out / "images" / f"{iid}.png", a.image)
    write_png(out / "masks" / f"{iid}.png", mask)
    gate = truth = None
    if a.extra.get("gate") is not None:
        gate = f"gates/{iid}.png"
        write_png(out / gate, _to_uint8_map(a.extra["gate"]))
    if a.extra.get("truth_labels") is not None:
        truth = f"truth/{iid}.png"
        write_png(out / truth, np.asarray(a.extra["truth_labels"]).astype(np.uint8))
    return {
        "id": iid, "index": index, "file": f"images/{iid}.png", "mask": f"masks/{iid}.png",
        "kind": a.edit.kind, "category": a.kind, "classes": [int(c) for c in a.edit.classes],
        "tokens": a.edit.tokens(), "prompt": str(a.extra.get("prompt", "") or ""),
        "params": json.loads(json.dumps(a.edit.params, default=_plain)), "target": list(a.edit.target),
        "density": None if a.density is None else float(a.density), "source": str(a.source),
        "backend": a.backend or backend, "gate": gate, "truth": truth, "area": int(mask.sum()),
    }


def _plain(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


def write_preview(out: Path, lines: list[dict[str, Any]], count: int = 16, tile: int = 128) -> Path | None:
    """A grid of the first ``count`` anomalies with their mask contours in red (a quick visual check)."""
    import cv2

    lines = lines[:count]
    if not lines:
        return None
    cols = min(4, len(lines))
    rows = (len(lines) + cols - 1) // cols
    grid = np.zeros((rows * (tile + 2), cols * (tile + 2), 3), np.uint8)
    for k, line in enumerate(lines):
        image, mask = load_item(out, line)
        image = cv2.resize(image, (tile, tile), interpolation=cv2.INTER_AREA)
        small = cv2.resize(mask.astype(np.uint8), (tile, tile), interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(small, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        image = np.ascontiguousarray(image)
        cv2.drawContours(image, contours, -1, (255, 0, 0), 1)
        r, c = divmod(k, cols)
        grid[r * (tile + 2) + 1:r * (tile + 2) + 1 + tile, c * (tile + 2) + 1:c * (tile + 2) + 1 + tile] = image
    return write_png(out / "preview.png", grid)
