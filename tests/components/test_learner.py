import json

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from comgen.components.features import LearnerConfig
from comgen.components.learner import counterpart, learn_components
from comgen.components.model import ComponentModel
from comgen.components.preview import write_preview
from comgen.errors import ArtifactError, ConfigError, InputError
from tests.components.toy import toy_images

FAST = dict(image_size=64, use_backbone=False, k_min=2, k_max=4, select_pixels=3000)


@pytest.fixture(scope="module")
def toy():
    return toy_images(10, 64, seed=1)


@pytest.fixture(scope="module")
def model(toy):
    return learn_components(toy[0], LearnerConfig(**FAST))


def test_recovers_toy_parts(model, toy):
    imgs, truth = toy
    assert model.num_classes == 3 and model.background == 0
    assert model.tokens == ["<c1>", "<c2>"]
    seg = model.segment(imgs)
    assert seg.shape == truth.shape
    assert adjusted_rand_score(truth.ravel(), seg.ravel()) > 0.95
    assert (seg[:, :, 0] == 0).mean() > 0.9  # border is background


def test_compose_counts_instances(model, toy):
    imgs, truth = toy
    comp = model.compose(imgs[0], "0")
    counts = sorted(len(comp.by_class(k)) for k in (1, 2))
    assert counts == [1, 2]  # one disc, two squares (class ids by pixel share)


def test_segment_resizes_back(model, toy):
    big = np.stack([np.kron(im, np.ones((2, 2, 1), np.uint8)) for im in toy[0][:2]])
    seg = model.segment(big)
    assert seg.shape == (2, 128, 128)
    assert adjusted_rand_score(np.kron(toy[1][:2], np.ones((1, 2, 2), np.uint8)).ravel(), seg.ravel()) > 0.9


def test_save_load_round_trip(model, toy, tmp_path):
    model.save(tmp_path)
    meta = json.loads((tmp_path / "model.json").read_text())
    assert meta["tokens"] == ["<c1>", "<c2>"] and meta["backbone"] is None
    loaded = ComponentModel.load(tmp_path)
    assert np.array_equal(loaded.segment(toy[0][:3]), model.segment(toy[0][:3]))
    assert LearnerConfig.load(tmp_path / "config.yaml") == model.cfg


def test_load_refuses_missing_or_corrupt(model, tmp_path):
    with pytest.raises(ArtifactError, match="missing"):
        ComponentModel.load(tmp_path)
    model.save(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ArtifactError, match="unreadable"):
        ComponentModel.load(tmp_path)


def test_preview_png(model, toy, tmp_path):
    import cv2

    path = write_preview(tmp_path / "preview.png", model, toy[0], n=3)
    im = cv2.imread(str(path))
    assert im is not None and im.shape[0] > 3 * 192 and im.shape[1] == 2 * 192 + 4


def test_too_few_images(toy):
    with pytest.raises(InputError, match="at least 8"):
        learn_components(toy[0][:5], LearnerConfig(**FAST))


def test_uniform_images():
    imgs = np.full((10, 64, 64, 3), 128, np.uint8)
    with pytest.raises(InputError, match="uniform"):
        learn_components(imgs, LearnerConfig(**FAST))


def test_bad_config():
    with pytest.raises(ConfigError):
        LearnerConfig(k=1)
    with pytest.raises(ConfigError):
        LearnerConfig(k_select="elbow")


def test_with_random_backbone(toy, tmp_path):
    pytest.importorskip("comgen.features.backbone")
    cfg = LearnerConfig(image_size=64, backbone_weights="random", k=3, feature_weight=0.5)
    m = learn_components(toy[0], cfg)
    assert m.backbone_source == "random"
    assert adjusted_rand_score(toy[1].ravel(), m.segment(toy[0]).ravel()) > 0.9
    m.save(tmp_path)
    assert json.loads((tmp_path / "model.json").read_text())["backbone_source"] == "random"
    assert np.array_equal(ComponentModel.load(tmp_path).segment(toy[0][:2]), m.segment(toy[0][:2]))
    # centroid scores on the backbone grid, then upsampled = the full-resolution two-step form
    imgs = toy[0][:3]
    assert m.transform.pca_components is not None
    two_step = m.assign(m.pixel_features(imgs))
    assert (m.assign_images(imgs) == two_step).mean() > 0.999


