import numpy as np
import pytest

from comgen.components.density import ComponentRealism, CompositionDensity, DensityConfig
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
