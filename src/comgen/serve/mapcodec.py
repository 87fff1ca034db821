"""An anomaly map as a 16-bit grayscale PNG with a linear scale, so clients get z-scores back from a plain image.

Why 16-bit with per-map offset and scale: a PNG is what every client can store and view, and 65536 levels over
the map's own range recover the calibrated z-values to half a level (``scale / 2`` = range / 131070): better than
1e-3 for maps spanning up to ~130 z, coarser for wider ones (no linear 16-bit code can do better over the same
range); an 8-bit PNG would lose two orders of magnitude. ``z = offset + scale * pixel``.
"""

from __future__ import annotations

import cv2
import numpy as np

from comgen.errors import InputError

LEVELS = 65535


def encode_map_png(amap: np.ndarray) -> tuple[bytes, float, float]:
    """(PNG bytes, scale, offset) of an [H,W] float map; a constant map has scale 0 and every pixel 0."""
    m = np.asarray(amap, dtype=np.float64)
    if m.ndim != 2:
        raise InputError("map", f"expected an [H,W] map, got shape {m.shape}")
    if not np.isfinite(m).all():
        raise InputError("map", "map contains NaN or inf")
    lo, hi = float(m.min()), float(m.max())
    scale = (hi - lo) / LEVELS
    pixels = np.zeros(m.shape, np.uint16) if scale == 0 else \
        np.clip(np.rint((m - lo) / scale), 0, LEVELS).astype(np.uint16)
    ok, buf = cv2.imencode(".png", pixels)
    if not ok:
        raise InputError("map", "PNG encoding failed")
    return buf.tobytes(), scale, lo


def decode_map_png(data: bytes, scale: float, offset: float) -> np.ndarray:
    """The float32 map back from ``encode_map_png``'s bytes, scale and offset (for clients and tests)."""
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None or img.dtype != np.uint16 or img.ndim != 2:
        raise InputError("map png", "not a 16-bit grayscale PNG")
    return (offset + scale * img.astype(np.float64)).astype(np.float32)
