"""The composition prior: count errors invisible patch-wise are flagged, it round-trips, and training wires it in."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from sklearn.metrics import roc_auc_score

from comgen.components.features import LearnerConfig
from comgen.components.learner import counterpart, learn_components
from comgen.detect.composition_prior import PARTNER_DIR, PRIOR_DIR, CompositionPrior, PriorConfig
from comgen.errors import ArtifactError, ConfigError
from comgen.generate.config import GenerateConfig
from comgen.rundir import RunDir
from tests.detect.conftest import SIZE, tiny_config, toy_image, toy_splits


def _images(kind: str, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([toy_image(rng, SIZE, kind)[0] for _ in range(n)])


@pytest.fixture(scope="module")
def component_model():
    cfg = LearnerConfig(image_size=SIZE, k=3, use_backbone=False, pixels_per_image=300, max_fit_pixels=6000,
                        select_pixels=2000, instances=False)
    return learn_components(_images("good", 16, 0), cfg)


@pytest.fixture(scope="module")
def prior(component_model) -> CompositionPrior:
    return CompositionPrior.fit(component_model, _images("good", 24, 1), _images("good", 8, 2))


def test_missing_and_extra_parts_score_far_above_normals(prior: CompositionPrior) -> None:
    good = prior.score(_images("good", 12, 3))
    anomalous = np.concatenate([prior.score(_images("missing", 6, 4)), prior.score(_images("extra", 6, 5))])
    labels = np.r_[np.zeros(len(good)), np.ones(len(anomalous))]
    assert roc_auc_score(labels, np.r_[good, anomalous]) == 1.0
    assert abs(float(np.median(good))) < 3.0  # calibrated: normals near z = 0
    assert anomalous.min() > good.max() + 3.0


def test_round_trip_gives_identical_scores(prior: CompositionPrior, tmp_path: Path) -> None:
    images = np.concatenate([_images("good", 3, 6), _images("extra", 3, 7)])
    back = CompositionPrior.load(prior.save(tmp_path / "p"))
    np.testing.assert_allclose(back.score(images), prior.score(images), rtol=1e-5, atol=1e-5)


def test_load_names_the_missing_file(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="vectors.safetensors"):
        CompositionPrior.load(tmp_path)


def test_the_prior_reads_the_size_spread_and_the_holes_and_the_generator_does_not() -> None:
    for option in ("area_spread", "holes"):
        assert getattr(PriorConfig().density, option)
        assert getattr(PriorConfig.from_dict({"density": {"grid": 3}}).density, option)  # a partial mapping keeps it
        assert not getattr(PriorConfig.from_dict({"density": {option: False}}).density, option)
        assert not getattr(GenerateConfig().compositional.density, option)


@pytest.mark.parametrize("option", ["area_spread", "holes"])
def test_vectors_that_do_not_match_the_config_are_one_line(prior: CompositionPrior, tmp_path: Path,
                                                           option: str) -> None:
    d = prior.save(tmp_path / "p")
    n_classes = prior.model.num_classes - 1
    assert prior.train_vectors.shape[1] == len(prior.density.vector([], (8, 8)))  # the option's columns are there
    cfg = prior.cfg.replace(density=prior.cfg.density.replace(**{option: False}))
    cfg.save(d / "config.yaml")  # as a prior saved before the feature, whose config read it as absent
    width = prior.train_vectors.shape[1]
    with pytest.raises(ArtifactError, match=rf"vectors.safetensors: {width} features per image, where config.yaml "
                                            rf"asks for {width - n_classes}; retrain"):
        CompositionPrior.load(d)


def test_a_prior_saved_before_the_holes_asks_for_a_retrain(component_model, tmp_path: Path) -> None:
    cfg = PriorConfig.from_dict({"density": {"holes": False}})
    d = CompositionPrior.fit(component_model, _images("good", 24, 1), _images("good", 8, 2), cfg=cfg).save(
        tmp_path / "p")
    saved = yaml.safe_load((d / "config.yaml").read_text())
    del saved["density"]["holes"]  # as written before the option existed
    (d / "config.yaml").write_text(yaml.safe_dump(saved))
    with pytest.raises(ArtifactError, match="features per image, where config.yaml asks for .*; retrain"):
        CompositionPrior.load(d)


def test_the_retired_fuse_option_loads_at_its_old_default_only() -> None:
    assert PriorConfig.from_dict({"fuse": "max"}) == PriorConfig()
    with pytest.raises(ConfigError, match="fuse"):
        PriorConfig.from_dict({"fuse": "sum"})


def test_training_fits_the_prior_and_predict_fuses_it(component_model, tmp_path: Path) -> None:
    from comgen.detect.predict import Detector
    from comgen.detect.train import train_detector

    run = RunDir(tmp_path / "run")
    component_model.save(run.components)
    cfg = tiny_config(epochs=1, prior=PriorConfig(learner_seeds=3))
    res = train_detector(run, cfg, splits=toy_splits(), log=lambda m: None, cpu=True)
    entry = res.calibration["prior"]
    assert entry["enabled"] and (run.detector / PRIOR_DIR / "components" / "model.json").is_file()
    assert entry["partner"] and (run.detector / PRIOR_DIR / PARTNER_DIR / "components" / "model.json").is_file()
    assert entry["learner_seeds"] == 3 and (run.detector / PRIOR_DIR / "seed2" / PARTNER_DIR).is_dir()
    assert res.calibration["threshold"] != res.calibration["threshold_network"]
    assert set(res.calibration["val_branch_scores"]) == {"network", "prior", "memory", "global", "counts"}
    assert entry["counts"] and "counts" in res.calibration["fusion"]["weights"]  # composition: opt-in

    det = Detector.load(run.root)
    images = np.concatenate([_images("good", 4, 8), _images("missing", 4, 9)])
    scores, _ = det.predict(images, notice=None)
    parts = det.last_parts
    assert np.isfinite(parts["prior"]).all() and np.isfinite(parts["counts"]).all()
    np.testing.assert_allclose(scores, det.fusion.apply(parts), rtol=1e-6)
    assert parts["prior"][4:].min() > parts["prior"][:4].max()


def test_training_segments_each_image_once_for_both_models(component_model, tmp_path: Path, monkeypatch) -> None:
    """The counterpart is learnt first, so that one pixel pass gives both models' class maps of the bank and
    validation images; only the counterpart's own instance fit reads its sample again."""
    from comgen.components.model import ComponentModel
    from comgen.detect.calibration import attach_prior, prior_inputs

    run = RunDir(tmp_path / "run")
    component_model.save(run.components)
    cfg, splits = tiny_config(epochs=1, prior=PriorConfig(learner_seeds=1)), toy_splits()  # one seed: two models
    bank, val, _ = prior_inputs(splits, cfg)
    seen: list[int] = []
    pixel_stage = ComponentModel.pixel_stage

    def counting(self, images, deep=None):
        seen.append(len(images))
        return pixel_stage(self, images, deep)

    monkeypatch.setattr(ComponentModel, "pixel_stage", counting)
    entry, _, counts, seg = attach_prior(run, splits, cfg, lambda m: None)
    assert counts is not None and len(counts) == len(val)
    assert entry["partner"] and len(seg.bank) == len(bank)
    assert sum(seen) == min(component_model.cfg.instance_fit_images, len(bank)) + len(bank) + len(val)


