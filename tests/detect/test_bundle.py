"""The export bundle: ``OnnxDetector`` on it gives ``Detector.predict``'s fused scores, branch scores and maps.

Real (rendered) toy images on small trained detectors: one with a component model (prior, composition branch and
patch memory all fused), one without (network and patch memory), and one whose prior reuses the detector's features.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from comgen.components.density import DensityConfig
from comgen.components.features import LearnerConfig
from comgen.components.learner import counterpart, learn_components
from comgen.detect.composition_branch import CompositionBranchConfig
from comgen.detect.composition_prior import PriorConfig
from comgen.errors import ComgenError
from comgen.rundir import RunDir
from tests.detect.conftest import SIZE, tiny_config, toy_image, toy_splits

pytest.importorskip("onnxruntime")
TOL = 1e-3


def _images(kind: str, n: int, seed: int, size: int = SIZE) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [toy_image(rng, size, kind)[0] for _ in range(n)]


def _test_images() -> list[np.ndarray]:
    """Normals, both anomaly kinds, and one image of another size (the resize path of predict)."""
    return _images("good", 2, 40) + _images("missing", 2, 41) + _images("extra", 1, 42) + _images("good", 1, 43, 80)


def _assert_parity(det, onnx_det, images: list[np.ndarray], branches: set[str]) -> None:
    want, want_maps = det.predict(images, notice=None)
    got, got_maps = onnx_det.predict(images)
    assert set(onnx_det.last_parts) == set(det.last_parts) == branches
    for b in branches:
        np.testing.assert_allclose(onnx_det.last_parts[b], det.last_parts[b], atol=TOL, rtol=0, err_msg=b)
    np.testing.assert_allclose(got, want, atol=TOL, rtol=0)
    assert [m.shape for m in got_maps] == [m.shape for m in want_maps]
    # the maps carry the score on the maps' own scale, which multiplies small differences: relative to each map
    for a, b in zip(got_maps, want_maps):
        assert float(np.abs(a - b).max()) <= TOL * max(1.0, float(np.abs(b).max())), float(np.abs(b).max())


@pytest.fixture(scope="module")
def prior_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A detector with a component model learned at another size (so the prior runs its own backbone graph), with
    the instance stage, and every branch in the fusion."""
    from comgen.detect.train import train_detector

    run = RunDir(tmp_path_factory.mktemp("bundle") / "run")
    learner = LearnerConfig(image_size=48, k=3, backbone_weights="random", pixels_per_image=300,
                            max_fit_pixels=6000, select_pixels=2000, instances=True)
    learn_components(np.stack(_images("good", 12, 10)), learner).save(run.components)
    cfg = tiny_config(epochs=1, fusion="softplus", composition=CompositionBranchConfig(enabled=True, epochs=3),
                      # the other learner seeds travel in the bundle too, and so do the size-spread and hole features
                      prior=PriorConfig(learner_seeds=3, density=DensityConfig(area_spread=True, holes=True)))
    train_detector(run, cfg, splits=toy_splits(), log=lambda m: None, cpu=True)
    return run.root


