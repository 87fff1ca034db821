"""Exactness and properties of the pixel / image metrics against an independent dense-threshold reference."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from comgen.errors import InputError
from comgen.evaluate.curves import Curve, auc_up_to
from comgen.evaluate.groundtruth import GroundTruth, ground_truth_from_masks, saturation_area
from comgen.evaluate.metrics import (PixelCurveBuilder, SPRO_LIMITS, image_auroc, image_roc,
                                     pixel_curves)
from comgen.records import DefectSpec

DEFECTS = {
    10: DefectSpec("missing", 10, 0.5, True),
    20: DefectSpec("extra", 20, 30, False),
    30: DefectSpec("scratch", 30, 1.0, True),
}


# ------------------------------------------------------------------------------------ reference
def _ref_auc(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Independent integration: keep points below the limit, add the interpolated point, np.trapezoid."""
    below = x <= limit
    xs, ys = list(x[below]), list(y[below])
    if xs[-1] < limit:
        after = int(np.argmax(x > limit))
        x0, x1, y0, y1 = x[after - 1], x[after], y[after - 1], y[after]
        xs.append(limit)
        ys.append(y0 + (y1 - y0) * (limit - x0) / (x1 - x0))
    return float(np.trapezoid(ys, xs) / limit)


def _dense_reference(maps, gts, spro_defect=None):
    """Every distinct score as a threshold, one full binary map per threshold (slow; small inputs only).

    ``spro_defect``: sPRO over that defect's channels only (FPR still excludes every channel's pixels)."""
    maps = np.stack(maps)
    union = np.stack([g.union() if g is not None and g.channels else np.zeros(maps.shape[1:], bool) for g in gts])
    regions, channels = [], []
    for i, g in enumerate(gts):
        if g is None:
            continue
        for ch, sat, name in zip(g.channels, g.saturation, g.defects):
            if spro_defect is None or name == spro_defect:
                channels.append((i, ch, sat))
            lab, n = ndimage.label(ch, structure=np.ones((3, 3)))
            regions += [(i, lab == k) for k in range(1, n + 1)]
    n_ok = (~union).sum()
    xs, tpr, pro, spro = [0.0], [0.0], [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        b = maps >= t
        xs.append((b & ~union).sum() / n_ok)
        tpr.append((b & union).sum() / union.sum())
        pro.append(np.mean([(b[i] & r).sum() / r.sum() for i, r in regions]))
        spro.append(np.mean([min((b[i] & ch).sum() / sat, 1.0) for i, ch, sat in channels]))
    return np.array(xs), np.array(tpr), np.array(pro), np.array(spro)


def _random_case(rng: np.random.Generator, n_good: int = 3, n_bad: int = 4, size: int = 24, levels: int | None = None):
    maps, gts = [], []
    for _ in range(n_good):
        m = rng.random((size, size)).astype(np.float32)
        maps.append(np.round(m * levels) / levels if levels else m)
        gts.append(None)
    for _ in range(n_bad):
        masks = []
        for value in rng.choice(list(DEFECTS), size=rng.integers(1, 3), replace=False):
            mk = np.zeros((size, size), np.uint8)
            y, x = rng.integers(0, size - 8, 2)
            mk[y:y + rng.integers(3, 8), x:x + rng.integers(3, 8)] = value
            if rng.random() < 0.5:  # a disconnected second blob in the same channel
                mk[size - 3:, :3] = value
            masks.append(mk)
        gt = ground_truth_from_masks(masks, DEFECTS)
        m = rng.random((size, size)).astype(np.float32) + 0.3 * gt.union()
        maps.append((np.round(m * levels) / levels).astype(np.float32) if levels else m)
        gts.append(gt)
    return maps, gts


@pytest.mark.parametrize("levels", [None, 7])  # continuous scores, and heavy ties
def test_exact_curves_match_dense_reference(levels):
    rng = np.random.default_rng(3 if levels else 4)
    maps, gts = _random_case(rng, levels=levels)
    groups = ["good" if g is None else "bad" for g in gts]
    got = pixel_curves(maps, gts, groups, {"all": {"good", "bad"}}, chunk_pixels=500)["all"]
    x, tpr, pro, spro = _dense_reference(maps, gts)
    for lim in SPRO_LIMITS:
        assert got.spro.auc(lim) == pytest.approx(_ref_auc(x, spro, lim), abs=1e-4)
        assert got.pro.auc(lim) == pytest.approx(_ref_auc(x, pro, lim), abs=1e-4)
    assert got.pixel_auroc() == pytest.approx(_ref_auc(x, tpr, 1.0), abs=1e-4)
    # Every point of the compressed exact curve is a point of the dense curve.
    dense = np.stack([x, spro], 1)
    for px, py in zip(got.spro.x, got.spro.y):
        assert np.min(np.abs(dense - [px, py]).sum(1)) < 1e-9


def test_pixel_auroc_matches_sklearn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    maps, gts = _random_case(rng, levels=5)
    got = pixel_curves(maps, gts, ["g"] * len(gts), {"all": {"g"}})["all"].pixel_auroc()
    labels = np.concatenate([(g.union() if g else np.zeros_like(m, bool)).ravel() for m, g in zip(maps, gts)])
    assert got == pytest.approx(roc_auc_score(labels, np.concatenate([m.ravel() for m in maps])), abs=1e-9)


def _metrics(maps, gts, scores=None):
    groups = ["good" if g is None else "bad" for g in gts]
    c = pixel_curves(maps, gts, groups, {"all": {"good", "bad"}})["all"]
    scores = [float(m.max()) for m in maps] if scores is None else scores
    return c, image_auroc(scores, [g is not None for g in gts])


def test_perfect_map_scores_one_everywhere():
    rng = np.random.default_rng(1)
    _, gts = _random_case(rng)
    maps = [np.zeros((24, 24), np.float32) if g is None else g.union().astype(np.float32) for g in gts]
    c, img = _metrics(maps, gts)
    assert img == 1.0 and c.pixel_auroc() == 1.0 and c.aupro() == pytest.approx(1.0)
    assert all(v == pytest.approx(1.0) for v in c.auc_spro().values())


def test_inverted_map_scores_about_zero():
    rng = np.random.default_rng(2)
    _, gts = _random_case(rng)
    maps = [np.ones((24, 24), np.float32) if g is None else 1 - g.union().astype(np.float32) for g in gts]
    c, img = _metrics(maps, gts, scores=[float(g is None) for g in gts])  # e.g. a detector's inverted score
    assert img == 0.0 and c.pixel_auroc() == pytest.approx(0.0, abs=1e-9)
    assert c.aupro() == pytest.approx(0.0, abs=1e-9) and c.auc_spro()["0.05"] == pytest.approx(0.0, abs=1e-9)


def test_constant_and_random_maps_give_half_auroc():
    rng = np.random.default_rng(5)
    _, gts = _random_case(rng, n_good=20, n_bad=20)
    const = [np.full((24, 24), 0.5, np.float32) for _ in gts]
    c, img = _metrics(const, gts)
    assert img == 0.5 and c.pixel_auroc() == pytest.approx(0.5)
    rand = [rng.random((24, 24)).astype(np.float32) for _ in gts]
    c, img = _metrics(rand, gts)
    assert c.pixel_auroc() == pytest.approx(0.5, abs=0.03)
    assert img == pytest.approx(0.5, abs=0.25)


def test_relative_saturation_one_equals_pro():
    rng = np.random.default_rng(6)
    size = 32
    maps, gts = [], []
    for i in range(6):
        mk = np.zeros((size, size), np.uint8)
        y, x = rng.integers(0, 20, 2)
        mk[y:y + 6, x:x + 9] = 30  # one connected rectangle per channel -> PRO region == sPRO channel
        gt = ground_truth_from_masks([mk], DEFECTS) if i >= 2 else None
        gts.append(gt)
        maps.append(rng.random((size, size)).astype(np.float32) + (0.5 * (mk > 0) if gt else 0))
    c = pixel_curves(maps, gts, ["g"] * 6, {"all": {"g"}})["all"]
    for lim in SPRO_LIMITS:
        assert c.spro.auc(lim) == pytest.approx(c.pro.auc(lim), abs=1e-12)


def test_saturation_counts_region_fully_found_once_covered():
    # One channel of 40 pixels, absolute saturation 10: covering its 10 best pixels gives sPRO 1.
    mk = np.zeros((20, 20), np.uint8)
    mk[0:4, 0:10] = 20
    spec = {20: DefectSpec("extra", 20, 10, False)}
    gt = ground_truth_from_masks([mk], spec)
    assert gt.saturation == [10]
    amap = np.zeros((20, 20), np.float32)
    amap[0, 0:10] = 1.0  # exactly 10 pixels of the region above everything else
    b = PixelCurveBuilder()
    b.add_defects(amap, gt, "bad")
    b.freeze()
    b.add_background(amap, gt, "bad")
    c = b.curves({"bad"})
    assert c.spro.x[1] == 0.0 and c.spro.y[1] == pytest.approx(1.0)  # at FPR 0 already saturated
    assert c.pro.y[1] == pytest.approx(0.25)  # plain PRO: only 10 of 40 pixels
    assert c.auc_spro()["0.05"] == pytest.approx(1.0)
    # relative saturation uses int(threshold * area)
    assert saturation_area(40, DefectSpec("m", 10, 0.5, True)) == 20
    assert saturation_area(5, DefectSpec("x", 20, 30, False)) == 5


def test_several_masks_stay_separate_and_image_without_region():
    size = 16
    a = np.zeros((size, size), np.uint8)
    a[0:4, 0:4] = 10
    b = np.zeros((size, size), np.uint8)
    b[2:6, 2:6] = 30  # overlaps a: OR-ing would make one region
    gt = ground_truth_from_masks([a, b], DEFECTS)
    assert len(gt.channels) == 2 and gt.defects == ["missing", "scratch"]
    empty = ground_truth_from_masks([np.zeros((size, size), np.uint8)], DEFECTS)
    assert empty.channels == []  # anomalous image without region
    amap = np.zeros((size, size), np.float32)
    amap[0:4, 0:4] = 1.0  # finds channel a completely, channel b only on the 4 overlap pixels
    maps = [amap, np.zeros((size, size), np.float32), np.zeros((size, size), np.float32)]
    c = pixel_curves(maps, [gt, empty, None], ["bad", "bad", "good"], {"all": {"good", "bad"}})["all"]
    assert c.n_channels == 2 and c.n_regions == 2
    # at FPR 0: channel a saturated (relative 0.5 -> 8 px of 16 found) = 1; channel b 4/16 -> mean 0.625
    assert c.spro.y[1] == pytest.approx((1.0 + 4 / 16) / 2)
    assert c.pro.y[1] == pytest.approx((16 / 16 + 4 / 16) / 2)


def test_no_region_anywhere_gives_none():
    maps = [np.random.rand(8, 8).astype(np.float32) for _ in range(3)]
    c = pixel_curves(maps, [None] * 3, ["good"] * 3, {"all": {"good"}})["all"]
    assert c.pixel_auroc() is None and c.aupro() is None and c.auc_spro()["0.05"] is None


def test_mask_errors_name_the_file():
    two = np.zeros((8, 8), np.uint8)
    two[0, 0], two[1, 1] = 10, 20
    with pytest.raises(InputError, match="m.png.*several defect values"):
        ground_truth_from_masks([two], DEFECTS, sources=["m.png"])
    bad = np.full((8, 8), 99, np.uint8)
    with pytest.raises(InputError, match="n.png.*99"):
        ground_truth_from_masks([bad], DEFECTS, sources=["n.png"])
    gt = ground_truth_from_masks([np.full((8, 8), 10, np.uint8)], DEFECTS, sources=["k.png"])
    b = PixelCurveBuilder()
    with pytest.raises(InputError, match="k.png"):
        b.add_defects(np.zeros((9, 8), np.float32), gt, "bad")


def test_image_metrics():
    assert image_auroc([0.1, 0.2, 0.9, 0.8], [0, 0, 1, 1]) == 1.0
    assert image_auroc([0.1, 0.2], [0, 0]) is None
    roc = image_roc([0.1, 0.5, 0.5, 0.9], [0, 0, 1, 1])
    assert roc.auc() == pytest.approx(0.875)
    with pytest.raises(InputError):
        image_auroc([0.1, float("nan")], [0, 1])


def test_curve_auc_interpolates_at_limit():
    c = Curve(np.array([0.0, 0.2, 1.0]), np.array([0.0, 1.0, 1.0]))
    assert c.auc(0.1) == pytest.approx(0.25)  # triangle to (0.1, 0.5): 0.025 / 0.1
    assert auc_up_to(c.x, c.y, 1.0) == pytest.approx(0.9)
    assert c.simplified().x.size == 3
    g = GroundTruth([], [], [])
    assert g.union() is None


def test_for_plot_keeps_shape_and_endpoints():
    x = np.concatenate(([0.0], np.sort(np.random.rand(5000)), [1.0]))
    c = Curve(x, np.sqrt(x))
    p = c.for_plot(100)
    assert len(p["x"]) <= 102 and p["x"][0] == 0.0 and p["x"][-1] == 1.0
    assert sum(v <= 0.3 for v in p["x"]) >= 50  # dense where PRO / sPRO are read
    assert np.allclose(np.sqrt(p["x"]), p["y"], atol=1e-5)
