"""read_rgb / read_mask conversion rules and their one-line refusals."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from comgen.data.imageio import read_mask, read_rgb, resize_mask, resize_rgb
from comgen.errors import DatasetError, InputError
from tests.data.fixtures import save


def test_rgb_png_round_trip_keeps_channel_order(tmp_path):
    rgb = np.zeros((8, 10, 3), np.uint8)
    rgb[..., 0] = 200  # red
    save(tmp_path / "r.png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    out = read_rgb(tmp_path / "r.png")
    assert out.shape == (8, 10, 3) and out.dtype == np.uint8
    assert (out[..., 0] == 200).all() and (out[..., 1:] == 0).all()


def test_gray_is_replicated(tmp_path):
    g = np.arange(64, dtype=np.uint8).reshape(8, 8)
    save(tmp_path / "g.png", g)
    out = read_rgb(tmp_path / "g.png")
    assert out.shape == (8, 8, 3)
    assert (out == g[:, :, None]).all()


def test_16bit_is_scaled_by_high_byte(tmp_path):
    g = np.full((6, 6, 3), 0xABCD, np.uint16)
    save(tmp_path / "d.png", g)
    out = read_rgb(tmp_path / "d.png")
    assert out.dtype == np.uint8 and (out == 0xAB).all()


def test_rgba_drops_alpha(tmp_path):
    a = np.zeros((5, 5, 4), np.uint8)
    a[..., 2] = 90  # red channel in BGRA
    a[..., 3] = 0  # fully transparent: colour kept as stored
    save(tmp_path / "a.png", a)
    out = read_rgb(tmp_path / "a.png")
    assert out.shape == (5, 5, 3) and (out[..., 0] == 90).all()


def test_palette_is_expanded(tmp_path):
    p = Image.new("P", (4, 4))
    p.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    p.putpixel((1, 2), 1)
    p.save(tmp_path / "p.png")
    out = read_rgb(tmp_path / "p.png")
    assert tuple(out[2, 1]) == (10, 200, 30) and tuple(out[0, 0]) == (0, 0, 0)


@pytest.mark.parametrize("content, problem", [(b"", "empty file"), (b"not an image at all", "corrupt")])
def test_corrupt_and_empty_files_are_refused(tmp_path, content, problem):
    f = tmp_path / "bad.png"
    f.write_bytes(content)
    with pytest.raises(DatasetError, match=problem) as exc:
        read_rgb(f)
    assert str(f) in str(exc.value) and "\n" not in str(exc.value)


def test_truncated_png_is_refused(tmp_path):
    good = save(tmp_path / "ok.png", np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    trunc = tmp_path / "trunc.png"
    trunc.write_bytes(good.read_bytes()[:60])
    with pytest.raises(DatasetError, match="trunc.png"):
        read_rgb(trunc)


def test_missing_file(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        read_rgb(tmp_path / "nope.png")


def test_mask_keeps_values_and_refuses_colour_and_16bit(tmp_path):
    m = np.zeros((6, 6), np.uint8)
    m[1:3, 1:3] = 254
    save(tmp_path / "m.png", m)
    assert (read_mask(tmp_path / "m.png") == m).all()
    save(tmp_path / "m3.png", np.repeat(m[:, :, None], 3, 2))  # gray stored as RGB is fine
    assert (read_mask(tmp_path / "m3.png") == m).all()
    col = np.zeros((6, 6, 3), np.uint8)
    col[0, 0] = (1, 2, 3)
    save(tmp_path / "c.png", col)
    with pytest.raises(DatasetError, match="single channel"):
        read_mask(tmp_path / "c.png")
    save(tmp_path / "m16.png", m.astype(np.uint16) * 256)
    with pytest.raises(DatasetError, match="8-bit"):
        read_mask(tmp_path / "m16.png")


def test_resize_rules():
    rgb = np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8)
    assert resize_rgb(rgb, 32).shape == (32, 32, 3)
    assert resize_rgb(rgb, (20, 30)).shape == (20, 30, 3)
    m = np.zeros((40, 60), np.uint8)
    m[:, 30:] = 7
    r = resize_mask(m, 17)
    assert r.shape == (17, 17) and set(np.unique(r)) == {0, 7}  # nearest: no blended values
    b = resize_mask(m.astype(bool), (8, 8))
    assert b.dtype == bool
    with pytest.raises(InputError):
        resize_rgb(rgb, 0)
