"""Uploaded bytes to the HxWx3 uint8 RGB array the detector takes, by the same rules as ``comgen predict``.

Why not ``data.imageio.read_rgb``: it reads files; an upload is bytes in memory and must never touch the disk.
The channel order and bit depth rules are the same (OpenCV decode, BGR to RGB, then ``to_rgb_uint8``).
"""

from __future__ import annotations

import io
import warnings

import cv2
import numpy as np
from PIL import Image

from comgen.data.imageio import MIN_SIDE
from comgen.detect.predict import to_rgb_uint8
from comgen.errors import InputError

#: pixels refused beyond this, read from the file's header before decoding: a small compressed upload can claim a
#: canvas that would take gigabytes to decode
MAX_PIXELS = 100_000_000


def _declared_size(data: bytes, where: str) -> tuple[int, int] | None:
    """(width, height) from the file's header without decoding the pixels; None where Pillow cannot tell."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # MAX_PIXELS is the limit here
            with Image.open(io.BytesIO(data)) as im:
                return im.size
    except Image.DecompressionBombError:
        raise InputError(where, f"image is larger than {MAX_PIXELS} pixels (its header says)") from None
    except Exception:  # not a format Pillow reads (OpenCV may still), or a damaged header: the decoder decides
        return None


def decode_image(data: bytes, where: str = "image") -> np.ndarray:
    """Decode PNG/JPEG/BMP/TIFF/WebP bytes as HxWx3 uint8 RGB, or raise one-line ``InputError``."""
    if not data:
        raise InputError(where, "empty upload, not an image")
    size = _declared_size(data, where)
    if size is not None and size[0] * size[1] > MAX_PIXELS:
        raise InputError(where, f"image is {size[0]}x{size[1]} px, more than {MAX_PIXELS} pixels")
    buf = np.frombuffer(data, dtype=np.uint8)
    try:
        img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    except cv2.error:
        img = None
    if img is None:
        raise InputError(where, "corrupt or unsupported image (cannot decode)")
    if img.shape[0] * img.shape[1] > MAX_PIXELS:
        raise InputError(where, f"image is {img.shape[1]}x{img.shape[0]} px, more than {MAX_PIXELS} pixels")
    if min(img.shape[:2]) < MIN_SIDE:
        raise InputError(where, f"image is only {img.shape[1]}x{img.shape[0]} px (need at least "
                                f"{MIN_SIDE}x{MIN_SIDE})")
    if img.ndim == 3 and img.shape[2] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    elif img.ndim == 3 and img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGBA)
    return to_rgb_uint8(img, where)[0]
