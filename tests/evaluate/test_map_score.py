"""Maps that carry the image score: the maximum ranks images as the score does, and the rest of the map stays."""

from __future__ import annotations

import numpy as np
import pytest

from comgen.errors import ArtifactError
from comgen.evaluate.map_score import carry_score, peak_stats, peak_targets, read_peak_stats


def _maps(rng: np.random.Generator, n: int, shape: tuple[int, int] = (32, 32)) -> list[np.ndarray]:
    return [rng.normal(size=shape).astype(np.float32) for _ in range(n)]


def test_each_maximum_becomes_its_target_and_ranks_as_the_score() -> None:
    rng = np.random.default_rng(0)
    stats = peak_stats(rng.normal(size=20), _maps(rng, 20))
    maps = _maps(rng, 6) + [rng.normal(size=(9, 13)).astype(np.float32)]  # sizes may differ
    scores = np.array([-3.0, -0.5, 0.0, 0.4, 2.0, 8.0, 30.0], np.float32)
    carry_score(maps, scores, stats, width=0.5)
    tops = np.array([m.max() for m in maps])
    np.testing.assert_allclose(tops, peak_targets(scores, stats), rtol=1e-6, atol=1e-5)
    assert (np.diff(tops) > 0).all()  # the map maxima rank the images exactly as the scores


def test_a_raise_reaches_only_the_pixels_near_the_peak() -> None:
    m = np.zeros((16, 16), np.float32)
    m[3, 4], m[10, 10] = 5.0, 1.0  # one peak, one pixel four units below it, a flat background
    stats = {"score_mean": 0.0, "score_std": 1.0, "max_mean": 5.0, "max_std": 1.0}
    raised = m.copy()
    carry_score([raised], np.array([3.0]), stats, width=0.5)  # target 8: three above the peak
    assert raised[3, 4] == pytest.approx(8.0)
    assert raised[10, 10] - 1.0 < 3.0 * np.exp(-4.0 / 0.5) + 1e-6
    assert np.abs(raised[m == 0]).max() < 3.0 * np.exp(-5.0 / 0.5) + 1e-6
    clipped = m.copy()
    carry_score([clipped], np.array([-4.5]), stats, width=0.5)  # target 0.5: below the peak
    assert clipped.max() == pytest.approx(0.5)
    np.testing.assert_array_equal(clipped[m <= 0.5], m[m <= 0.5])  # only what stood above the target moved


def test_without_stats_each_map_is_shifted_to_its_score() -> None:
    rng = np.random.default_rng(1)
    maps = _maps(rng, 2)
    shape = [m - m.max() for m in maps]
    carry_score(maps, np.array([2.5, -1.0], np.float32), None, width=0.5)
    assert [float(m.max()) for m in maps] == [2.5, -1.0]
    for m, s in zip(maps, shape):
        np.testing.assert_allclose(m - m.max(), s, atol=1e-6)


def test_stored_stats_are_checked() -> None:
    good = {"score_mean": 0.0, "score_std": 1.0, "max_mean": 2.0, "max_std": 0.5}
    assert read_peak_stats(good, "calibration.json") == good
    assert read_peak_stats(None, "calibration.json") is None
    for bad in ({**good, "max_std": 0.0}, {**good, "score_mean": float("nan")}, {"score_mean": 0.0}, [1, 2]):
        with pytest.raises(ArtifactError, match="calibration.json: map_peak entry is malformed"):
            read_peak_stats(bad, "calibration.json")
