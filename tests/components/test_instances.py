"""The instance stage: same-colour parts of different shapes split, low-contrast parts found, rims absorbed."""

import cv2
import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from comgen.components.features import LearnerConfig
from comgen.components.instances import (
    InstanceOptions,
    InstanceStage,
    _split_touching,
    absorb_rims,
    blob_mask,
    find_instances,
    fit_stage,
    shading_classes,
)
from comgen.components.learner import learn_components
from comgen.components.model import ComponentModel

SIZE = 96
FAST = dict(image_size=SIZE, use_backbone=False, k_min=2, k_max=4, select_pixels=3000, instances=False)
INSTANCES = dict(FAST, instances=True)
GROWN = dict(instance_blob_hysteresis=0.5, instance_fringe_px=6.0, instance_islands_apart=True)  # the options' values
METAL = (170, 170, 176)


def _scene(rng: np.random.Generator, pale: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Two discs and two bars of one metal colour on a dark background (truth 1 disc, 2 bar); with ``pale`` a
    third part type, a square only a few grey levels brighter than the background (truth 3)."""
    img = np.full((SIZE, SIZE, 3), 60, np.uint8)
    truth = np.zeros((SIZE, SIZE), np.uint8)
    cells = rng.permutation(9)[:6 if pale else 4]
    for n, cell in enumerate(cells):
        cy, cx = 16 + 32 * (cell // 3) + rng.integers(-3, 4), 16 + 32 * (cell % 3) + rng.integers(-3, 4)
        kind = 1 + n % 3 if pale else 1 + n % 2
        m = np.zeros((SIZE, SIZE), np.uint8)
        if kind == 1:
            cv2.circle(m, (int(cx), int(cy)), 9, 1, -1)
        elif kind == 2:
            box = cv2.boxPoints(((float(cx), float(cy)), (24.0, 6.0), float(rng.uniform(0, 180))))
            cv2.fillPoly(m, [box.astype(np.int32)], 1)
        else:
            m[cy - 4:cy + 4, cx - 4:cx + 4] = 1
        img[m > 0] = METAL if kind < 3 else (76, 76, 76)
        truth[m > 0] = kind
    noise = rng.normal(0, 1.5, img.shape)
    return np.clip(img + noise, 0, 255).astype(np.uint8), truth


def _scenes(n: int, seed: int, pale: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    pairs = [_scene(rng, pale) for _ in range(n)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def _class_of(seg: np.ndarray, truth: np.ndarray, t: int) -> int:
    return int(np.bincount(seg[truth == t]).argmax())


@pytest.fixture(scope="module")
def metal():
    return _scenes(16, 0), _scenes(4, 1)


def test_parts_of_one_colour_get_a_class_per_shape(metal):
    (train, _), (test, truth) = metal
    pixels = learn_components(train, LearnerConfig(**FAST)).segment(test)
    assert _class_of(pixels, truth, 1) == _class_of(pixels, truth, 2)  # the colour learner cannot tell them apart
    model = learn_components(train, LearnerConfig(**INSTANCES))
    seg = model.segment(test)
    assert _class_of(seg, truth, 1) != _class_of(seg, truth, 2)
    assert 0 not in (_class_of(seg, truth, 1), _class_of(seg, truth, 2))
    assert adjusted_rand_score(truth.ravel(), seg.ravel()) > 0.9
    assert model.num_classes == 3 and model.pixel_classes == 2


def test_low_contrast_part_is_found():
    train, _ = _scenes(16, 2, pale=True)
    test, truth = _scenes(4, 3, pale=True)
    pixels = learn_components(train, LearnerConfig(**FAST)).segment(test)
    assert _class_of(pixels, truth, 3) == 0  # sixteen grey levels: the colour learner leaves it background
    seg = learn_components(train, LearnerConfig(**INSTANCES)).segment(test)
    assert len({_class_of(seg, truth, t) for t in (0, 1, 2, 3)}) == 4


def test_instance_model_round_trip(metal, tmp_path):
    (train, _), (test, _) = metal
    model = learn_components(train, LearnerConfig(**INSTANCES))
    model.save(tmp_path)
    loaded = ComponentModel.load(tmp_path)
    assert loaded.num_classes == model.num_classes and loaded.tokens == model.tokens
    assert np.array_equal(loaded.segment(test), model.segment(test))


def test_rims_go_to_the_part_they_surround_but_a_wire_on_the_background_stays():
    m = np.zeros((64, 64), np.uint8)
    cv2.circle(m, (20, 20), 10, 2, -1)  # a halo of class 2 ...
    cv2.circle(m, (20, 20), 8, 3, -1)  # ... around a disc of class 3
    m[50:52, 5:60] = 2  # a two-pixel wire of class 2 on the background
    out = absorb_rims(m, {0}, rim_px=3.0)
    assert (out[m == 3] == 3).all()
    ring = (m == 2) & (np.arange(64)[:, None] < 40)
    assert (out[ring] == 3).all()
    assert (out[50:52, 5:60] == 2).all()


def test_the_rim_of_a_background_coloured_part_on_a_fixture_joins_the_part():
    m = np.zeros((64, 64), np.uint8)
    m[8:56, 8:56] = 1  # a fixture (surface 1) on the background
    cv2.circle(m, (32, 32), 10, 2, -1)  # the blurred edge (class 2) ...
    cv2.circle(m, (32, 32), 7, 0, -1)  # ... of a part of the background's colour lying on the fixture
    part = m == 0
    part[:8], part[56:], part[:, :8], part[:, 56:] = False, False, False, False
    out = absorb_rims(m, {0, 1}, rim_px=3.0, island_share=0.05)
    edge = m == 2
    inner = edge & (cv2.dilate(part.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0)
    assert inner.any() and (out[inner] == 0).all()  # the edge next to the part goes with it
    assert (out[edge & ~inner] == 1).all()  # the rest of the blur stays with the fixture
    assert (absorb_rims(m, {0, 1}, rim_px=3.0)[edge] == 1).all()  # without islands: the fixture takes it all
    washer = np.zeros((64, 64), np.uint8)
    cv2.circle(washer, (32, 32), 12, 3, -1)  # a washer (class 3, no surface) around the same edge and hole
    cv2.circle(washer, (32, 32), 10, 2, -1)
    cv2.circle(washer, (32, 32), 7, 0, -1)
    out = absorb_rims(washer, {0}, rim_px=3.0, island_share=0.05)
    assert (out[washer == 2] == 3).all()  # a part's own rim stays the part's


def test_touching_parts_are_split():
    m = np.zeros((40, 70), np.uint8)
    cv2.circle(m, (20, 20), 12, 1, -1)
    cv2.circle(m, (44, 20), 12, 1, -1)
    parts = _split_touching(m.astype(bool))
    assert parts.max() == 2
    one = np.zeros((40, 40), np.uint8)
    cv2.circle(one, (20, 20), 12, 1, -1)
    assert _split_touching(one.astype(bool)).max() == 1


def test_find_instances_skips_surfaces_and_tiny_regions():
    m = np.zeros((64, 64), np.uint8)
    m[10:20, 10:20] = 1
    m[40:50, 40:50] = 1
    m[5:6, 60:61] = 1  # one pixel: below the smallest instance
    m[30:64, 0:30] = 2  # a surface
    labels, groups = find_instances(m, None, {0, 2}, InstanceOptions(min_area=0.001))
    assert groups.tolist() == [1, 1] and labels.max() == 2


def test_a_region_of_a_class_without_a_fitted_split_keeps_its_class():
    """A colour class seen only in specks when the stage was fitted has one class and no split; a large region of
    it later (an extra part of that colour) keeps that class instead of vanishing into the background."""
    stage = InstanceStage({0: 0, 1: 1}, {}, float("inf"), 2, (0,), InstanceOptions(min_area=0.001))
    m = np.zeros((64, 64), np.uint8)
    m[20:30, 20:30] = 1
    out = stage.refine(m, np.zeros((64, 64, 3), np.float32), None)
    assert (out[20:30, 20:30] == 1).all() and (out[m == 0] == 0).all()


def test_count_stability_prefers_part_types_with_steady_counts():
    from comgen.components.instances import count_stability

    image_of = np.repeat(np.arange(10), 3)  # three instances in each of ten images
    steady = np.tile([0, 0, 1], 10)  # two of one type and one of another in every image
    assert count_stability(steady, image_of, 2, 10) == 1.0
    rng = np.random.default_rng(0)
    random_halves = rng.integers(0, 2, 30)  # one type cut in two at random
    assert count_stability(random_halves, image_of, 2, 10) < 0.7


def test_a_damaged_instance_stage_is_one_line(metal, tmp_path):
    import json

    from comgen.errors import ArtifactError

    (train, _), _ = metal
    learn_components(train, LearnerConfig(**INSTANCES)).save(tmp_path)
    meta = json.loads((tmp_path / "model.json").read_text())
    meta["instance_stage"]["surface_class"] = [0, 1]
    (tmp_path / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="instance stage missing or inconsistent"):
        ComponentModel.load(tmp_path)


def test_a_usually_absent_cluster_is_not_steady():
    from comgen.components.instances import steady_counts

    image_of = np.repeat(np.arange(10), 3)
    labels = np.tile([0, 0, 0], 10)
    labels[[0, 3]] = 1  # a stray instance in two images: steadily absent, not a part type
    st = steady_counts(labels, image_of, 2, 10)
    assert st[0] == pytest.approx(0.8) and st[1] == 0.0


def _group(rng: np.random.Generator, n_img: int, types: list[tuple[int, float, float]]) -> tuple[np.ndarray, ...]:
    """Descriptors [n, 5 + 4] of instances of several part types: (count per image, log area, circularity) each;
    the colour varies as much within a type as it does between them."""
    from comgen.components.instances import SHAPE_DIMS

    desc, image_of, truth = [], [], []
    for t, (count, log_area, circ) in enumerate(types):
        for i in range(n_img):
            for _ in range(count):
                shape = [log_area + rng.normal(0, 0.04), 0.05, circ + rng.normal(0, 0.015), 0.95, 0.0]
                colour = [60 + rng.normal(0, 8), 10 + rng.normal(0, 8), 20 + rng.normal(0, 8), 5.0]
                desc.append(shape[:SHAPE_DIMS] + colour)
                image_of.append(i)
                truth.append(t)
    return np.asarray(desc, np.float32), np.asarray(image_of), np.asarray(truth)


def test_two_close_part_types_are_split_beneath_a_distinct_third():
    """Discs and hexagons (close in area and circularity) and long bars: the first split takes the bars off, the
    nested one separates discs from hexagons, because both halves keep a steady count in every image."""
    from comgen.components.instances import cluster_group

    rng = np.random.default_rng(0)
    desc, image_of, truth = _group(rng, 40, [(3, -6.0, 1.0), (3, -5.8, 0.91), (2, -4.0, 0.4)])
    group = cluster_group(desc, image_of, InstanceOptions(), 0, 40)
    assert adjusted_rand_score(truth, group.assign(desc)) > 0.95
    flat = cluster_group(desc, image_of, InstanceOptions(split_depth=1), 0, 40)
    assert len(flat.centroids) == 2  # one level of splits alone leaves discs and hexagons together


def test_one_part_type_with_noisy_colour_stays_one_class():
    from comgen.components.instances import cluster_group

    rng = np.random.default_rng(1)
    desc, image_of, _ = _group(rng, 40, [(3, -6.0, 1.0)])
    assert len(cluster_group(desc, image_of, InstanceOptions(), 0, 40).centroids) == 1


def _lit_scenes(n: int, tray: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Pixel maps and Lab images of a background lit from one side (L drifts from 35 to 65 across the image),
    which colour clustering cuts into a dark band (class 0) and a light one (class 1), and, with ``tray``, a
    bright tray with a sharp edge on the dark band (class 2)."""
    rng = np.random.default_rng(0)
    ramp = np.repeat(np.linspace(35.0, 65.0, 64)[None, :], 64, 0)
    maps, labs = [], []
    for _ in range(n):
        lab = np.stack([ramp, np.zeros_like(ramp), np.zeros_like(ramp)], -1) + rng.normal(0, 0.5, (64, 64, 3))
        m = (ramp >= 50).astype(np.uint8)
        if tray:
            lab[20:44, 6:26, 0] = 85.0
            m[20:44, 6:26] = 2
        maps.append(m)
        labs.append(lab)
    return np.stack(maps), np.stack(labs).astype(np.float32)


def test_a_band_of_uneven_light_is_background_and_a_tray_is_not():
    maps, labs = _lit_scenes(4)
    assert shading_classes(maps, labs, {0, 1, 2}, ratio=3.0) == {1}
    assert shading_classes(maps, labs, {0, 1, 2}, ratio=0.0) == set()  # off
    stage, info = fit_stage(maps, labs, None, 3, InstanceOptions())
    assert stage.shading == (1,) and info["shading"] == [1] and 1 not in stage.surfaces
    out = stage.refine(maps[0], labs[0], None)
    assert (out[maps[0] == 1] == 0).all()  # the light band is read as the background
    assert (out[maps[0] == 2] == stage.surface_class[2]).all() and stage.surface_class[2] != 0
    arrays, meta = stage.to_arrays()
    assert InstanceStage.from_arrays(arrays, meta).shading == (1,)
    meta.pop("shading")  # a stage saved before the rule reads as having no bands
    assert InstanceStage.from_arrays(arrays, meta).shading == ()


def test_a_texture_of_bands_alone_keeps_its_bands():
    maps, labs = _lit_scenes(4, tray=False)
    assert shading_classes(maps, labs, {0, 1}, ratio=3.0) == {1}
    stage, _ = fit_stage(maps, labs, None, 2, InstanceOptions())
    assert stage.shading == () and stage.num_classes == 2


def _varying_group(rng: np.random.Generator, n_img: int, looks: list[tuple[float, float]], counts,
                   fragments: float = 0.0) -> tuple[np.ndarray, ...]:
    """Descriptors of instances whose shape is one of ``looks`` (log area, circularity); ``counts(rng)`` gives one
    image's count of each look. With ``fragments``, that many thin scraps of any size per image on average."""
    from comgen.components.instances import SHAPE_DIMS

    desc, image_of, truth = [], [], []
    for i in range(n_img):
        for t, count in enumerate(counts(rng)):
            log_area, circ = looks[t]
            for _ in range(count):
                desc.append([log_area + rng.normal(0, 0.03), 0.05, circ + rng.normal(0, 0.01), 0.95, 0.0][:SHAPE_DIMS]
                            + [60 + rng.normal(0, 8), 10 + rng.normal(0, 8), 20 + rng.normal(0, 8), 5.0])
                image_of.append(i)
                truth.append(t)
        for _ in range(rng.poisson(fragments)):
            desc.append([rng.uniform(-8, -6), rng.uniform(1, 4), rng.uniform(0.05, 0.3), rng.uniform(0.3, 0.9), 0.0]
                        + [60 + rng.normal(0, 8), 10 + rng.normal(0, 8), 20 + rng.normal(0, 8), 5.0])
            image_of.append(i)
            truth.append(len(looks))
    return np.asarray(desc, np.float32), np.asarray(image_of), np.asarray(truth)


def test_part_types_whose_counts_vary_are_split_by_their_shape_modes():
    """Three squares per image beside one or two discs, of one colour, and scraps: the discs' count varies, so the
    steady-count rule keeps the types together, but each type is a tight mode of its shape."""
    from comgen.components.instances import cluster_group

    rng = np.random.default_rng(0)
    desc, image_of, truth = _varying_group(rng, 40, [(-5.3, 0.78), (-5.7, 0.9)],
                                           lambda r: (3, int(r.integers(1, 3))), fragments=0.5)
    parts = truth < 2
    without = cluster_group(desc, image_of, InstanceOptions(shape_modes=False), 0, 40)
    assert len(set(without.assign(desc[parts]).tolist())) == 1
    group = cluster_group(desc, image_of, InstanceOptions(), 0, 40)
    assert adjusted_rand_score(truth[parts], group.assign(desc[parts])) > 0.95
    assert len(set(group.assign(desc[parts]).tolist())) == 2 and len(group.presence) == len(group.classes)


def test_two_looks_of_one_part_type_stay_one_class():
    """A part drawn in two shapes that trade counts (three per image, each in either look), and a part drawn in
    two shapes a pixel apart (pins on a grid, each spot always the same): one type each."""
    from comgen.components.instances import cluster_group

    def trade(r: np.random.Generator) -> tuple[int, int]:
        a = int(r.integers(0, 4))
        return a, 3 - a

    desc, image_of, _ = _varying_group(np.random.default_rng(1), 40, [(-5.3, 0.78), (-5.9, 0.95)], trade)
    assert len(cluster_group(desc, image_of, InstanceOptions(), 0, 40).classes) == 1
    assert len(cluster_group(desc, image_of, InstanceOptions(mode_trade=-2.0), 0, 40).classes) == 2
    desc, image_of, _ = _varying_group(np.random.default_rng(1), 40, [(-5.3, 0.9), (-5.05, 0.93)], lambda r: (2, 1))
    assert len(cluster_group(desc, image_of, InstanceOptions(), 0, 40).classes) == 1
    assert len(cluster_group(desc, image_of, InstanceOptions(mode_gap=0.0), 0, 40).classes) == 2


def test_a_stage_with_shape_modes_round_trips_and_assigns_the_same():
    from comgen.components.instances import MODE_DIMS, Group, cluster_group

    rng = np.random.default_rng(2)
    desc, image_of, _ = _varying_group(rng, 40, [(-5.3, 0.78), (-5.7, 0.9)], lambda r: (3, int(r.integers(1, 3))))
    group = cluster_group(desc, image_of, InstanceOptions(), 0, 40)
    assert group.mode_centroids.shape[1] == MODE_DIMS and len(group.mode_parent) >= 2
    stage = InstanceStage({0: 0}, {1: group}, float("inf"), 1 + len(group.classes))
    arrays, meta = stage.to_arrays()
    again = InstanceStage.from_arrays(arrays, meta).groups[1]
    np.testing.assert_array_equal(again.assign(desc), group.assign(desc))
    plain = InstanceStage({0: 0}, {1: Group(group.mean, group.scale, group.centroids, group.classes[:1])}, 0.0, 2)
    assert "instances.1.mode_parent" not in plain.to_arrays()[0]  # a stage without modes saves as before
    for name, bad in (("mode_slot", arrays["instances.1.mode_slot"] + len(group.classes)),
                      ("mode_centroids", arrays["instances.1.mode_centroids"][:, :2])):
        with pytest.raises(ValueError, match="group 1's shape modes do not match"):
            InstanceStage.from_arrays({**arrays, f"instances.1.{name}": bad}, meta)


def test_a_small_region_of_a_surface_class_lying_on_the_background_is_a_part():
    """A bolt of the fixture's colour beside it is a piece; a ring's hole, a blur between two parts and the blur
    between two surfaces are not."""
    from comgen.components.instances import surface_pieces

    m = np.zeros((64, 64), np.uint8)
    m[2:30, 2:62] = 1  # the fixture (surface 1)
    m[40:44, 4:20] = 1  # a bolt of its colour on the background
    cv2.circle(m, (40, 52), 6, 2, -1)  # a ring (class 2) whose hole took the fixture's colour
    cv2.circle(m, (40, 52), 2, 1, -1)
    m[52:60, 20:28], m[52:60, 30:38] = 3, 3  # two parts with the fixture's colour between them
    m[54:58, 28:30] = 1
    m[32:36, 44:64] = 4  # a second surface, and a blur of the fixture's colour between it and the background
    m[36:38, 44:64] = 1
    out = surface_pieces(m, 1, {0, 1, 4}, InstanceOptions())
    assert out[40:44, 4:20].all()
    assert not out[m != 1].any() and not out[2:30, 2:62].any()
    assert not out[38:43, 50:55].any() and not out[54:58, 28:30].any() and not out[36:38, 44:64].any()


def test_only_a_surface_of_large_regions_is_searched_for_pieces():
    from comgen.components.instances import compact_surfaces

    maps = np.zeros((3, 64, 64), np.uint8)
    maps[:, 4:40, 4:60] = 1  # a fixture
    maps[:, 48:60, 8:20] = 1  # and a part of its colour
    for y in range(44, 64, 4):
        maps[:, y:y + 2, 24::4] = 2  # the grains of a texture
    assert compact_surfaces(maps, {0, 1, 2}, 0.05) == {1}


def _fixture_scene(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A light fixture holding two blue discs, and a bolt of the fixture's colour on the dark background beside it
    (truth: 1 fixture, 2 disc, 3 bolt)."""
    img = np.full((SIZE, SIZE, 3), 50, np.uint8)
    truth = np.zeros((SIZE, SIZE), np.uint8)
    img[6:56, 6:90], truth[6:56, 6:90] = (200, 200, 196), 1
    for cx in (28, 68):
        cx += int(rng.integers(-4, 5))
        cv2.circle(truth, (cx, 31), 8, 2, -1)
    y, x = int(rng.integers(68, 84)), int(rng.integers(10, 60))
    box = cv2.boxPoints(((float(x + 12), float(y)), (24.0, 7.0), float(rng.uniform(-20, 20))))
    cv2.fillPoly(truth, [box.astype(np.int32)], 3)
    img[truth == 2] = (40, 80, 200)
    img[truth == 3] = (200, 200, 196)
    noise = rng.normal(0, 1.5, img.shape)
    return np.clip(img + noise, 0, 255).astype(np.uint8), truth


def test_a_part_of_a_fixture_colour_beside_it_gets_a_class_of_its_own(tmp_path):
    rng = np.random.default_rng(4)
    scenes = [_fixture_scene(rng) for _ in range(20)]
    train = np.stack([s[0] for s in scenes[:16]])
    test, truth = np.stack([s[0] for s in scenes[16:]]), np.stack([s[1] for s in scenes[16:]])
    plain = learn_components(train, LearnerConfig(**INSTANCES, instance_surface_pieces=False)).segment(test)
    assert _class_of(plain, truth, 3) == _class_of(plain, truth, 1)  # the bolt reads as the fixture
    model = learn_components(train, LearnerConfig(**INSTANCES, instance_surface_pieces=True))
    seg = model.segment(test)
    bolt, fixture = _class_of(seg, truth, 3), _class_of(seg, truth, 1)
    assert bolt not in (0, fixture, _class_of(seg, truth, 2))
    assert (seg[truth == 3] == bolt).mean() > 0.9 and (seg[truth == 1] == fixture).mean() > 0.95
    model.save(tmp_path)
    assert np.array_equal(ComponentModel.load(tmp_path).segment(test), seg)


def test_the_hole_of_a_ring_of_the_background_colour_on_a_fixture_is_no_part():
    from comgen.components.instances import surface_pieces

    m = np.zeros((64, 64), np.uint8)
    m[2:50, 2:62] = 1  # the fixture
    cv2.circle(m, (30, 25), 8, 0, -1)  # a dark ring of the background's class ...
    cv2.circle(m, (30, 25), 4, 1, -1)  # ... whose hole shows the fixture
    m[54:60, 10:30] = 1  # a part of the fixture's colour on the background
    out = surface_pieces(m, 1, {0, 1}, InstanceOptions())
    assert not out[20:31, 25:36].any() and out[54:60, 10:30].all()


def test_a_faint_part_reaches_out_to_its_half_peak_and_noise_stays_out():
    from comgen.components.instances import hysteresis

    yy, xx = np.mgrid[:64, :64]
    r = np.hypot(yy - 20, xx - 20)
    dev = np.clip(10.0 - r, 0, None)  # a part: 10 at its centre, falling off over its edge
    dev[50:53, 50:53] = 4.0  # a patch of noise above half the threshold only
    out = hysteresis(dev, 6.0, 0.5).astype(bool)
    assert np.array_equal(out[:40, :40], r[:40, :40] < 5)  # out to half its peak, below the threshold
    assert not out[50:53, 50:53].any()
    strong = np.clip(30.0 - r, 0, None)  # a clear part: its half peak lies above the threshold, which then holds
    assert np.array_equal(hysteresis(strong, 6.0, 0.5).astype(bool), strong > 6.0)


def test_an_island_takes_the_inner_half_of_its_fringe_on_a_fixture_but_a_ring_hole_on_the_background_does_not():
    from comgen.components.instances import background_islands, island_fringes

    m = np.zeros((64, 64), np.uint8)
    lab = np.full((64, 64, 3), 20.0, np.float32)  # the background's colour
    m[2:40, 2:62], lab[2:40, 2:62] = 1, 80.0  # a fixture (surface 1)
    inner, disc = np.zeros((64, 64), np.uint8), np.zeros((64, 64), np.uint8)
    cv2.circle(disc, (20, 20), 8, 1, -1)  # a dark part: a fringe of class 2 around a core of the background's class
    cv2.circle(inner, (20, 20), 6, 1, -1)
    m[disc > 0], lab[disc > 0] = 2, 65.0  # the fringe's outer half, nearer the fixture's colour
    lab[inner > 0] = 35.0  # and its inner half, nearer the core's
    cv2.circle(m, (20, 20), 4, 0, -1)
    cv2.circle(lab, (20, 20), 4, (20.0, 20.0, 20.0), -1)
    m[10:14, 40:56], lab[10:14, 40:56] = 2, 35.0  # a bar of class 2 on the fixture, away from the part
    cv2.circle(m, (40, 52), 7, 3, -1)  # a ring of class 3 lying on the background, its hole the background
    cv2.circle(m, (40, 52), 3, 0, -1)
    islands = background_islands(m == 0, 0.05)
    assert islands[20, 20] and islands[52, 40]
    out = island_fringes(m, lab, islands, {0, 1}, 6.0)
    assert np.array_equal(out[:40, :40], inner[:40, :40] > 0)  # the core and the inner half of its fringe
    assert not out[10:14, 40:56].any()
    assert not out[m == 3].any()  # the ring's hole is not grown into the ring


def test_an_island_with_its_fringe_is_one_instance_of_the_islands_group():
    from comgen.components.instances import ISLANDS, island_mask

    m = np.zeros((64, 64), np.uint8)
    m[2:62, 2:62] = 1
    cv2.circle(m, (30, 30), 9, 2, -1)
    cv2.circle(m, (30, 30), 5, 0, -1)
    lab = np.where((m == 1)[..., None], 80.0, 20.0).astype(np.float32)  # the fringe in the core's colour
    wide = InstanceOptions(fringe_px=24.0, min_area=0.001, islands_apart=True)  # 6 px at this size
    islands = island_mask(lab, m, wide, {0, 1})
    labels, groups = find_instances(m, None, {0, 1}, wide, islands=islands)
    assert groups.tolist() == [ISLANDS]  # one part: the core with its fringe, not a ring of class 2 as well
    assert (labels > 0).sum() == (m[2:62, 2:62] != 1).sum()
    blobs = blob_mask(lab, m, float("inf"), InstanceOptions(), {0, 1})  # by default: the bare core among the blobs
    labels, groups = find_instances(m, blobs, {0, 1}, InstanceOptions(min_area=0.001))
    assert sorted(groups.tolist()) == [-1, 2]


def test_a_stage_saved_before_fringes_and_hysteresis_segments_as_it_did(metal):
    (train, _), (test, _) = metal
    grown = learn_components(train, LearnerConfig(**INSTANCES, **GROWN))
    arrays, meta = grown.instance_stage.to_arrays()
    assert meta["options"]["fringe_px"] == 6.0 and meta["options"]["blob_hysteresis"] == 0.5
    assert meta["options"]["islands_apart"]
    assert InstanceStage.from_arrays(arrays, meta).options == grown.instance_stage.options
    plain = learn_components(train, LearnerConfig(**INSTANCES))
    arrays, meta = plain.instance_stage.to_arrays()
    assert not {"fringe_px", "blob_hysteresis", "islands_apart"} & set(meta["options"])  # off: saved as before
    for cfg in (plain.cfg, grown.cfg):  # a bundle's learner settings: the off options left out, read back whole
        assert LearnerConfig.from_dict(cfg.portable_dict()) == cfg
    assert grown.cfg.portable_dict()["instance_fringe_px"] == 6.0
    assert "instance_fringe_px" not in plain.cfg.portable_dict()
    loaded = InstanceStage.from_arrays(arrays, meta)
    assert loaded.options == plain.instance_stage.options
    assert np.array_equal(ComponentModel(plain.cfg, plain.centroids, plain.transform, instance_stage=loaded)
                          .segment(test), plain.segment(test))


def test_bad_fringe_or_hysteresis_settings_are_refused():
    from comgen.errors import ConfigError

    with pytest.raises(ConfigError, match="instance_blob_hysteresis"):
        LearnerConfig(instance_blob_hysteresis=1.5)
    with pytest.raises(ConfigError, match="instance_fringe_px"):
        LearnerConfig(instance_fringe_px=-1)