def test_assign_images_without_backbone_matches_two_step(model, toy):
    imgs = toy[0][:3]
    assert np.array_equal(model.assign_images(imgs), model.assign(model.pixel_features(imgs)))


def test_flatfield_removes_a_lighting_ramp():
    from comgen.components.features import flatfield

    img = np.full((64, 64, 3), 0.4, np.float32)
    img[20:44, 20:44] = (0.9, 0.2, 0.1)  # a part in the middle must not bias the fit
    ramp = (1.0 + 0.25 * (np.arange(64, dtype=np.float32) / 64 - 0.5))[None, :, None]
    out = flatfield(img * ramp)
    assert np.ptp((img * ramp)[:, :, 0][0]) > 0.08 and np.ptp(out[:, :20, 0]) < 0.01
    assert np.allclose(out[32, 32], (0.9, 0.2, 0.1), atol=0.02)


def test_balanced_silhouette_rewards_a_small_distinct_cluster():
    from comgen.components.learner import balanced_silhouette

    rng = np.random.default_rng(0)
    big = rng.normal(0, 1, (2000, 2))
    small = rng.normal(0, 0.2, (60, 2)) + (6, 0)
    x = np.concatenate([big, small])
    merged = np.r_[np.zeros(2000, int), np.zeros(60, int)]
    merged[:1000] = 1  # big blob cut in two, small cluster lumped in
    split = np.r_[np.zeros(2000, int), np.ones(60, int)]
    assert balanced_silhouette(x, split, 2060, 0) > balanced_silhouette(x, merged, 2060, 0)


def test_min_color_distance_treats_never_together_clusters_as_one_part():
    from comgen.components.learner import min_color_distance

    lab = np.array([[0, 0, 0]] * 20 + [[0, 60, 0]] * 20 + [[0, -60, 0]] * 20, np.float32)
    labels = np.repeat([0, 1, 2], 20)
    together = np.tile(np.arange(10), 6)  # every image shows all three clusters
    assert min_color_distance(lab, labels, 3, 0.0, together) == pytest.approx(60.0)
    apart = np.r_[np.tile(np.arange(10), 2), np.repeat(np.arange(5), 4), np.repeat(np.arange(5, 10), 4)]
    assert min_color_distance(lab, labels, 3, 0.0, apart) == 0.0  # clusters 1 and 2 never share an image


def test_min_color_distance_counts_together_against_the_images_showing_either():
    from comgen.components.learner import min_color_distance

    lab = np.array([[0, 0, 0]] * 40 + [[0, 0, 70]] * 8, np.float32)
    labels = np.repeat([0, 1], [40, 8])
    # cluster 0 in all 10 images, cluster 1 (four pixels each) in images 0 and 1 only, always beside cluster 0
    image_of = np.r_[np.repeat(np.arange(10), 4), np.repeat([0, 1], 4)]
    assert min_color_distance(lab, labels, 2, 0.0, image_of) == 0.0  # together in 2 of the 10 images showing either


def test_split_by_color_keeps_a_part_that_shares_few_of_the_images_showing_either_half():
    """A yellow part in a fifth of the images, clustered with the white part every image shows (the yellow cable
    with the white connectors): counted against the images showing either half, they are one part in two
    colours and stay one cluster."""
    from types import SimpleNamespace

    from comgen.components.learner import split_by_color

    rng = np.random.default_rng(0)
    white = np.c_[rng.normal(60, 2, 900), rng.normal(0, 2, 900), rng.normal(0, 2, 900)]
    yellow = np.c_[rng.normal(55, 2, 100), rng.normal(-3, 2, 100), rng.normal(70, 2, 100)]
    x = np.r_[white, yellow].astype(np.float32)
    image_of = np.r_[np.arange(900) % 50, rng.integers(0, 10, 100)]  # yellow only in images 0-9 of 50
    tf = SimpleNamespace(scale=np.ones(3, np.float32), mean=np.zeros(3, np.float32))
    _, splits = split_by_color(x, np.zeros(1000, int), x.mean(0, keepdims=True), tf,
                               LearnerConfig(k_max=4, split_min_share=0.01), image_of)
    assert splits == 0  # together in 10 of the 50 images showing either: taken for one part