def test_a_prior_without_partner_is_one_model(component_model, tmp_path: Path) -> None:
    from comgen.detect.predict import Detector
    from comgen.detect.train import train_detector

    run = RunDir(tmp_path / "run")
    component_model.save(run.components)
    cfg = tiny_config(epochs=1, prior=PriorConfig(partner=False))
    res = train_detector(run, cfg, splits=toy_splits(), log=lambda m: None, cpu=True)
    assert res.calibration["prior"]["partner"] is False and not (run.detector / PRIOR_DIR / PARTNER_DIR).exists()
    assert Detector.load(run.root).prior.partner is None


def test_training_without_component_model_leaves_the_prior_off(tmp_path: Path) -> None:
    from comgen.detect.train import train_detector

    res = train_detector(tmp_path / "run", tiny_config(epochs=1), splits=toy_splits(), log=lambda m: None, cpu=True)
    assert res.calibration["prior"] == {"enabled": False, "reason": "the run has no component model (`comgen learn`)"}
    assert not (tmp_path / "run" / "detector" / PRIOR_DIR).exists()


def test_predict_reuses_the_detector_features_when_the_backbones_match() -> None:
    """Same weights, layer and size: the prior segments from the detector's features, with identical scores."""
    import torch

    from comgen.detect.csda import CSDA
    from comgen.detect.predict import Detector
    from comgen.features.backbone import build_backbone
    from comgen.features.memory import MemoryBank, MemoryBankConfig

    cfg = tiny_config()
    learner = LearnerConfig(image_size=SIZE, k=3, backbone_weights="random", pixels_per_image=300,
                            max_fit_pixels=6000, select_pixels=2000)
    model = learn_components(_images("good", 12, 10), learner)
    prior = CompositionPrior.fit(model, _images("good", 16, 11), _images("good", 6, 12))
    backbone = build_backbone(cfg.backbone)
    bank = MemoryBank.build(_images("good", 6, 13), [f"n{i}" for i in range(6)], backbone,
                            MemoryBankConfig.from_dict({**cfg.bank, "image_size": SIZE, "k": cfg.head.k}))
    cal = {"score_mean": 0.0, "score_std": 1.0, "map_mean": 0.0, "map_std": 1.0, "threshold": 3.0}
    det = Detector(cfg, CSDA(backbone, cfg.head), bank, cal, Path("."), torch.device("cpu"), prior)
    assert det._prior_scale == 0  # learner layer 1 = the detector's first scale
    images = np.concatenate([_images("good", 3, 14), _images("missing", 3, 15)])
    det.predict(images, notice=None)
    np.testing.assert_allclose(det.last_parts["prior"], prior.score(images), rtol=1e-4, atol=1e-4)
    assert model.shared_feature_index(backbone, SIZE * 2) is None  # another working size: no sharing


