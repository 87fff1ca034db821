import json

import pytest

from comgen.cli import main
from comgen.io import write_png
from tests.components.toy import toy_images


@pytest.fixture()
def dataset(tmp_path):
    """A tiny MVTec-AD-layout dataset with one category ``toy``."""
    imgs, _ = toy_images(10, 64, seed=2)
    root = tmp_path / "data"
    for i, im in enumerate(imgs):
        write_png(root / "toy" / "train" / "good" / f"{i:03d}.png", im)
    for i, im in enumerate(imgs[:2]):
        write_png(root / "toy" / "test" / "good" / f"{i:03d}.png", im)
    return root


def test_learn_cli_writes_model_preview_and_config(dataset, tmp_path, capsys):
    pytest.importorskip("comgen.data.readers")
    out = tmp_path / "run"
    rc = main(["learn", str(dataset), "--category", "toy", "--out", str(out), "--image-size", "64",
               "--k", "3", "--no-backbone"])
    assert rc == 0
    comp = out / "components"
    for name in ("model.safetensors", "model.json", "config.yaml", "preview.png"):
        assert (comp / name).is_file(), name
    meta = json.loads((comp / "model.json").read_text())
    assert meta["num_classes"] == 3 and meta["tokens"] == ["<c1>", "<c2>"]
    assert "<c1>" in capsys.readouterr().out
    assert "learn" in json.loads((out / "stages.json").read_text())
    before = (dataset / "toy" / "train" / "good").stat().st_mtime_ns
    assert sorted(p.name for p in (dataset / "toy" / "train" / "good").iterdir())[0] == "000.png"
    assert (dataset / "toy" / "train" / "good").stat().st_mtime_ns == before  # dataset untouched


def test_learn_cli_errors(dataset, tmp_path, capsys):
    pytest.importorskip("comgen.data.readers")
    rc = main(["learn", str(dataset), "--category", "toy", "--out", str(tmp_path / "r"), "--k", "many"])
    assert rc == 2 and "--k" in capsys.readouterr().err
    rc = main(["learn", str(dataset), "--category", "nope", "--out", str(tmp_path / "r2")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error:") and "nope" in err and len(err.strip().splitlines()) == 1


def test_learn_into_run_without_preview(dataset, tmp_path):
    pytest.importorskip("comgen.data.readers")
    from comgen.components.features import LearnerConfig
    from comgen.components.learner import learn_into_run
    from comgen.data.readers import open_dataset
    from comgen.rundir import RunDir

    samples = open_dataset(dataset).samples("toy", "train")
    run = RunDir.create(tmp_path / "run", dataset, "toy")
    model = learn_into_run(run, samples, LearnerConfig(image_size=64, k=3, use_backbone=False), preview=0)
    assert model.num_classes == 3
    assert (run.components / "model.json").is_file() and not (run.components / "preview.png").exists()
