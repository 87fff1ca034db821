"""Decoding uploads: the same RGB arrays as ``read_rgb`` gives for the same file, and one line for bad bytes."""

from __future__ import annotations

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
