import numpy as np
import pytest

from comgen.components.composition import (
    CLASS_FEATURES,
    compose,
    composition_vector,
    vector_names,
)


def _scene():
    cm = np.zeros((40, 40), np.uint8)
    cm[2:8, 2:8] = 1  # one class-1 part (36 px)
    cm[20:24, 20:24] = 2  # two class-2 parts
    cm[30:34, 30:34] = 2
    cm[0, 39] = 2  # a 1-px speck, dropped by min_area
    img = np.zeros((40, 40, 3), np.uint8)
    img[cm == 1] = (255, 0, 0)
    img[cm == 2] = (0, 0, 255)
    return cm, img


def test_compose_instances_and_attributes():
    cm, img = _scene()
    comp = compose(cm, img, "x", min_area=4)
    assert sorted(c.class_id for c in comp.components) == [1, 2, 2]
    c1 = comp.by_class(1)[0]
    assert c1.area == 36 and c1.bbox == (2, 2, 8, 8)
    assert c1.centroid == pytest.approx((4.5, 4.5))
    assert c1.color_lab[1] > 50  # red: large positive a*
    assert c1.mask.sum() == 36 and c1.mask[2:8, 2:8].all()
    assert comp.prompt() == "a photo of <c1> <c2> <c2>"


def test_vector_counts_positions_nn_and_grid():
    cm, img = _scene()
    comp = compose(cm, img, "x", min_area=4)
    v = composition_vector(comp.components, (40, 40), num_classes=4, grid=2)
    per = len(CLASS_FEATURES) + 4
    assert len(v) == 3 * per == len(vector_names(4, grid=2))
    c1, c2, c3 = v[:per], v[per:2 * per], v[2 * per:]
    assert c1[0] == 1 and c2[0] == 2 and c3[0] == 0
    assert c1[1] == pytest.approx(36 / 1600)
    assert c1[7] == 1.5  # no second instance
    assert c2[7] == pytest.approx(np.hypot(10, 10) / 40)
    assert list(c2[len(CLASS_FEATURES):]) == [0, 0, 0, 2]  # both in the bottom-right cell
    assert np.isnan(c3[3]) and np.isnan(c3[8])  # absent class: undefined position / colour
    assert list(c3[len(CLASS_FEATURES):]) == [0, 0, 0, 0]


def test_area_spread_is_the_log_ratio_of_a_class_s_largest_to_smallest_instance():
    cm, img = _scene()
    cm[30:34, 30:38] = 2  # the second class-2 part is now twice the first's area
    comp = compose(cm, img, "x", min_area=4)
    plain = composition_vector(comp.components, (40, 40), num_classes=4, grid=2)
    v = composition_vector(comp.components, (40, 40), num_classes=4, grid=2, area_spread=True)
    assert len(v) == len(plain) + 3 == len(vector_names(4, grid=2, area_spread=True))
    np.testing.assert_array_equal(v[:len(plain)], plain)  # the other features keep their columns
    assert v[len(plain):] == pytest.approx([0.0, np.log(2.0), 0.0])  # one part, two parts, no part


def test_holes_are_a_class_s_mean_number_of_enclosed_holes():
    cm, img = _scene()
    cm[10:20, 2:14] = 1  # a second class-1 part, a connector with two slots
    cm[13:16, 4:6] = 0
    cm[13:16, 9:11] = 0
    comp = compose(cm, img, "x", min_area=4)
    spread = composition_vector(comp.components, (40, 40), num_classes=4, grid=2, area_spread=True)
    v = composition_vector(comp.components, (40, 40), num_classes=4, grid=2, area_spread=True, holes=True)
    assert len(v) == len(spread) + 3 == len(vector_names(4, grid=2, area_spread=True, holes=True))
    np.testing.assert_array_equal(v[:len(spread)], spread)  # the holes come last
    assert v[len(spread):] == pytest.approx([1.0, 0.0, 0.0])  # (0 + 2) / 2 slots, no holes, no part


def test_compose_rejects_mismatched_shapes():
    cm, img = _scene()
    with pytest.raises(ValueError):
        compose(cm[:20], img, "x")
