"""Decoding uploads: the same RGB arrays as ``read_rgb`` gives for the same file, and one line for bad bytes."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from comgen.data.imageio import read_rgb
from comgen.errors import InputError
from comgen.serve.images import decode_image


def _encoded(arr: np.ndarray, ext: str = ".png") -> bytes:
    ok, buf = cv2.imencode(ext, arr)
    assert ok
    return buf.tobytes()


@pytest.mark.parametrize("arr", [
    np.random.default_rng(0).integers(0, 256, (9, 13, 3), dtype=np.uint8),   # BGR colour
    np.random.default_rng(1).integers(0, 256, (9, 13, 4), dtype=np.uint8),   # BGRA
    np.random.default_rng(2).integers(0, 256, (9, 13), dtype=np.uint8),      # gray
    np.random.default_rng(3).integers(0, 65536, (9, 13), dtype=np.uint16),   # 16-bit gray
], ids=["bgr", "bgra", "gray", "gray16"])
def test_same_pixels_as_reading_the_file(arr: np.ndarray, tmp_path: Path) -> None:
    data = _encoded(arr)
    (tmp_path / "x.png").write_bytes(data)
    out = decode_image(data)
    assert out.dtype == np.uint8 and out.shape == (9, 13, 3)
    assert np.array_equal(out, read_rgb(tmp_path / "x.png"))


@pytest.mark.parametrize("data,problem", [(b"", "empty upload"), (b"not an image at all", "cannot decode"),
                                          (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "cannot decode")])
def test_bad_bytes_are_one_line_errors(data: bytes, problem: str) -> None:
    with pytest.raises(InputError, match=problem) as err:
        decode_image(data, "upload.png")
    assert str(err.value).startswith("upload.png: ") and "\n" not in str(err.value)


def test_one_pixel_image_is_refused() -> None:
    with pytest.raises(InputError, match="only 1x1"):
        decode_image(_encoded(np.zeros((1, 1, 3), np.uint8)))


def test_huge_canvas_refused_from_its_header_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    from comgen.serve import images

    monkeypatch.setattr(images, "MAX_PIXELS", 100)
    decoded = []
    monkeypatch.setattr(images.cv2, "imdecode", lambda *a: decoded.append(a))
    with pytest.raises(InputError, match="20x10 px, more than 100 pixels"):
        decode_image(_encoded(np.zeros((10, 20, 3), np.uint8)), "big.png")
    assert not decoded


def _png_header(width: int, height: int) -> bytes:
    """A PNG that claims a canvas and holds a few bytes of pixel data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("width,height,problem", [(11000, 10000, "11000x10000 px, more than"),
                                                  (30000, 30000, "larger than 100000000 pixels")])
def test_decompression_bombs_are_refused_from_the_header(width: int, height: int, problem: str) -> None:
    with pytest.raises(InputError, match=problem):
        decode_image(_png_header(width, height), "bomb.png")
