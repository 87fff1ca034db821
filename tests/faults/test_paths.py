"""A careless config, a foreign run folder or a hand-edited dataset never deletes, mixes or writes the wrong files.

The stages of ``comgen run`` are replaced by stubs that record their calls, so each test checks the run's
bookkeeping (names, hashes, locks, checks at the start) in well under a second.
"""

from __future__ import annotations

import fcntl
import os
import stat
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from comgen.cli import main
from comgen.data.synth import generate_benchmark
from comgen.data.synth.config import SynthConfig
from comgen.errors import ArtifactError, ComgenError, ConfigError, DatasetError
from comgen.rundir import RunDir

CAT = "pushpin_grid"


def tiny_benchmark(root: Path) -> Path:
    """The built-in benchmark at 64 px: 6 train, 2 validation, 6 test images of one category."""
    generate_benchmark(root, SynthConfig(size=64, n_train=6, n_validation=2, n_test=6, categories=[CAT]))
    return root


def stub_stages(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Replace every stage's work in ``comgen.pipeline.run`` by a stub; returns the names of the stages called."""
    import comgen.pipeline.run as run_mod

    calls: list[str] = []

    def learn(run: RunDir, train: list, cfg: Any) -> Any:
        calls.append("learn")
        return SimpleNamespace(num_classes=2)

    def build(name: str, cfg: Any) -> Any:
        return SimpleNamespace(fit=lambda train, run: None)

    def write(generator: Any, folder: Path, cfg: Any, log: Any = None) -> Any:
        calls.append("generate")
        return SimpleNamespace(written=1, rate=1.0)

    def train(run: RunDir, cfg: Any, resume: bool = False, log: Any = None) -> Any:
        calls.append("train")
        return SimpleNamespace(epochs_run=1, best_epoch=0, seconds=0.0, peak_rss_mb=0.0)

    monkeypatch.setattr(run_mod.learner, "learn_into_run", learn)
    monkeypatch.setattr(run_mod, "build_generator", build)
    monkeypatch.setattr(run_mod, "write_generated", write)
    monkeypatch.setattr(run_mod, "compute_masks", lambda *a, **k: calls.append("mask") or {})
    monkeypatch.setattr(run_mod, "train_detector", train)
    monkeypatch.setattr(run_mod, "predict_dataset", lambda *a, **k: calls.append("predict") or [])
    monkeypatch.setattr(run_mod, "evaluate_category", lambda *a, **k: calls.append("evaluate") or {})
    monkeypatch.setattr(run_mod, "write_report", lambda *a, **k: None)
    return calls


def one_error_line(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return tiny_benchmark(tmp_path / "data")


@pytest.mark.parametrize("backend", ["victim", "../.."])
def test_backend_that_is_a_path_deletes_nothing(data: Path, tmp_path: Path, backend: str,
                                                capsys: pytest.CaptureFixture) -> None:
    run = RunDir.create(tmp_path / "run", data, CAT)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")
    (run.root / "keep.txt").write_text("precious")  # what generated/../.. resolves to
    name = str(victim) if backend == "victim" else backend
    config = tmp_path / "run.yaml"
    config.write_text(f"backend: {name}\nimage_size: 64\n")
    assert main(["run", str(data), "-c", CAT, "--out", str(run.root), "--config", str(config)]) == 2
    assert "unknown generator" in one_error_line(capsys)
    assert (victim / "keep.txt").read_text() == "precious"
    assert (run.root / "keep.txt").read_text() == "precious" and (run.root / "run.yaml").is_file()
    assert (data / CAT / "train" / "good").is_dir()


def test_run_dir_paths_stay_inside_the_run(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path / "run", tmp_path / "data", CAT)
    for name in ("../..", "..", "", "a/b", str(tmp_path / "victim")):
        with pytest.raises(ComgenError, match="plain file name"):
            run.generated(name)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (run.root / "maps").symlink_to(outside)
    with pytest.raises(ArtifactError, match="outside the run directory"):
        run.maps
    assert run.generated("cutpaste") == tmp_path / "run" / "generated" / "cutpaste"


def test_deleted_training_images_redo_learn(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from comgen.pipeline.config import RunConfig
    from comgen.pipeline.run import run_category

    calls = stub_stages(monkeypatch)
    cfg = RunConfig(image_size=64, n_anomalies=4)
    run = run_category(data, CAT, tmp_path / "run", cfg, log=lambda m: None)
    assert calls == ["learn", "generate", "mask", "train", "predict", "evaluate"]
    stale = run.generated("compositional") / "images" / "old.png"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"made from the old training set")
    calls.clear()
    run_category(data, CAT, tmp_path / "run", cfg, log=lambda m: None)
    assert calls == []  # nothing changed: every stage up to date
    for f in sorted((data / CAT / "train" / "good").iterdir())[:2]:
        f.unlink()
    run_category(data, CAT, tmp_path / "run", cfg, log=lambda m: None)
    assert calls == ["learn", "generate", "mask", "train", "predict", "evaluate"]
    assert not stale.exists()  # the generated set is made anew, not continued
    calls.clear()
    (data / CAT / "validation" / "good" / "000.png").unlink()  # only training and what follows it read this split
    run_category(data, CAT, tmp_path / "run", cfg, log=lambda m: None)
    assert calls == ["train", "predict", "evaluate"]


def test_manifest_row_outside_the_generated_folder_is_refused(data: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    from comgen.data.generated import load_item
    from comgen.io import append_jsonl, write_png

    run = RunDir.create(tmp_path / "run", data, CAT)
    out = run.generated("compositional")
    rng = np.random.default_rng(0)
    for i in range(4):
        write_png(out / "images" / f"{i:06d}.png", rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
        write_png(out / "masks" / f"{i:06d}.png", np.eye(64, dtype=bool))
        append_jsonl(out / "manifest.jsonl", {"id": f"{i:06d}", "file": f"images/{i:06d}.png",
                                              "mask": f"masks/{i:06d}.png", "kind": "structural", "index": i})
    test_image = data / CAT / "test" / "logical_anomalies" / "000.png"
    sneaky = {"id": "000004", "file": os.path.relpath(test_image, out), "mask": "masks/000000.png", "index": 4}
    append_jsonl(out / "manifest.jsonl", sneaky)
    with pytest.raises(ArtifactError, match="outside the generated folder") as info:
        load_item(out, sneaky)
    assert "manifest.jsonl" in str(info.value)
    with pytest.raises(ArtifactError, match="absolute path"):
        load_item(out, {**sneaky, "file": str(test_image)})
    rc = main(["train", str(run.root), "--epochs", "1", "--image-size", "64", "--weights", "random",
               "--batch-size", "4", "--cpu"])
    assert rc == 2
    assert "manifest.jsonl" in one_error_line(capsys)
    assert not (run.detector / "best.safetensors").exists()


def test_atomic_files_follow_the_umask(tmp_path: Path) -> None:
    from comgen.io import atomic_write_text, write_png

    old = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        write_png(tmp_path / "b.png", np.zeros((4, 4), bool))
        os.umask(0o002)
        atomic_write_text(tmp_path / "c.txt", "x")
        (tmp_path / "d.txt").write_text("made by hand")
        os.chmod(tmp_path / "d.txt", 0o604)
        atomic_write_text(tmp_path / "d.txt", "rewritten")  # an existing file keeps its mode, as with open()
    finally:
        os.umask(old)

    def mode(name: str) -> int:
        return stat.S_IMODE((tmp_path / name).stat().st_mode)

    assert (mode("a.txt"), mode("b.png"), mode("c.txt"), mode("d.txt")) == (0o640, 0o640, 0o664, 0o604)


def test_run_out_inside_the_dataset_is_refused(data: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture) -> None:
    calls = stub_stages(monkeypatch)
    before = sorted(data.rglob("*"))
    for out in (data / "runs", data / CAT / "run"):
        assert main(["run", str(data), "-c", CAT, "--out", str(out)]) == 2
        assert "inside the dataset" in one_error_line(capsys)
    assert sorted(data.rglob("*")) == before and calls == []


def test_broken_defects_config_is_refused_at_the_start(data: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture) -> None:
    calls = stub_stages(monkeypatch)
    (data / CAT / "defects_config.json").write_text('[{"defect_name": "x", "pixel_value": 999')
    assert main(["run", str(data), "-c", CAT, "--out", str(tmp_path / "run")]) == 2
    assert "defects_config.json" in one_error_line(capsys)
    assert calls == [] and not (tmp_path / "run").exists()


def test_second_writer_is_refused(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture) -> None:
    calls = stub_stages(monkeypatch)
    run = RunDir.create(tmp_path / "run", data, CAT)
    with open(run.root / ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another process writing this run
        assert main(["run", str(data), "-c", CAT, "--out", str(run.root)]) == 2
        assert "another comgen command" in one_error_line(capsys)
        assert main(["train", str(run.root), "--epochs", "1"]) == 2
        assert "another comgen command" in one_error_line(capsys)
    assert calls == []
    from comgen.pipeline.config import RunConfig
    from comgen.pipeline.run import run_category

    run_category(data, CAT, run.root, RunConfig(image_size=64), log=lambda m: None)  # the lock is free again
    assert calls[0] == "learn"
    with open(run.root / ".lock", "w") as again:
        fcntl.flock(again, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the finished run let go of its lock


def test_one_pixel_image_error_names_the_file(tmp_path: Path) -> None:
    from comgen.data.imageio import read_rgb
    from comgen.io import write_png

    path = write_png(tmp_path / "dot.png", np.zeros((1, 1, 3), np.uint8))
    with pytest.raises(DatasetError, match="1x1") as info:
        read_rgb(path)
    assert str(path) in str(info.value)


def test_unknown_backend_in_any_section_is_a_config_error() -> None:
    from comgen.pipeline.config import RunConfig

    with pytest.raises(ConfigError, match="run.backend"):
        RunConfig(backend="/tmp")
    with pytest.raises(ConfigError, match="run.detector.backend"):
        RunConfig.from_dict({"detector": {"backend": "nope"}})