@pytest.fixture(scope="module")
def prior_bundle(prior_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from comgen.detect.bundle import export_bundle

    ov = _has_openvino()
    return export_bundle(prior_run, tmp_path_factory.mktemp("out") / "bundle", openvino=ov, log=lambda m: None)


def _has_openvino() -> bool:
    return importlib.util.find_spec("openvino") is not None


def test_bundle_with_the_composition_prior_scores_as_predict(prior_run: Path, prior_bundle: Path) -> None:
    from comgen.detect.predict import Detector
    from comgen.export_runtime import OnnxDetector

    man = json.loads((prior_bundle / "bundle.json").read_text())
    assert set(man["graphs"]) == {"backbone", "head", "components", "composition"}
    assert man["prior"]["shared_scale"] is None and man["prior"]["covariance_type"] == "full"
    assert man["arrays"]["prior.safetensors"]["gmm_means"][0] >= 1
    # the run's model has the instance stage, so the prior's counterpart is the colour classes alone
    assert man["prior"]["partner"]["instance_stage"] is None and "prior_partner.safetensors" in man["arrays"]
    det = Detector.load(prior_run, device="cpu")
    assert det.prior.partner is not None and det.prior.partner.model.instance_stage is None
    onnx_det = OnnxDetector(prior_bundle)
    assert onnx_det.prior_model.shares_pixel_stage(onnx_det.prior_partner)  # one pixel pass serves both models
    # the other learner seeds travel too, each with its counterpart and its own pixel stage
    assert len(det.prior.members) == 2 and len(man["prior"]["members"]) == 2
    assert man["format"] == 3 and man["prior"]["counts"]["std"] > 0  # the fusion reads the count patterns
    # the instance stage's off options are left out, so that runtimes which predate them read the bundle
    off = {"instance_blob_hysteresis", "instance_fringe_px", "instance_islands_apart"}
    assert not off & set(man["prior"]["learner"]) and "instance_surface_pieces" in man["prior"]["learner"]
    assert not {"blob_hysteresis", "fringe_px", "islands_apart"} & set(man["prior"]["instance_stage"]["options"])
    assert {"prior_seed1.safetensors", "prior_seed2_partner.safetensors"} <= set(man["arrays"])
    seed_model, seed_partner, _ = onnx_det.prior_seeds[1]
    assert seed_model.learner.seed == 1 and seed_model.shares_pixel_stage(seed_partner)
    assert not seed_model.shares_pixel_stage(onnx_det.prior_model)
    assert onnx_det.threshold == pytest.approx(det.threshold)
    _assert_parity(det, onnx_det, _test_images(), {"network", "prior", "composition", "memory", "global", "counts"})
    assert onnx_det.last_parts["prior"][2:5].min() > onnx_det.last_parts["prior"][:2].max()  # it sees the counts


def test_openvino_ir_scores_as_predict(prior_run: Path, prior_bundle: Path) -> None:
    pytest.importorskip("openvino")
    from comgen.detect.predict import Detector
    from comgen.export_runtime import OnnxDetector

    assert (prior_bundle / "head.xml").is_file() and (prior_bundle / "components.xml").is_file()
    _assert_parity(Detector.load(prior_run, device="cpu"), OnnxDetector(prior_bundle, engine="openvino"),
                   _test_images(), {"network", "prior", "composition", "memory", "global", "counts"})


def test_bundle_without_the_prior_scores_as_predict(trained_run: Path, tmp_path: Path) -> None:
    from comgen.detect.bundle import export_bundle
    from comgen.detect.predict import Detector
    from comgen.export_runtime import OnnxDetector

    out = export_bundle(trained_run, tmp_path / "b", log=lambda m: None)
    man = json.loads((out / "bundle.json").read_text())
    assert man["prior"] is None and man["composition"] is None and set(man["graphs"]) == {"backbone", "head"}
    assert man["format"] == 1  # one learner seed (here none): readers of format 1 score it right
    _assert_parity(Detector.load(trained_run, device="cpu"), OnnxDetector(out), _test_images(),
                   {"network", "memory", "global"})


def test_prior_on_the_detector_features_scores_as_predict(tmp_path: Path) -> None:
    """Same backbone, layer and size: the bundle's prior segments from the backbone graph's own features."""
    import torch

    from comgen.detect.bundle import export_bundle
    from comgen.detect.composition_prior import CompositionPrior
    from comgen.detect.csda import CSDA
    from comgen.detect.predict import Detector
    from comgen.export_runtime import OnnxDetector
    from comgen.features.backbone import build_backbone
    from comgen.features.memory import MemoryBank, MemoryBankConfig

    cfg = tiny_config()
    learner = LearnerConfig(image_size=SIZE, k=3, backbone_weights="random", pixels_per_image=300,
                            max_fit_pixels=6000, select_pixels=2000, instances=False)
    model = learn_components(np.stack(_images("good", 12, 10)), learner)
    train, val = np.stack(_images("good", 16, 11)), np.stack(_images("good", 6, 12))
    prior = CompositionPrior.fit(model, train, val)
    prior.fit_partner(counterpart(model, train), train, val, np.ones(len(val), bool), prior.z(prior.nll(val)))
    assert prior.partner.model.instance_stage is not None  # the counterpart of the colour classes
    backbone = build_backbone(cfg.backbone)
    bank = MemoryBank.build(np.stack(_images("good", 6, 13)), [f"n{i}" for i in range(6)], backbone,
                            MemoryBankConfig.from_dict({**cfg.bank, "image_size": SIZE, "k": cfg.head.k}))
    torch.manual_seed(0)
    cal = {"score_mean": 0.1, "score_std": 2.0, "map_mean": -4.0, "map_std": 0.5, "threshold": 3.0,
           "fusion": {"rule": "max", "weights": {"network": 1.0, "prior": 0.5}, "shift": 0.2, "scale": 1.5}}
    det = Detector(cfg, CSDA(backbone, cfg.head), bank, cal, tmp_path, torch.device("cpu"), prior)
    out = export_bundle(tmp_path, tmp_path / "b", detector=det, log=lambda m: None)
    man = json.loads((out / "bundle.json").read_text())
    assert man["prior"]["shared_scale"] == 0 and "components" not in man["graphs"]
    assert man["prior"]["partner"]["instance_stage"] is not None
    onnx_det = OnnxDetector(out)
    assert onnx_det.prior_model.shares_pixel_stage(onnx_det.prior_partner)
    _assert_parity(det, onnx_det, _test_images(), {"network", "prior"})


def test_tiled_detectors_are_refused_in_one_line(tmp_path: Path) -> None:
    """The runtime mirrors untiled scoring only: a tiled detector is refused before anything is written."""
    import torch

    from comgen.detect.bundle import export_bundle
    from comgen.detect.csda import CSDA
    from comgen.detect.predict import Detector
    from comgen.errors import ConfigError
    from comgen.features.backbone import build_backbone
    from comgen.features.memory import MemoryBank, MemoryBankConfig

    cfg = tiny_config(image_size=32, tile_scale=1.0, bank={"window": 2, "global_grid": 2})
    backbone = build_backbone(cfg.backbone)
    bank = MemoryBank.build(np.stack(_images("good", 6, 13)), [f"n{i}" for i in range(6)], backbone,
                            MemoryBankConfig.from_dict({**cfg.bank, "image_size": 32, "k": cfg.head.k}))
    cal = {"score_mean": 0.1, "score_std": 2.0, "map_mean": -4.0, "map_std": 0.5, "threshold": 3.0}
    det = Detector(cfg, CSDA(backbone, cfg.head), bank, cal, tmp_path, torch.device("cpu"))
    with pytest.raises(ConfigError, match="tiled detectors cannot be bundled"):
        export_bundle(tmp_path, tmp_path / "b", detector=det, log=lambda m: None)
    assert not (tmp_path / "b").exists()


def test_the_runtime_never_imports_torch(prior_bundle: Path, tmp_path: Path) -> None:
    """A fresh interpreter predicts from the bundle; torch, faiss and scikit-learn are never imported."""
    from comgen.export_runtime import OnnxDetector

    images = np.stack(_images("good", 2, 50) + _images("extra", 1, 51))
    np.save(tmp_path / "images.npy", images)
    code = ("import sys, numpy as np\nfrom comgen.export_runtime import OnnxDetector\n"
            f"s, m = OnnxDetector({str(prior_bundle)!r}).predict(list(np.load({str(tmp_path / 'images.npy')!r})))\n"
            f"np.save({str(tmp_path / 'scores.npy')!r}, s)\n"
            "print(sorted(k for k in ('torch', 'faiss', 'sklearn') if k in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "[]"
    np.testing.assert_allclose(np.load(tmp_path / "scores.npy"), OnnxDetector(prior_bundle).predict(images)[0],
                               atol=1e-6)


def test_export_replaces_a_bundle_and_refuses_any_other_folder(trained_run: Path, tmp_path: Path) -> None:
    from comgen.detect.bundle import export_bundle

    other = tmp_path / "photos"
    other.mkdir()
    (other / "keep.png").write_bytes(b"x")
    with pytest.raises(ComgenError, match="not an export bundle"):
        export_bundle(trained_run, other, log=lambda m: None)
    assert (other / "keep.png").read_bytes() == b"x"
    out = export_bundle(trained_run, tmp_path / "b", log=lambda m: None)
    (out / "stale.txt").write_text("old")
    export_bundle(trained_run, out, log=lambda m: None)
    assert not (out / "stale.txt").exists() and (out / "bundle.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".bundle")]

    from comgen.export_runtime import OnnxDetector

    det = OnnxDetector(out)
    with pytest.raises(ComgenError, match="empty image list"):
        det.predict([])
    with pytest.raises(ComgenError, match="image 1: image contains NaN"):
        det.predict([_images("good", 1, 1)[0], np.full((64, 64, 3), np.nan)])
    with pytest.raises(ComgenError, match="backbone.xml: missing: the bundle has no OpenVINO IR"):
        OnnxDetector(out, engine="openvino")  # exported without --openvino
    (out / "head.onnx").unlink()
    with pytest.raises(ComgenError, match="head.onnx: missing"):
        OnnxDetector(out)


def test_a_damaged_instance_stage_in_the_manifest_is_one_line(prior_bundle: Path, tmp_path: Path) -> None:
    import json
    import shutil

    from comgen.errors import ArtifactError
    from comgen.export_runtime import OnnxDetector

    d = tmp_path / "bundle"
    shutil.copytree(prior_bundle, d)
    man = json.loads((d / "bundle.json").read_text())
    assert man["prior"]["instance_stage"] is not None
    man["prior"]["instance_stage"]["surface_class"] = [1, 2]
    (d / "bundle.json").write_text(json.dumps(man))
    with pytest.raises(ArtifactError, match=r"bundle.json: prior.instance_stage unreadable"):
        OnnxDetector(d)


def test_a_damaged_map_peak_fusion_cap_or_pair_in_the_manifest_is_one_line(prior_bundle: Path, tmp_path: Path
                                                                            ) -> None:
    import json
    import shutil

    from comgen.errors import ArtifactError
    from comgen.export_runtime import OnnxDetector

    d = tmp_path / "bundle"
    shutil.copytree(prior_bundle, d)
    man = json.loads((d / "bundle.json").read_text())
    assert set(man["map_peak"]) == {"score_mean", "score_std", "max_mean", "max_std"}
    man["map_peak"]["max_std"] = -1.0
    (d / "bundle.json").write_text(json.dumps(man))
    with pytest.raises(ArtifactError, match=r"bundle.json: map_peak entry is malformed.*export it again"):
        OnnxDetector(d)
    man["map_peak"]["max_std"], man["map_peak_width"] = 1.0, 0
    (d / "bundle.json").write_text(json.dumps(man))
    with pytest.raises(ArtifactError, match=r"bundle.json: map_peak_width is 0, not a positive number"):
        OnnxDetector(d)
    assert man["fusion"]["cap"] == 15.0  # the detector's default travels with the bundle
    man["map_peak_width"], man["fusion"]["cap"] = 0.5, "high"
    (d / "bundle.json").write_text(json.dumps(man))
    with pytest.raises(ArtifactError, match=r"bundle.json: fusion.cap is 'high', not a number >= 0"):
        OnnxDetector(d)
    assert man["fusion"]["rule"] == "softplus"  # the rule travels with the bundle too
    man["fusion"]["cap"], man["fusion"]["rule"] = 15.0, "median"
    (d / "bundle.json").write_text(json.dumps(man))
    with pytest.raises(ArtifactError, match=r"bundle.json: fusion.rule is 'median', not one of weighted, max, soft"):
        OnnxDetector(d)
    man["fusion"]["rule"], man["prior"]["pair"]["std"] = "softplus", 0.0
    (d / "bundle.json").write_text(json.dumps(man))
    with pytest.raises(ArtifactError, match=r"bundle.json: prior.pair is .*not a finite mean and a positive std"):
        OnnxDetector(d)
    ensemble, man["prior"]["pair"]["std"], man["prior"]["ensemble"] = man["prior"]["ensemble"], 1.0, {"mean": 0.0}
    (d / "bundle.json").write_text(json.dumps(man))
    with pytest.raises(ArtifactError, match=r"bundle.json: prior.ensemble is .*not a finite mean and a positive std"):
        OnnxDetector(d)
    man["prior"]["ensemble"] = ensemble
    learner = man["prior"]["members"][0].pop("learner")
    (d / "bundle.json").write_text(json.dumps(man))
    with pytest.raises(ArtifactError, match=r"bundle.json: prior_seed1 lacks learner"):
        OnnxDetector(d)
    partner = man["prior"]["members"][1]["partner"]
    man["prior"]["members"][0]["learner"], man["prior"]["members"][1]["partner"] = learner, "x"
    (d / "bundle.json").write_text(json.dumps(man))
    with pytest.raises(ArtifactError, match=r"bundle.json: prior_seed2.partner is 'x', not an object"):
        OnnxDetector(d)
    man["prior"]["members"][1]["partner"] = partner
    assert man["prior"]["members"][0]["area_spread"] is True  # the composition vector's settings travel too
    man["prior"]["members"][0]["area_spread"] = "yes"
    (d / "bundle.json").write_text(json.dumps(man))
    with pytest.raises(ArtifactError, match=r"bundle.json: prior_seed1.area_spread is 'yes', not true or false"):
        OnnxDetector(d)
    man["prior"]["members"][0]["area_spread"] = True
    assert man["prior"]["members"][0]["holes"] is True
    man["prior"]["members"][0]["holes"] = 1
    (d / "bundle.json").write_text(json.dumps(man))
    with pytest.raises(ArtifactError, match=r"bundle.json: prior_seed1.holes is 1, not true or false"):
        OnnxDetector(d)
    man["prior"]["members"][0]["holes"] = False  # a valid flag that no longer matches the stored arrays
    (d / "bundle.json").write_text(json.dumps(man))
    with pytest.raises(ArtifactError, match=r"bundle.json: prior_seed1 holds \d+ composition features where its "
                                            r"settings ask for \d+"):
        OnnxDetector(d)
    man["prior"]["members"][0]["holes"] = True
    man["prior"]["counts"]["pairs"] = "yes"
    (d / "bundle.json").write_text(json.dumps(man))
    with pytest.raises(ArtifactError, match=r"bundle.json: prior.counts needs a finite mean, a positive std and pairs"):
        OnnxDetector(d)
    man["prior"]["counts"]["pairs"] = True
    del man["arrays"]["prior_seed2_partner.safetensors"]
    (d / "bundle.json").write_text(json.dumps(man))
    with pytest.raises(ArtifactError, match=r"bundle.json: prior_seed2 has no prior_seed2_partner.safetensors"):
        OnnxDetector(d)


def test_a_damaged_global_branch_in_the_bundle_is_one_line(prior_bundle: Path, tmp_path: Path) -> None:
    import json
    import shutil

    from comgen.errors import ArtifactError
    from comgen.export_runtime import OnnxDetector

    d = tmp_path / "bundle"
    shutil.copytree(prior_bundle, d)
    man = json.loads((d / "bundle.json").read_text())
    assert man["global"]["num_scales"] >= 1 and man["global"]["score_std"] > 0
    man["global"]["score_std"] = 0.0
    (d / "bundle.json").write_text(json.dumps(man))
    with pytest.raises(ArtifactError, match=r"bundle.json: entry 'global' is malformed.*export it again"):
        OnnxDetector(d)
    man["global"]["score_std"], man["global"]["num_scales"] = 1.0, man["global"]["num_scales"] + 1
    (d / "bundle.json").write_text(json.dumps(man))
    with pytest.raises(ArtifactError, match=r"global branch array 'mean\d' missing"):
        OnnxDetector(d)


def test_a_prior_whose_instance_stage_reads_bands_needs_format_4_splits_by_modes_5_finds_pieces_6_grows_7() -> None:
    from types import SimpleNamespace

    from comgen.components.instances import BLOBS, InstanceOptions, piece_group
    from comgen.detect.bundle import _finds_pieces, _grows_parts, _reads_bands, _splits_by_modes

    def prior(shading: tuple[int, ...] | None, partner=None, members=(), modes: int = 0, pieces: bool = False,
              grows: bool = False, apart: bool = False):
        group = SimpleNamespace(mode_parent=np.zeros(modes, np.int64))
        groups = {1: group, BLOBS: group, **({piece_group(2): group} if pieces else {})}
        options = InstanceOptions(blob_hysteresis=0.5 * grows, fringe_px=6.0 * grows, islands_apart=grows or apart)
        stage = None if shading is None else SimpleNamespace(shading=shading, groups=groups, options=options)
        return SimpleNamespace(model=SimpleNamespace(instance_stage=stage), partner=partner, members=list(members))

    assert not _reads_bands(prior(None, partner=prior(())))
    assert _reads_bands(prior(None, partner=prior((2,))))  # the counterpart's stage
    assert _reads_bands(prior(None, members=[prior((1,))]))  # another learner seed's
    assert not _splits_by_modes(prior(None, partner=prior(())))
    assert _splits_by_modes(prior(None, partner=prior((), modes=2)))
    assert _splits_by_modes(prior(None, members=[prior(None, partner=prior((), modes=3))]))
    assert not _finds_pieces(prior(None, partner=prior((), modes=2)))  # the blobs' group (-1) is no surface's
    assert _finds_pieces(prior(None, partner=prior((), pieces=True)))
    assert _finds_pieces(prior(None, members=[prior(None, partner=prior((), pieces=True))]))
    assert not _grows_parts(prior(None, partner=prior((), pieces=True)))  # the options are off
    assert _grows_parts(prior(None, partner=prior((), grows=True)))
    assert _grows_parts(prior(None, partner=prior((), apart=True)))  # islands apart alone
    assert _grows_parts(prior(None, members=[prior(None, partner=prior((), grows=True))]))
