"""Image and mask reading with one clear conversion rule per pixel format.

Why: datasets arrive as 8/16-bit, gray, RGBA and palette PNGs/JPEGs/TIFFs. Every stage must see the same
HxWx3 uint8 RGB array, and a broken file must fail with one line naming it, not deep inside OpenCV.

Conversion rules (``read_rgb``):
- gray (8 or 16 bit) -> replicated to 3 channels;
- 16-bit -> scaled to 8 bit by ``>> 8`` (full range kept, no per-image stretching);
- RGBA / gray+alpha -> alpha dropped (the colour channels are kept as stored);
- palette (PNG "P") -> expanded through its palette (OpenCV does this on decode);
- float images or more than 4 channels -> refused.
Masks (``read_mask``): must be single channel (or 3 equal channels); 16-bit masks are refused because
MVTec LOCO pixel values (defect ids) would be ambiguous after scaling.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from comgen.errors import DatasetError, InputError

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
#: smallest image side accepted: a 1-pixel image is a broken export, and the later stages failed on it without
#: naming the file
MIN_SIDE = 2


def _decode(path: Path) -> np.ndarray:
    """Decode any supported file unchanged (bit depth, channels, alpha) or raise DatasetError."""
    if not path.is_file():
        raise DatasetError(path, "image file not found")
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as exc:
        raise DatasetError(path, f"cannot read file ({exc.strerror or exc})") from None
    if data.size == 0:
        raise DatasetError(path, "empty file, not an image")
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise DatasetError(path, "corrupt or unsupported image file (cannot decode)")
    if min(img.shape[:2]) < MIN_SIDE:
        raise DatasetError(path, f"image is only {img.shape[1]}x{img.shape[0]} px (need at least "
                                 f"{MIN_SIDE}x{MIN_SIDE}); a broken or placeholder file")
    return img


def read_rgb(path: str | Path) -> np.ndarray:
    """Read an image as HxWx3 uint8 RGB, converting gray/16-bit/RGBA/palette by the module's rules."""
    path = Path(path)
    img = _decode(path)
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise DatasetError(path, f"unsupported pixel type {img.dtype} (expected 8 or 16-bit integer)")
    if img.ndim == 2:
        return np.ascontiguousarray(np.repeat(img[:, :, None], 3, axis=2))
    channels = img.shape[2]
    if channels == 1:
        return np.ascontiguousarray(np.repeat(img, 3, axis=2))
    if channels == 2:  # gray + alpha
        return np.ascontiguousarray(np.repeat(img[:, :, :1], 3, axis=2))
    if channels == 3:
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if channels == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    raise DatasetError(path, f"unsupported image with {channels} channels")


def read_mask(path: str | Path) -> np.ndarray:
    """Read a mask as HxW uint8 keeping pixel values (LOCO encodes the defect id in them)."""
    path = Path(path)
    img = _decode(path)
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    if img.dtype != np.uint8:
        raise DatasetError(path, f"mask must be 8-bit, got {img.dtype}")
    if img.ndim == 3:
        if img.shape[2] == 4:
            img = img[:, :, :3]
        if img.shape[2] == 1 or bool((img == img[:, :, :1]).all()):
            img = img[:, :, 0]
        else:
            raise DatasetError(path, "mask must be single channel (got a colour image)")
    return np.ascontiguousarray(img)


def image_size(path: str | Path) -> tuple[int, int]:
    """(H, W) of an image file; cheap validation helper used by ``comgen data check``."""
    img = _decode(Path(path))
    return int(img.shape[0]), int(img.shape[1])


def _size_hw(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        h = w = int(size)
    else:
        h, w = (int(s) for s in size)
    if h <= 0 or w <= 0:
        raise InputError(None, f"resize target must be positive, got {size!r}")
    return h, w


def resize_rgb(img: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize an RGB image to ``size`` (int -> square, tuple -> (H, W)); area filter when shrinking."""
    h, w = _size_hw(size)
    img = np.asarray(img)
    if img.shape[:2] == (h, w):
        return img
    interp = cv2.INTER_AREA if (h < img.shape[0] and w < img.shape[1]) else cv2.INTER_LINEAR
    return cv2.resize(img, (w, h), interpolation=interp)


def resize_mask(mask: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize a mask with nearest neighbour so labels/pixel values are never blended."""
    h, w = _size_hw(size)
    mask = np.asarray(mask)
    if mask.shape[:2] == (h, w):
        return mask
    was_bool = mask.dtype == bool
    src = mask.astype(np.uint8) if was_bool else mask
    out = cv2.resize(src, (w, h), interpolation=cv2.INTER_NEAREST)
    return out.astype(bool) if was_bool else out
