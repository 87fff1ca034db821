"""Texture sources for the DRAEM-style baseline, all available offline.

Why: DRAEM fills its Perlin masks with Describable Textures Dataset (DTD) images, which cannot be downloaded
here. Debian's ``gimp-data`` ships 58 tileable GIMP ``.pat`` patterns (burlap, marble, wood, cracked stone...),
read by the tiny parser below; scikit-image bundles ``brick``, ``grass`` and ``gravel`` as a last resort; and a
user's own DTD (or any image folder) works through a path.

GIMP pattern format (big-endian): ``header_size, version, width, height, bytes`` as uint32, the magic ``GPAT``,
a NUL-terminated UTF-8 name filling the rest of the header, then ``width*height*bytes`` pixel bytes
(1 = gray, 2 = gray+alpha, 3 = RGB, 4 = RGBA).
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from comgen.errors import ConfigError, DatasetError

GIMP_PATTERN_DIRS: tuple[Path, ...] = (
    Path("/usr/share/gimp/2.0/patterns"),
    Path("/usr/share/gimp/3.0/patterns"),
)
SKIMAGE_TEXTURES: tuple[str, ...] = ("brick", "grass", "gravel")
IMAGE_SUFFIXES: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
_HEADER = struct.Struct(">5I4s")


def parse_pat(data: bytes, where: str | Path = "<bytes>") -> tuple[str, np.ndarray]:
    """Decode a GIMP ``.pat`` blob into (name, HxWx3 uint8 RGB); alpha is dropped, gray is replicated."""
    if len(data) < _HEADER.size:
        raise DatasetError(where, f"not a GIMP pattern: {len(data)} bytes is shorter than the 24-byte header")
    header_size, version, width, height, depth, magic = _HEADER.unpack_from(data)
    if magic != b"GPAT":
        raise DatasetError(where, f"not a GIMP pattern: magic is {magic!r}, expected b'GPAT'")
    if version != 1:
        raise DatasetError(where, f"unsupported GIMP pattern version {version} (only 1 is defined)")
    if depth not in (1, 2, 3, 4):
        raise DatasetError(where, f"GIMP pattern has {depth} bytes per pixel; expected 1, 2, 3 or 4")
    if width < 1 or height < 1 or header_size < _HEADER.size:
        raise DatasetError(where, f"GIMP pattern header is corrupt (size {width}x{height}, header {header_size})")
    need = header_size + width * height * depth
    if len(data) < need:
        raise DatasetError(where, f"GIMP pattern is truncated: {len(data)} bytes, header says {need}")
    name = data[_HEADER.size:header_size].split(b"\0", 1)[0].decode("utf-8", errors="replace")
    pixels = np.frombuffer(data, dtype=np.uint8, count=width * height * depth, offset=header_size)
    pixels = pixels.reshape(height, width, depth)
    if depth in (1, 2):
        rgb = np.repeat(pixels[..., :1], 3, axis=2)
    else:
        rgb = pixels[..., :3]
    return name, np.ascontiguousarray(rgb)


def read_pat(path: str | Path) -> np.ndarray:
    """Read one GIMP ``.pat`` file as HxWx3 uint8 RGB (DatasetError naming the file when it is not one)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DatasetError(path, f"cannot read pattern ({exc.strerror})") from None
    return parse_pat(data, path)[1]


def _read_image(path: Path) -> np.ndarray:
    import cv2

    arr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if arr is None:
        raise DatasetError(path, "cannot decode texture image")
    return cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)


def _limit(img: np.ndarray, max_side: int) -> np.ndarray:
    """Shrink huge textures (DTD has 640 px+) so the bank stays small; tiny GIMP tiles are tiled later."""
    import cv2

    h, w = img.shape[:2]
    if max(h, w) <= max_side:
        return img
    s = max_side / max(h, w)
    return cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)


def gimp_pattern_files() -> list[Path]:
    """All installed GIMP ``.pat`` files (empty when ``gimp-data`` is not installed)."""
    files: list[Path] = []
    for root in GIMP_PATTERN_DIRS:
        if root.is_dir():
            files.extend(sorted(root.rglob("*.pat")))
    return files


def folder_texture_files(root: Path) -> list[Path]:
    """Images and ``.pat`` files under a user folder (DTD's ``images/<class>/*.jpg`` works as is)."""
    return sorted(p for p in root.rglob("*") if p.is_file() and (p.suffix.lower() in IMAGE_SUFFIXES
                                                                  or p.suffix.lower() == ".pat"))


def skimage_textures() -> list[np.ndarray]:
    """scikit-image's bundled gray textures, replicated to RGB (always available, no download)."""
    import skimage.data

    return [np.repeat(getattr(skimage.data, n)()[..., None], 3, axis=2) for n in SKIMAGE_TEXTURES]


def load_textures(source: str = "auto", max_textures: int = 64, max_side: int = 512,
                  rng: np.random.Generator | None = None) -> tuple[list[np.ndarray], str]:
    """Load texture images; returns them with a description of where they came from.

    ``source``: ``auto`` (GIMP patterns when installed, else scikit-image), ``gimp``, ``skimage``, or a folder.
    When a folder holds more than ``max_textures`` files, an even spread (or an ``rng`` sample) is kept.
    """
    if source == "skimage":
        return skimage_textures(), "skimage"
    if source in ("auto", "gimp"):
        files = gimp_pattern_files()
        if not files:
            if source == "gimp":
                raise ConfigError("draem.textures", "no GIMP patterns found under "
                                  f"{', '.join(map(str, GIMP_PATTERN_DIRS))}; install gimp-data or use skimage")
            return skimage_textures(), "skimage"
        label = "gimp"
    else:
        root = Path(source).expanduser()
        if not root.is_dir():
            raise ConfigError(root, "texture folder not found (draem.textures expects auto, gimp, skimage or a folder)")
        files = folder_texture_files(root)
        if not files:
            raise ConfigError(root, "texture folder holds no images or .pat files")
        label = f"folder:{root}"
    if len(files) > max_textures:
        if rng is not None:
            keep = np.sort(rng.choice(len(files), size=max_textures, replace=False))
        else:
            keep = np.linspace(0, len(files) - 1, max_textures).round().astype(int)
        files = [files[i] for i in keep]
    textures = [_limit(read_pat(p) if p.suffix.lower() == ".pat" else _read_image(p), max_side) for p in files]
    return textures, label


def texture_crop(texture: np.ndarray, size: int, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """A ``size`` x ``size`` RGB texture sample: tiled when the pattern is small, random crop, flip and 90-degree turn.

    GIMP patterns are tileable, so tiling a 64 px tile up to 256 px shows no seams.
    """
    h, w = texture.shape[:2]
    reps = (int(np.ceil(size / h)) + 1, int(np.ceil(size / w)) + 1, 1)
    tiled = np.tile(texture, reps) if (h < size or w < size) else texture
    th, tw = tiled.shape[:2]
    y0 = int(rng.integers(0, th - size + 1))
    x0 = int(rng.integers(0, tw - size + 1))
    crop = tiled[y0:y0 + size, x0:x0 + size]
    k = int(rng.integers(0, 4))
    flip = bool(rng.integers(0, 2))
    crop = np.rot90(crop, k)
    if flip:
        crop = crop[:, ::-1]
    return np.ascontiguousarray(crop), {"texture_rot90": k, "texture_flip": flip}
