"""The map PNG codec: z-values come back to within half a level, whatever the map's range."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from comgen.errors import InputError
from comgen.serve.mapcodec import LEVELS, decode_map_png, encode_map_png


@pytest.mark.parametrize("spread", [0.01, 5.0, 100.0])
def test_round_trip_within_half_a_level(spread: float) -> None:
    rng = np.random.default_rng(0)
    amap = (rng.normal(0, 1, (37, 53)) * spread - 1.5).astype(np.float32)
    data, scale, offset = encode_map_png(amap)
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert img.dtype == np.uint16 and img.shape == (37, 53)
    back = decode_map_png(data, scale, offset)
    assert np.abs(back - amap).max() <= (amap.max() - amap.min()) / LEVELS / 2 + 1e-5
    assert back.min() == pytest.approx(amap.min(), abs=1e-5) and back.max() == pytest.approx(amap.max(), abs=1e-4)


def test_constant_map_comes_back_exactly() -> None:
    data, scale, offset = encode_map_png(np.full((4, 6), 2.5, np.float32))
    assert scale == 0 and offset == 2.5
    assert np.array_equal(decode_map_png(data, scale, offset), np.full((4, 6), 2.5, np.float32))


@pytest.mark.parametrize("bad", [np.full((3, 3), np.nan, np.float32), np.zeros((2, 3, 3), np.float32)])
def test_refuses_non_finite_or_non_2d(bad: np.ndarray) -> None:
    with pytest.raises(InputError):
        encode_map_png(bad)


def test_decode_refuses_8_bit_png() -> None:
    ok, buf = cv2.imencode(".png", np.zeros((4, 4), np.uint8))
    with pytest.raises(InputError, match="16-bit"):
        decode_map_png(buf.tobytes(), 1.0, 0.0)
