"""End to end on a tiny built-in benchmark: every stage runs for real, a rerun skips, a change cascades."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from comgen.cli import main
from comgen.data.synth.config import SynthConfig
from comgen.data.synth.writer import generate_benchmark
from comgen.pipeline.demo import demo_settings
from comgen.pipeline.run import run_category
from comgen.rundir import RunDir


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bench")
    generate_benchmark(root, SynthConfig(size=64, n_train=12, n_validation=4, n_test=8, categories=["screw_bag"]))
    return root


def _quick_config():
    _, cfg = demo_settings(64, "screw_bag", quick=True)
    return cfg.replace(n_anomalies=12, detector=cfg.detector.replace(epochs=1))


def test_run_all_stages_then_skip_then_cascade(tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    logs: list[str] = []
    cfg = _quick_config()
    run = run_category(tiny, "screw_bag", tmp_path / "run", cfg, log=logs.append)
    for produced in ("components/preview.png", "generated/compositional/manifest.jsonl",
                     "generated/compositional/mask_iou.json", "detector/config.yaml", "maps/scores.csv",
                     "eval/metrics.json", "eval/report.html", "config.yaml"):
        assert (run.root / produced).is_file(), produced
    metrics = json.loads((run.eval / "metrics.json").read_text())["categories"]["screw_bag"]["metrics"]
    assert {"logical", "structural", "mean"} <= set(metrics)
    assert 0.0 <= metrics["mean"]["image_auroc"] <= 1.0
    # the detector's branches are scored separately too (network alone, composition prior alone)
    assert {"image_auroc_network", "image_auroc_prior"} <= set(metrics["logical"])
    calibration = json.loads((run.detector / "calibration.json").read_text())
    assert calibration["prior"]["enabled"]

    logs.clear()
    run_category(tiny, "screw_bag", tmp_path / "run", cfg, log=logs.append)
    assert sum("skipped" in m for m in logs) == 6

    logs.clear()
    changed = cfg.replace(detector=cfg.detector.replace(lr=5e-4))
    run_category(tiny, "screw_bag", tmp_path / "run", changed, log=logs.append)
    redone = [m.split("[")[1].split("]")[0] for m in logs if m.endswith("running")]
    assert redone == ["run.train", "run.predict", "run.evaluate"]
    assert RunDir.open(tmp_path / "run").stage_done("run.evaluate", RunDir.open(tmp_path / "run")._stages()
                                                   ["run.evaluate"]["hash"])

    # a newer generator (same config, other anomalies): the set is made anew, and everything after it reruns
    from comgen.generate import registry

    monkeypatch.setitem(registry.REVISIONS, "compositional", registry.generator_revision("compositional") + 1)
    logs.clear()
    run_category(tiny, "screw_bag", tmp_path / "run", changed, log=logs.append)
    redone = [m.split("[")[1].split("]")[0] for m in logs if m.endswith("running")]
    assert redone == ["run.generate", "run.mask", "run.train", "run.predict", "run.evaluate"]
    saved = json.loads((run.root / "generated/compositional/generator.json").read_text())
    assert saved["revision"] == registry.REVISIONS["compositional"]
    # a newer component learner: the classes are learned anew, and no anomaly made with the old ones is kept
    from comgen.components import learner

    monkeypatch.setattr(learner, "LEARNER_REVISION", learner.LEARNER_REVISION + 1)
    logs.clear()
    run_category(tiny, "screw_bag", tmp_path / "run", changed, log=logs.append)
    redone = [m.split("[")[1].split("]")[0] for m in logs if m.endswith("running")]
    assert redone == ["run.learn", "run.generate", "run.mask", "run.train", "run.predict", "run.evaluate"]
    assert any("kept 0 already done" in m for m in logs), logs  # made anew, not resumed
    assert (run.root / "generated/compositional/learned_with.txt").read_text() == run.stage_hash("run.learn")
    # a newer instance stage: the colour classes stay, the detector (its prior's counterpart model) is trained anew
    monkeypatch.setattr(learner, "INSTANCE_REVISION", learner.INSTANCE_REVISION + 1)
    logs.clear()
    run_category(tiny, "screw_bag", tmp_path / "run", changed, log=logs.append)
    redone = [m.split("[")[1].split("]")[0] for m in logs if m.endswith("running")]
    assert redone == ["run.train", "run.predict", "run.evaluate"]
    (run.root / "generated/compositional/generator.json").write_text("{broken")  # the run owns it: made anew
    logs.clear()
    run_category(tiny, "screw_bag", tmp_path / "run", changed, force=True, log=logs.append)
    assert json.loads((run.root / "generated/compositional/generator.json").read_text()) == saved


def test_cli_run_refuses_unknown_category(tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["run", str(tiny), "--category", "nope", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope" in err[0]


def test_a_folder_of_normal_images_alone_trains_a_detector(tiny: Path, tmp_path: Path, capsys) -> None:
    """Where a factory starts: ``train/good`` and nothing else. Check, run and predict work; evaluation is skipped."""
    import shutil

    folder = tmp_path / "my_parts"
    shutil.copytree(tiny / "screw_bag" / "train" / "good", folder / "train" / "good")
    assert main(["data", "check", str(folder)]) == 0
    cfg = _quick_config()
    logs: list[str] = []
    run = run_category(folder, "my_parts", tmp_path / "run", cfg, log=logs.append)
    assert (run.detector / "calibration.json").is_file() and not (run.root / "maps").exists()
    assert any("no labelled test images" in m for m in logs), logs
    cfg.save(tmp_path / "run.yaml")
    assert main(["run", str(folder), "-c", "my_parts", "--out", str(tmp_path / "run"),
                 "--config", str(tmp_path / "run.yaml")]) == 0
    assert "nothing was evaluated" in capsys.readouterr().out
    images = tiny / "screw_bag" / "test" / "logical_anomalies"
    assert main(["predict", str(run.root), str(images), "--out", str(tmp_path / "preds")]) == 0
    assert (tmp_path / "preds" / "scores.csv").is_file()


def _folder_with_two_defects(tiny: Path, root: Path) -> Path:
    """A folder dataset: train/good, test/{good,missing,scratch}; only scratch has masks (ground_truth/scratch)."""
    import shutil

    import cv2

    src = tiny / "screw_bag"
    shutil.copytree(src / "train" / "good", root / "train" / "good")
    shutil.copytree(src / "test" / "good", root / "test" / "good")
    shutil.copytree(src / "test" / "logical_anomalies", root / "test" / "missing")
    shutil.copytree(src / "test" / "structural_anomalies", root / "test" / "scratch")
    (root / "ground_truth" / "scratch").mkdir(parents=True)
    for image in sorted((root / "test" / "scratch").glob("*.png")):
        loco = cv2.imread(str(src / "ground_truth" / "structural_anomalies" / image.stem / "000.png"),
                          cv2.IMREAD_GRAYSCALE)
        cv2.imwrite(str(root / "ground_truth" / "scratch" / image.name), np.where(loco > 0, 255, 0).astype(np.uint8))
    return root


def test_run_on_a_folder_dataset_prints_results_per_defect_folder(tiny: Path, tmp_path: Path, capsys) -> None:
    folder = _folder_with_two_defects(tiny, tmp_path / "parts")
    _quick_config().save(tmp_path / "run.yaml")
    assert main(["run", str(folder), "-c", "parts", "--out", str(tmp_path / "run"),
                 "--config", str(tmp_path / "run.yaml")]) == 0
    out = capsys.readouterr().out
    metrics = json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())["categories"]["parts"]["metrics"]
    assert set(metrics) == {"all", "missing", "scratch"}
    rows = {line.split("|")[2].strip(): [c.strip() for c in line.split("|")[3:-1]]
            for line in out.splitlines() if line.startswith("| parts |")}
    assert set(rows) == {"all", "missing", "scratch"}, out
    for subset, cells in rows.items():
        images, image_auroc, pixel_auroc, aupro = cells
        m = metrics[subset]
        assert images == str(m["n_anomalous"]) and image_auroc == f"{m['image_auroc']:.3f}"
        if subset == "missing":  # no masks: no pixel metrics
            assert pixel_auroc == aupro == "-"
        else:
            assert pixel_auroc == f"{m['pixel_auroc']:.3f}" and aupro == f"{m['aupro']:.3f}"
    assert "report:" in out
