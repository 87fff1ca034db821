import numpy as np
import pytest

from comgen.components.density import ComponentRealism, CompositionDensity, DensityConfig, low_density_threshold
from comgen.errors import ConfigError, InputError
from comgen.records import Component


def test_threshold_and_scores_separate_outliers():
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (200, 4))
    d = CompositionDensity(DensityConfig(percentile=1.0), num_classes=3).fit(x)
    assert np.mean(d.normal_scores < d.threshold) == pytest.approx(0.01, abs=0.011)
    far = np.array([[6.0, 0, 0, 0], [0, -7.0, 0, 0]])
    assert d.is_low(far).all()
    assert d.score(np.zeros((1, 4)))[0] > d.threshold


def test_one_far_normal_image_does_not_set_the_low_density_bar():
    scores = np.random.default_rng(0).normal(-30.0, 3.0, 60)
    bulk = float(np.percentile(scores, 1.0))
    with_outlier = np.append(scores, -250.0)  # one badly segmented normal image
    assert np.percentile(with_outlier, 1.0) < -100.0  # the plain percentile is the outlier's
    assert low_density_threshold(with_outlier, 1.0, 3.0) == pytest.approx(bulk, abs=1.0)
    assert low_density_threshold(with_outlier, 1.0, 0.0) == pytest.approx(np.percentile(with_outlier, 1.0))
    assert low_density_threshold(scores, 1.0, 3.0) == pytest.approx(bulk)  # no far-out score: unchanged


def test_an_edit_rarer_than_the_bulk_of_normals_is_low_density_despite_an_outlier_image():
    rng = np.random.default_rng(2)
    x = np.zeros((60, 2))
    x[:, 0] = 2.0  # two parts in every image ...
    x[:, 1] = rng.normal(0.5, 0.05, 60)
    x[0] = [9.0, 0.5]  # ... but one image was segmented into nine
    d = CompositionDensity(DensityConfig(), num_classes=2).fit(x)
    assert d.is_low(np.array([[1.0, 0.5]]))[0]  # a missing part
    plain = CompositionDensity(DensityConfig(outlier_fence=0.0), num_classes=2).fit(x)
    assert not plain.is_low(np.array([[1.0, 0.5]]))[0]


def test_nan_features_are_imputed_and_constant_columns_scored():
    x = np.zeros((40, 3))
    x[:, 0] = 2.0  # always exactly two parts
    x[:, 1] = np.random.default_rng(1).normal(0.5, 0.05, 40)
    x[::2, 2] = np.nan  # undefined colour when absent
    d = CompositionDensity(DensityConfig(), num_classes=2).fit(x)
    assert np.isfinite(d.normal_scores).all()
    assert d.is_low(np.array([[3.0, 0.5, np.nan]]))[0]  # one part too many
    assert not d.is_low(np.array([[2.0, 0.5, np.nan]]))[0]


def test_density_needs_data_and_valid_config():
    with pytest.raises(InputError):
        CompositionDensity(DensityConfig(), 2).fit(np.zeros((1, 3)))
    with pytest.raises(InputError, match="not fitted"):
        CompositionDensity(DensityConfig(), 2).score(np.zeros((1, 3)))
    with pytest.raises(ConfigError):
        DensityConfig(percentile=0)
    with pytest.raises(ConfigError):
        DensityConfig(covariance_type="weird")
    with pytest.raises(ConfigError, match="outlier_fence"):
        DensityConfig(outlier_fence=-1.0)


def _comp(k, area, lab, side=None):
    side = side or int(np.sqrt(area))
    m = np.zeros((64, 64), bool)
    m[:side, :side] = True
    return Component(class_id=k, mask=m, centroid=(side / 2, side / 2), area=area, color_lab=lab,
                     bbox=(0, 0, side, side), orientation=0.0)


def test_realism_ranges():
    normal = [_comp(1, 100 + i, (50.0, 60.0, 40.0)) for i in range(20)] + \
             [_comp(2, 16, (30.0, 10.0, -50.0)) for _ in range(20)]
    r = ComponentRealism(DensityConfig()).fit(normal, (64, 64))
    assert r.realistic(_comp(1, 110, (52.0, 58.0, 41.0)), (64, 64))
    assert r.realistic(_comp(1, 110, (30.0, 10.0, -50.0)), (64, 64))  # another real part's colour
    assert not r.realistic(_comp(1, 1000, (50.0, 60.0, 40.0)), (64, 64))  # ten times too big
    assert not r.realistic(_comp(1, 110, (90.0, -80.0, 80.0)), (64, 64))  # a colour no part has
    with pytest.raises(InputError):
        ComponentRealism(DensityConfig()).fit([], (64, 64))