def test_tiled_mode_keeps_the_prior_on_the_whole_image(component_model, tmp_path: Path) -> None:
    """In tiled mode the network scores tiles, the prior the whole image at the untiled working size; both fused."""
    import cv2

    from comgen.detect.data import Material, Splits, TiledParts
    from comgen.detect.predict import Detector
    from comgen.detect.tiling import whole
    from comgen.detect.train import train_detector

    cfg = tiny_config(epochs=1, tiles=2)
    rng = np.random.default_rng(4)

    def wide(kind: str) -> tuple[np.ndarray, np.ndarray]:  # 64x96: not square, so the grid is 3 x 4 tiles
        img, mask = toy_image(rng, SIZE, kind)
        return cv2.resize(img, (96, 64)), cv2.resize(mask.astype(np.uint8), (96, 64)) > 0

    def parts(kinds: list[str], prefix: str) -> TiledParts:
        p = TiledParts(cfg)
        for i, kind in enumerate(kinds):
            img, mask = wide(kind)
            p.add(img, mask.astype(np.float32), float(kind != "good"), f"{prefix}{i}", [f"{prefix}{i}"])
        return p

    normals, val = parts(["good"] * 8, "t"), parts(["good"] * 4 + ["missing"] * 2, "v")
    bank = normals.material()
    splits = Splits(Material.concat([bank, parts(["missing", "extra"] * 2, "g").material()]), val.material(),
                    bank.images, bank.ids, normals.whole_images(), val.whole_images())
    run = RunDir(tmp_path / "run")
    component_model.save(run.components)
    res = train_detector(run, cfg, splits=splits, log=lambda m: None, cpu=True)
    assert res.calibration["prior"]["enabled"] and len(res.calibration["val_normal_scores"]) == 4

    det = Detector.load(run.root)
    images = [wide("good")[0] for _ in range(3)] + [wide("missing")[0] for _ in range(3)]
    scores, maps = det.predict(images, notice=None)
    parts_ = det.last_parts
    np.testing.assert_allclose(parts_["prior"], det.prior.score(np.stack([whole(i, SIZE) for i in images])),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(scores, det.fusion.apply(parts_), rtol=1e-6)
    assert parts_["prior"][3:].min() > parts_["prior"][:3].max()  # the missing part is seen on the whole image
    assert maps.shape == (6, 64, 96)


@pytest.fixture(scope="module")
def paired(component_model) -> tuple[CompositionPrior, np.ndarray]:
    """A prior with its counterpart model (the instance stage fitted on the same training normals)."""
    val = _images("good", 10, 2)
    prior = CompositionPrior.fit(component_model, _images("good", 24, 1), val)
    train = _images("good", 24, 1)
    z = prior.fit_partner(counterpart(component_model, train), train, val, np.ones(len(val), bool),
                          prior.z(prior.nll(val)))
    return prior, z


def test_the_partner_is_the_counterpart_model_and_the_pair_is_calibrated(paired, component_model) -> None:
    prior, val_z = paired
    twin = prior.partner.model
    assert component_model.instance_stage is None and twin.instance_stage is not None
    np.testing.assert_array_equal(twin.centroids, component_model.centroids)  # one pixel stage, shared
    assert prior.partner.partner is None and not prior.partner.cfg.partner
    assert abs(float(val_z.mean())) < 1e-5 and abs(float(val_z.std()) - 1.0) < 1e-4  # standardised again


def test_the_pair_scores_the_mean_of_both_models(paired) -> None:
    prior, _ = paired
    images = np.concatenate([_images("good", 4, 8), _images("missing", 3, 9), _images("extra", 3, 10)])
    own = prior.z(prior.nll(images))
    other = prior.partner.score(images)
    want = ((own + other) / 2 - prior.pair_mean) / prior.pair_std
    np.testing.assert_allclose(prior.score(images), want, rtol=1e-5, atol=1e-5)
    assert prior.score(images)[4:].min() > prior.score(images)[:4].max()  # the pair still sees the counts


def test_one_segmentation_serves_both_models(paired) -> None:
    """The partner shares the pixel stage: ``segment`` gives both models' maps, and scoring with them is scoring
    from the images."""
    prior, _ = paired
    images = np.concatenate([_images("good", 3, 14), _images("extra", 3, 15)])
    maps, partner_maps = prior.segment(images)
    np.testing.assert_array_equal(maps, prior.model.segment_working(images))
    np.testing.assert_array_equal(partner_maps, prior.partner.model.segment_working(images))
    np.testing.assert_allclose(prior.score(images, maps=maps, partner_maps=partner_maps), prior.score(images))


def test_the_pair_round_trips_and_a_damaged_pair_is_one_line(paired, tmp_path: Path) -> None:
    import json

    prior, _ = paired
    images = np.concatenate([_images("good", 3, 6), _images("extra", 3, 7)])
    d = prior.save(tmp_path / "p")
    assert (d / PARTNER_DIR / "calibration.json").is_file()
    loaded = CompositionPrior.load(d)
    assert loaded.model.shares_pixel_stage(loaded.partner.model)  # still one pixel pass after a reload
    np.testing.assert_allclose(loaded.score(images), prior.score(images), rtol=1e-5, atol=1e-5)
    loaded.save(tmp_path / "single")
    loaded.partner = None
    loaded.save(tmp_path / "single")  # refitted without a counterpart: the earlier one's folder goes
    assert not (tmp_path / "single" / PARTNER_DIR).exists()
    cal = json.loads((d / "calibration.json").read_text())
    cal["pair"]["std"] = 0.0
    (d / "calibration.json").write_text(json.dumps(cal))
    with pytest.raises(ArtifactError, match=r"calibration.json: .*pair.std"):
        CompositionPrior.load(d)
    del cal["pair"]  # a prior saved before pairs existed: one model
    (d / "calibration.json").write_text(json.dumps(cal))
    assert CompositionPrior.load(d).partner is None


def test_the_count_patterns_see_a_missing_part_and_round_trip(paired, tmp_path: Path) -> None:
    """The count patterns read both models' counts from the vectors the density scores, are calibrated on the held-out
    training normals and the validation normals, and reload from the saved training vectors."""
    import json

    prior, _ = paired
    val = _images("good", 10, 2)
    val_z = prior.fit_counts(val, np.ones(len(val), bool))
    assert prior.counts is not None and prior.counts.train.shape[1] == 2 * (prior.model.num_classes - 1)
    assert np.isfinite(val_z).all() and prior.counts_std > 0
    images = np.concatenate([_images("good", 4, 8), _images("missing", 3, 9), _images("extra", 3, 10)])
    z, counts = prior.score_branches(images)
    np.testing.assert_allclose(z, prior.score(images))  # the density's scores are unchanged
    assert counts[4:].min() > counts[:4].max()  # a part count that no training image showed
    d = prior.save(tmp_path / "p")
    loaded = CompositionPrior.load(d)
    np.testing.assert_allclose(loaded.score_branches(images)[1], counts, rtol=1e-6)
    cal = json.loads((d / "calibration.json").read_text())
    cal["counts"]["std"] = float("nan")
    (d / "calibration.json").write_text(json.dumps(cal))
    with pytest.raises(ArtifactError, match=r"calibration.json: .*counts.std"):
        CompositionPrior.load(d)
    del cal["counts"]  # a prior saved before the count patterns: the detector fuses without them
    (d / "calibration.json").write_text(json.dumps(cal))
    assert CompositionPrior.load(d).score_branches(images)[1] is None
    prior.counts = None


def test_training_without_count_patterns_leaves_the_branch_out(component_model, tmp_path: Path) -> None:
    from comgen.detect.train import train_detector

    run = RunDir(tmp_path / "run")
    component_model.save(run.components)
    cfg = tiny_config(epochs=1, prior=PriorConfig(counts=False))
    res = train_detector(run, cfg, splits=toy_splits(), log=lambda m: None, cpu=True)
    assert not res.calibration["prior"]["counts"] and "counts" not in res.calibration["val_branch_scores"]


@pytest.fixture(scope="module")
def seeded(component_model) -> tuple[CompositionPrior, np.ndarray]:
    """A paired prior with two more learner seeds, each learnt with its own counterpart."""
    train, val = _images("good", 24, 1), _images("good", 10, 2)
    prior = CompositionPrior.fit(component_model, train, val)
    normal = np.ones(len(val), bool)
    z = prior.fit_partner(counterpart(component_model, train), train, val, normal, prior.z(prior.nll(val)))
    return prior, prior.fit_members([1, 2], train, val, normal, z, log=lambda m: None)


def test_the_learner_seeds_each_learn_their_own_pair(seeded, component_model) -> None:
    prior, val_z = seeded
    assert [m.model.cfg.seed for m in prior.members] == [1, 2] and component_model.cfg.seed == 0
    assert all(m.partner is not None and m.model.shares_pixel_stage(m.partner.model) for m in prior.members)
    assert not any(m.members for m in prior.members)
    assert abs(float(val_z.mean())) < 1e-5 and abs(float(val_z.std()) - 1.0) < 1e-4  # standardised again


def test_the_seed_ensemble_scores_the_mean_of_the_seeds(seeded) -> None:
    prior, _ = seeded
    images = np.concatenate([_images("good", 4, 8), _images("missing", 3, 9), _images("extra", 3, 10)])
    own = prior.pair(prior.z(prior.nll(images)), prior.partner.score(images))
    seeds = [own, *[m.score(images) for m in prior.members]]
    expected = (np.mean(seeds, 0) - prior.ensemble_mean) / prior.ensemble_std
    np.testing.assert_allclose(prior.score(images), expected, rtol=1e-5, atol=1e-5)
    assert prior.score(images)[4:].min() > prior.score(images)[:4].max()


def test_the_seed_ensemble_round_trips_and_a_damaged_one_is_one_line(seeded, tmp_path: Path) -> None:
    import json

    prior, _ = seeded
    images = np.concatenate([_images("good", 3, 6), _images("extra", 3, 7)])
    d = prior.save(tmp_path / "p")
    loaded = CompositionPrior.load(d)
    assert len(loaded.members) == 2 and loaded.members[1].model.cfg.seed == 2
    np.testing.assert_allclose(loaded.score(images), prior.score(images), rtol=1e-5, atol=1e-5)
    loaded.members = loaded.members[:1]
    loaded.save(tmp_path / "fewer")
    prior.save(tmp_path / "fewer")  # a folder saved with fewer seeds keeps none of the earlier fit's extra ones
    loaded.save(tmp_path / "fewer")
    assert (tmp_path / "fewer" / "seed1").is_dir() and not (tmp_path / "fewer" / "seed2").exists()
    cal = json.loads((d / "calibration.json").read_text())
    cal["ensemble"]["std"] = float("nan")
    (d / "calibration.json").write_text(json.dumps(cal))
    with pytest.raises(ArtifactError, match=r"calibration.json: .*ensemble.std"):
        CompositionPrior.load(d)
    cal["ensemble"] = {"mean": 0.0, "std": 1.0, "members": 0}
    (d / "calibration.json").write_text(json.dumps(cal))
    with pytest.raises(ArtifactError, match=r"calibration.json: .*member count"):
        CompositionPrior.load(d)


def test_learner_seeds_must_be_a_positive_integer() -> None:
    with pytest.raises(ConfigError, match="learner_seeds"):
        PriorConfig(learner_seeds=0)
