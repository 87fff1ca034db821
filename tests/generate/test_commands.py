"""``comgen generate``: one-line errors and an end-to-end run on a tiny MVTec-AD-style dataset."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from comgen.cli import main


def _one_line_error(capsys, argv: list[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


def _dataset(root: Path, n_train: int = 4, size: int = 40) -> Path:
    """A tiny MVTec AD layout: cat/train/good, cat/test/{good,crack}, cat/ground_truth/crack."""
    rng = np.random.default_rng(0)
    cat = root / "widget"
    for rel, n in (("train/good", n_train), ("test/good", 2), ("test/crack", 2)):
        (cat / rel).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = cv2.GaussianBlur(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), (5, 5), 1.0)
            cv2.imwrite(str(cat / rel / f"{i:03d}.png"), img)
    (cat / "ground_truth/crack").mkdir(parents=True, exist_ok=True)
    for i in range(2):
        mask = np.zeros((size, size), np.uint8)
        mask[5:15, 5:15] = 255
        cv2.imwrite(str(cat / "ground_truth/crack" / f"{i:03d}_mask.png"), mask)
    return root


def test_unknown_backend_is_one_line(tmp_path: Path, capsys) -> None:
    err = _one_line_error(capsys, ["generate", str(tmp_path), "--category", "x", "--backend", "gan"])
    assert "unknown generator 'gan'" in err and "cutpaste" in err


def test_bad_shard_and_n_are_one_line(tmp_path: Path, capsys) -> None:
    assert "i/n" in _one_line_error(capsys, ["generate", str(tmp_path), "-c", "x", "--shard", "1of2"])
    assert "at least 1" in _one_line_error(capsys, ["generate", str(tmp_path), "-c", "x", "--n", "0"])
    assert "config file not found" in _one_line_error(
        capsys, ["generate", str(tmp_path), "-c", "x", "--config", str(tmp_path / "nope.yaml")])


def test_empty_dataset_is_one_line(tmp_path: Path, capsys) -> None:
    pytest.importorskip("comgen.data.readers")
    root = _dataset(tmp_path / "data", n_train=0)
    _one_line_error(capsys, ["generate", str(root), "--category", "widget", "--backend", "cutpaste",
                             "--out", str(tmp_path / "run")])
    assert not (tmp_path / "run" / "generated").exists()


def test_generate_end_to_end_with_config_and_resume(tmp_path: Path, capsys) -> None:
    pytest.importorskip("comgen.data.readers")
    root = _dataset(tmp_path / "data")
    gen_yaml = tmp_path / "gen.yaml"
    gen_yaml.write_text("n: 3\nnsa:\n  clone: normal\n")
    run = tmp_path / "run"
    argv = ["generate", str(root), "--category", "widget", "--backend", "nsa", "--n", "5", "--out", str(run),
            "--image-size", "32", "--seed", "1", "--config", str(gen_yaml)]
    assert main(argv) == 0
    from comgen.generate.config import GenerateConfig
    from comgen.data.generated import load_item, read_generated

    out = run / "generated" / "nsa"
    lines = read_generated(out)
    assert len(lines) == 5  # --n overrides the file's n
    cfg = GenerateConfig.load(out / "config.yaml")
    assert cfg.nsa.clone == "normal" and cfg.seed == 1 and cfg.image_size == 32
    image, mask = load_item(out, lines[0])
    assert image.shape == (32, 32, 3) and mask.any()
    assert (out / "preview.png").is_file() and (run / "run.yaml").is_file()
    assert "wrote 5" in capsys.readouterr().out
    assert main(argv) == 0
    assert "wrote 0, kept 5" in capsys.readouterr().out
    err = _one_line_error(capsys, argv[:-2] + ["--seed", "2"])
    assert "another config" in err
    err = _one_line_error(capsys, ["generate", str(root), "--category", "nope", "--backend", "nsa",
                                   "--out", str(tmp_path / "run2")])
    assert "nope" in err
