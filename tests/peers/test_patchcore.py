"""anomalib PatchCore peer: real scoring on tiny images, offline weights, and the benchmark wiring.

Why these checks: the peer is only worth its row if it is anomalib's model (not ours), runs without network,
loads the same ImageNet weights as comgen, and writes maps that ``comgen evaluate`` scores.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import numpy as np
import pytest

from comgen.errors import ConfigError, InputError
from comgen.peers.patchcore import PatchcoreConfig

SIZE = 64
BLOB = (44, 20)  # (row, col) of the bright blob in the anomalous test image


@pytest.fixture
def anomalib():
    return pytest.importorskip("anomalib")


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any download attempt (socket, timm's pretrained loader, torch hub, HF hub) fails the test."""
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    import timm.models._builder as builder

    monkeypatch.setattr(builder, "load_pretrained", refuse)
    import torch.hub

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    try:
        import huggingface_hub

        monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)
    except ImportError:
        pass


def _pattern(rng: np.random.Generator) -> np.ndarray:
    """A plain grid of blue squares on grey with a little pixel noise."""
    img = np.full((SIZE, SIZE, 3), 128, np.uint8)
    for y in range(4, SIZE, 16):
        for x in range(4, SIZE, 16):
            img[y:y + 8, x:x + 8] = (40, 60, 200)
    return np.clip(img.astype(int) + rng.integers(-6, 7, img.shape), 0, 255).astype(np.uint8)


def _data() -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(0)
    train = [_pattern(rng) for _ in range(6)]
    tests = [_pattern(rng) for _ in range(3)]
    yy, xx = np.mgrid[:SIZE, :SIZE]
    tests[2][(yy - BLOB[0]) ** 2 + (xx - BLOB[1]) ** 2 <= 36] = 255
    return train, tests


def test_config_rejects_bad_values() -> None:
    for bad in ({"image_size": 8}, {"coreset_ratio": 0.0}, {"coreset_ratio": 1.5}, {"num_neighbors": 0},
                {"batch_size": 0}, {"layers": ()}, {"layers": ("blocks.2", "blocks.2")}, {"weights": " "},
                {"seed": -1}):
        with pytest.raises(ConfigError) as err:
            PatchcoreConfig(**bad)
        assert "\n" not in str(err.value)
    cfg = PatchcoreConfig.from_dict({"layers": ["blocks.2", "blocks.4"], "coreset_ratio": 1})
    assert cfg.layers == ("blocks.2", "blocks.4") and cfg.coreset_ratio == 1.0


def test_missing_anomalib_is_one_clean_line(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in sys.modules if n == "anomalib" or n.startswith("anomalib.")] or ["anomalib"]:
        monkeypatch.setitem(sys.modules, name, None)
    from comgen.peers.patchcore import PatchcorePeer

    with pytest.raises(InputError) as err:
        PatchcorePeer(PatchcoreConfig(weights="random"))
    assert str(err.value) == "anomalib is not installed; pip install -e '.[peers]'"


def test_fit_predict_finds_the_blob(anomalib, no_network) -> None:
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel

    from comgen.peers.patchcore import PatchcorePeer

    train, tests = _data()
    cfg = PatchcoreConfig(image_size=SIZE, weights="random", coreset_ratio=0.5, batch_size=4)
    det = PatchcorePeer(cfg)
    assert isinstance(det.model, PatchcoreModel)
    det.fit(train)
    assert det.model.memory_bank.ndim == 2 and 0 < len(det.model.memory_bank) < 6 * 8 * 8
    scores, maps = det.predict(tests)
    assert scores.shape == (3,) and maps.shape == (3, SIZE, SIZE) and maps.dtype == np.float32
    assert np.isfinite(scores).all() and np.isfinite(maps).all()
    assert scores[2] > max(scores[:2])
    peak = np.unravel_index(int(maps[2].argmax()), maps[2].shape)
    assert abs(peak[0] - BLOB[0]) <= 8 and abs(peak[1] - BLOB[1]) <= 8, peak
    # the coreset is seeded: a second fit keeps the same bank
    bank = det.model.memory_bank.clone()
    assert (PatchcorePeer(cfg).fit(train).model.memory_bank == bank).all()


def test_too_small_coreset_is_a_clean_error(anomalib) -> None:
    from comgen.peers.patchcore import PatchcorePeer

    train, _ = _data()
    with pytest.raises(InputError, match="coreset_ratio"):
        PatchcorePeer(PatchcoreConfig(image_size=32, weights="random", coreset_ratio=0.001)).fit(train[:1])
    with pytest.raises(ConfigError, match="blocks.9"):
        PatchcorePeer(PatchcoreConfig(weights="random", layers=("blocks.2", "blocks.9")))


def test_auto_weights_are_the_packaged_lite0(anomalib, no_network) -> None:
    from comgen.features.backbone import OFFLINE_SOURCE, offline_default_path, read_state_dict
    from comgen.peers.patchcore import PatchcorePeer

    det = PatchcorePeer(PatchcoreConfig(weights="auto"))
    assert det.weights_source == OFFLINE_SOURCE
    ckpt = list(read_state_dict(offline_default_path()).values())
    extractor = det.model.feature_extractor.feature_extractor
    # the checkpoint maps onto timm's model in order: its first tensor is the stem convolution
    assert extractor.conv_stem.weight.shape == ckpt[0].shape
    assert (extractor.conv_stem.weight == ckpt[0]).all()
    assert not (PatchcorePeer(PatchcoreConfig(weights="random")).model.feature_extractor.feature_extractor
                .conv_stem.weight == ckpt[0]).all()


def test_run_patchcore_writes_maps_scores_and_metrics(anomalib, tmp_path: Path) -> None:
    from comgen.data.readers import open_dataset
    from comgen.data.synth import SynthConfig, generate_benchmark
    from comgen.evaluate.maps import find_map, read_scores_csv
    from comgen.peers.patchcore import run_patchcore

    cat = "pushpin_grid"
    generate_benchmark(tmp_path / "data", SynthConfig(size=64, n_train=4, n_validation=1, n_test=6, categories=[cat]))
    ds = open_dataset(tmp_path / "data")
    cfg = PatchcoreConfig(image_size=SIZE, weights="random", coreset_ratio=0.25, batch_size=4)
    out = tmp_path / "out"
    result = run_patchcore(ds, cat, out, cfg)
    tests = ds.samples(cat, "test")
    assert all(find_map(out / "maps", s) is not None for s in tests)
    rows = read_scores_csv(out / "maps" / "scores.csv")
    assert sorted(r["image_id"] for r in rows) == sorted(s.image_id for s in tests)
    assert result["image_score"].startswith("csv:")
    for subset in ("logical", "structural"):
        assert result["metrics"][subset]["image_auroc"] is not None
    assert result["fit_seconds"] > 0 and result["predict_images_per_second"] > 0 and result["peak_rss_mb"] > 0
    assert PatchcoreConfig.load(out / "config.yaml") == cfg
