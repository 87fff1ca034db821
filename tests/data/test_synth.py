"""Built-in LOCO-style benchmark: layout, generator truth, rule checkers, GT masks, determinism, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.neighbors import KNeighborsClassifier

from comgen.cli import main
from comgen.data.check import check_dataset
from comgen.data.readers import open_dataset
from comgen.data.synth import CATEGORIES, SynthConfig, generate_benchmark
from comgen.data.synth.categories import CATEGORY_SPECS
from comgen.data.synth.draw import erode
from comgen.data.synth.truth import load_parts, load_truth, truth_path, violates
from comgen.data.synth.writer import read_defect_names
from comgen.errors import ConfigError, InputError

CFG = SynthConfig(size=64, n_train=8, n_validation=3, n_test=12, seed=3)


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    generate_benchmark(out, CFG)
    return out


def test_layout_and_counts(bench):
    assert len(CATEGORIES) >= 4
    assert SynthConfig.load(bench / "config.yaml") == CFG
    summary = check_dataset(bench)  # decodes every image and mask, checks mask sizes and values
    ds = summary.dataset
    assert ds.layout == "loco" and sorted(ds.categories()) == sorted(CATEGORIES)
    for cat in CATEGORIES:
        spec = CATEGORY_SPECS[cat]
        assert len(spec.logical) >= 3 and len(spec.structural) >= 2
        assert len(ds.samples(cat, "train")) == 8 and len(ds.samples(cat, "validation")) == 3
        test = ds.samples(cat, "test")
        assert sorted({s.kind for s in test}) == ["good", "logical", "structural"] and len(test) == 12
        assert set(ds.defects(cat)) == {*spec.logical, *spec.structural}
        parts = load_parts(bench / cat)
        assert parts["parts"] == {str(k): v for k, v in spec.parts.items()} and parts["rules"]


def test_truth_maps_cover_every_image(bench):
    ds = open_dataset(bench)
    for cat in CATEGORIES:
        n_parts = len(CATEGORY_SPECS[cat].parts)
        for split in ("train", "validation", "test"):
            for s in ds.samples(cat, split):
                assert truth_path(s).is_file()
                t = load_truth(s)
                assert t.shape == (64, 64) and t.max() <= n_parts
        assert set(np.unique(load_truth(ds.samples(cat, "train")[0]))) == set(range(n_parts + 1))


def test_rule_checker_on_the_benchmark(bench):
    ds = open_dataset(bench)
    for cat in CATEGORIES:
        normal = ds.samples(cat, "train") + ds.samples(cat, "validation")
        normal += [s for s in ds.samples(cat, "test") if s.kind == "good"]
        for s in normal:
            assert violates(cat, load_truth(s), s.load_image()) == [], (cat, s.path)
        logical = [s for s in ds.samples(cat, "test") if s.kind == "logical"]
        assert {read_defect_names(bench / cat)[f"test/logical_anomalies/{s.image_id}"] for s in logical} == \
            set(CATEGORY_SPECS[cat].logical)  # every logical type is in the test split
        for s in logical:
            msgs = violates(cat, load_truth(s), s.load_image())
            assert msgs and all(isinstance(m, str) and m for m in msgs), (cat, s.path)


@pytest.mark.parametrize("cat", sorted(CATEGORY_SPECS))
def test_rule_checker_every_logical_type_at_other_sizes(cat):
    spec = CATEGORY_SPECS[cat]
    for size in (48, 128):
        for seed in range(3):
            rng = np.random.default_rng(seed)
            ok = spec.render(rng, size, None)
            assert spec.check(ok.labels, ok.image) == [], (cat, size, seed)
            for d in spec.logical:
                sc = spec.render(rng, size, d)
                assert spec.check(sc.labels, sc.image), (cat, d, size, seed)


def test_ground_truth_masks(bench):
    ds = open_dataset(bench)
    for cat in CATEGORIES:
        names = read_defect_names(bench / cat)
        values = {d.name: d.pixel_value for d in ds.defects(cat).values()}
        for s in ds.samples(cat, "test"):
            if s.kind == "good":
                assert not s.mask_paths
                continue
            assert s.mask_paths, s.path
            defect = names[f"test/{s.label}/{s.image_id}"]
            union = np.zeros((64, 64), bool)
            for m in s.load_masks():
                assert set(np.unique(m)) <= {0, values[defect]}
                union |= m > 0
            assert 0 < union.mean() < 0.5, (cat, defect)


def test_normal_images_vary_but_parts_stay_separable_by_colour(bench):
    ds = open_dataset(bench)
    for cat in CATEGORIES:
        train = ds.samples(cat, "train")
        imgs = np.stack([s.load_image() for s in train]).astype(np.float32)
        template = imgs.mean(0)
        # a pixel-exact template does not explain normal images (pose, colour, light, noise vary)
        assert np.abs(imgs - template).mean() > 8, cat
        # ... yet a colour-only nearest-neighbour classifier recovers the part labels on fresh images
        labels = np.stack([load_truth(s) for s in train])
        inner = np.stack([np.logical_or.reduce([erode(lab == k, 1) for k in np.unique(lab)]) for lab in labels])
        x, y = imgs[inner].reshape(-1, 3), labels[inner]
        half = len(train) // 2 * int(inner[0].sum())
        rng = np.random.default_rng(0)
        tr = rng.choice(half, min(4000, half), replace=False)
        te = half + rng.choice(len(y) - half, min(4000, len(y) - half), replace=False)
        knn = KNeighborsClassifier(n_neighbors=5).fit(x[tr], y[tr])
        assert (knn.predict(x[te]) == y[te]).mean() > 0.9, cat


def test_deterministic_by_seed(tmp_path):
    cfg = SynthConfig(size=48, n_train=3, n_validation=1, n_test=3, seed=5, categories=["cable_pair"])
    a, b = generate_benchmark(tmp_path / "a", cfg)[0], generate_benchmark(tmp_path / "b", cfg)[0]
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    c = generate_benchmark(tmp_path / "c", cfg.replace(seed=6))[0]
    assert (a / "train/good/000.png").read_bytes() != (c / "train/good/000.png").read_bytes()


def test_refuses_foreign_folder_but_reruns_its_own(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    cfg = SynthConfig(size=32, n_train=1, n_validation=1, n_test=0, categories=["screw_bag"])
    with pytest.raises(InputError, match="not written by comgen synth"):
        generate_benchmark(foreign, cfg)
    assert (foreign / "notes.txt").read_text() == "keep me" and len(list(foreign.iterdir())) == 1
    out = tmp_path / "ours"
    generate_benchmark(out, cfg)
    generate_benchmark(out, cfg.replace(n_train=2))
    assert len(list((out / "screw_bag/train/good").iterdir())) == 2
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary folders left


def test_config_validation():
    with pytest.raises(ConfigError, match="unknown category 'nope'"):
        SynthConfig(categories=["nope"])
    assert SynthConfig(categories="all").selected() == list(CATEGORIES)  # type: ignore[arg-type]
    assert SynthConfig(categories="screw_bag,cable_pair").categories == ["screw_bag", "cable_pair"]  # type: ignore[arg-type]
    with pytest.raises(InputError, match="not a synthetic category"):
        violates("nope", np.zeros((8, 8), np.uint8), np.zeros((8, 8, 3), np.uint8))


def test_violates_accepts_other_sizes(bench):
    ds = open_dataset(bench)
    s = next(x for x in ds.samples("pushpin_grid", "test") if x.kind == "logical")
    img = s.load_image()
    big = np.repeat(np.repeat(img, 2, 0), 2, 1)
    assert violates("pushpin_grid", load_truth(s), big)


def test_cli_synth(tmp_path, capsys):
    out = tmp_path / "b"
    assert main(["synth", str(out), "--size", "32", "--train", "2", "--validation", "1", "--test", "3",
                 "--categories", "screw_bag", "--seed", "1"]) == 0
    assert "screw_bag" in capsys.readouterr().out
    assert json.loads((out / "screw_bag/defects_config.json").read_text())
    assert main(["synth", str(tmp_path / "x"), "--categories", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown category 'nope'" in err


def test_parallel_workers_give_identical_output(tmp_path):
    cfg = SynthConfig(size=32, n_train=2, n_validation=1, n_test=3, seed=2, categories=["pushpin_grid", "cable_pair"])
    a = tmp_path / "seq"
    b = tmp_path / "par"
    generate_benchmark(a, cfg, workers=1)
    generate_benchmark(b, cfg, workers=2)
    files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert files and files == sorted(p.relative_to(b) for p in b.rglob("*.png"))
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)


def test_cli_data_check_lists_every_synth_category(bench, capsys):
    assert main(["data", "check", str(bench)]) == 0
    out = capsys.readouterr().out
    assert all(cat in out for cat in CATEGORIES) and "structural_anomalies" in out
