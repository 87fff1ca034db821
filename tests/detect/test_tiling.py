"""Tiled mode: the grid covers the image at its own aspect ratio, blending is exact, and a detector trained and run
on tiles finds a few-pixel defect in a 1700x1000 image that a 256 px square would lose."""

from __future__ import annotations

import numpy as np
import pytest

from comgen.detect.config import DetectorConfig
from comgen.detect.tiling import axis_starts, blend, cut, grid_for, image_max, make_grid, to_original, window
from comgen.errors import ConfigError, InputError

from .conftest import LARGE_H, LARGE_W, large_image


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


@pytest.mark.slow
def test_native_tiles_find_a_six_pixel_defect_that_a_256_px_square_loses(tmp_path) -> None:
    import cv2

    from comgen.detect.csda import HeadConfig
    from comgen.detect.data import Material, Splits, TiledParts
    from comgen.detect.predict import Detector
    from comgen.detect.train import train_detector
    from comgen.features.backbone import BackboneConfig

    cfg = DetectorConfig(image_size=128, tile_scale=1.0, tile_overlap=0.125, epochs=3, batch_size=8, lr=3e-3,
                         backbone=BackboneConfig(weights="random", layers=(1, 2)), head=HeadConfig(k=2, dim=16,
                         img_dim=8), ref_pool=3, rematch_every=2, augment_variants=0, bank={"window": 1,
                         "global_grid": 2})
    rng = np.random.default_rng(0)

    def parts(defects: list[int], prefix: str) -> TiledParts:
        p = TiledParts(cfg)
        for i, n in enumerate(defects):
            img, _, mask = large_image(rng, n)
            p.add(img, mask.astype(np.float32), float(n > 0), f"{prefix}{i}", [f"{prefix}{i}"])
        return p

    normals, val = parts([0, 0], "n"), parts([0, 6], "v")
    bank = normals.material()
    splits = Splits(Material.concat([bank, parts([6, 6], "g").material()]), val.material(), bank.images, bank.ids,
                    normals.whole_images(), val.whole_images())
    train_detector(tmp_path, cfg, splits=splits, log=lambda m: None, cpu=True)
    det = Detector.load(tmp_path)

    y, x = 613, 1121
    test, clean, _ = large_image(rng, at=(y, x))
    others = [large_image(rng)[0] for _ in range(2)]
    scores, maps = det.predict([test, clean, *others], notice=None)
    assert maps.shape == (4, LARGE_H, LARGE_W)  # at the original resolution
    peak = np.unravel_index(int(maps[0].argmax()), maps[0].shape)
    assert abs(peak[0] - (y + 3)) <= 8 and abs(peak[1] - (x + 3)) <= 8  # the map's maximum is on the defect
    assert maps[0].max() > maps[1:].max() + 2.0
    assert scores[0] > scores[1:].max() + 5.0 and scores[0] > det.threshold

    squash = [cv2.resize(im, (256, 256), interpolation=cv2.INTER_AREA).astype(int) for im in (test, clean, *others)]
    assert np.abs(test.astype(int) - clean).max() >= 80  # plain at full resolution
    assert np.abs(squash[0] - squash[1]).max() <= 2  # squashed: at most 2 grey levels left of it, anywhere
    assert np.abs(squash[2] - squash[3]).max() > 40  # while two normal images differ by far more