def test_the_counterpart_toggles_the_instance_stage_and_shares_the_colour_classes(toy):
    """The composition prior's second model: the stage fitted when the model has none, dropped when it has one."""
    model = learn_components(toy[0], LearnerConfig(**dict(FAST, instances=False)))
    twin = counterpart(model, toy[0])
    back = counterpart(twin, toy[0])
    assert model.instance_stage is None and twin.instance_stage is not None and twin.cfg.instances
    assert back.instance_stage is None and not back.cfg.instances
    np.testing.assert_array_equal(twin.centroids, model.centroids)
    np.testing.assert_array_equal(back.segment_working(toy[0][:3]), model.segment_working(toy[0][:3]))
    assert model.cfg.instances is False and model.instance_stage is None  # the run's own model is left alone


def test_one_pixel_pass_segments_a_model_and_its_counterpart(model, toy):
    """``segment_views`` gives each twin the maps it would segment alone; a model with other colour classes is
    refused, since its pixels would be assigned differently."""
    twin = counterpart(model, toy[0])
    assert model.shares_pixel_stage(twin) and twin.shares_pixel_stage(model)
    own, other = model.segment_views(toy[0][:5], twins=(twin,))
    np.testing.assert_array_equal(own, model.segment_working(toy[0][:5]))
    np.testing.assert_array_equal(other, twin.segment_working(toy[0][:5]))
    stranger = learn_components(toy[0], LearnerConfig(**dict(FAST, k=2)))
    assert not model.shares_pixel_stage(stranger)
    with pytest.raises(ValueError, match="share"):
        model.segment_views(toy[0][:2], twins=(stranger,))


def _two_colours(first_ab, second_ab, n=500, spread=2.0, seed=0):
    rng = np.random.default_rng(seed)
    parts = [np.c_[rng.normal(50, spread, n), rng.normal(a, spread, n), rng.normal(b, spread, n)]
             for a, b in (first_ab, second_ab)]
    return np.concatenate(parts).astype(np.float32)


def test_split_by_color_splits_two_hues_and_keeps_one_hue_at_two_saturations():
    """A red cable and a pink rod in one cluster are split; a purple part's saturated highlight is not split off."""
    from types import SimpleNamespace

    from comgen.components.learner import split_by_color

    tf = SimpleNamespace(scale=np.ones(3, np.float32), mean=np.zeros(3, np.float32))
    cfg = LearnerConfig(k_max=4, split_min_share=0.01, split_silhouette=0.5, split_hue_deg=20.0)
    for ab, ab2, want in (((41, 27), (41, -10), 1), ((30, -33), (52, -55), 0)):
        x = _two_colours(ab, ab2)
        _, splits = split_by_color(x, np.zeros(len(x), int), x.mean(0, keepdims=True), tf, cfg)
        assert splits == want, (ab, ab2)


def test_other_hue_compares_hue_angles_unless_a_colour_is_near_grey():
    from comgen.components.learner import other_hue

    cfg = LearnerConfig(split_hue_deg=20.0)
    assert other_hue(np.array([[50, 41, 27], [50, 41, -10]], float), cfg)  # red, pink
    assert not other_hue(np.array([[50, 30, -33], [50, 52, -55]], float), cfg)  # purple, saturated purple
    assert other_hue(np.array([[50, 1, 2], [50, 30, -33]], float), cfg)  # grey has no hue to compare
    with pytest.raises(ConfigError, match="split_hue_deg"):
        LearnerConfig(split_hue_deg=200.0)
